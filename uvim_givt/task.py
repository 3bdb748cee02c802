"""The Task protocol: what a task plugs into the runner and the evaluators, and the registry
that finds a task by the name in a run's config.

Examples flow as dicts of arrays, through one of three declared routes::

    catalog.load(task.readers, cfg, source, split)   raw examples, fixed order
      -> task.preprocess(cfg, ex, mode, seed)         mode "train" | "eval" | "predict":
           {"image": float [S, S, 3] in [-1, 1],      model inputs
            "labels": [S, S, C] (dense: int classes,
                      float values of value channels) | "label": int,
            "meta": {...}}                            what postprocess needs (raw size,
                                                      crop box, flip), fixed shapes
      -> the stage's inputs (uvim_givt.training.stages: each stage kind names the keys
         it reads) -> models
      -> task.postprocess(cfg, logits, meta)          a prediction at the raw resolution
      -> task.metric(cfg, kind).add(example, pred)    an accumulator of evaluator ``kind``

``train`` augments (random crop and flip, seeded by ``seed``) and needs labels; ``eval``
reads labelled examples deterministically (the protocol's crop when it has one); ``predict``
reads an image alone (a folder of photos). The ViT VAE encodes ``labels``, the CNN VAE
``image``; stage 2 is conditioned on ``image`` (an encoder) or ``label`` (``num_labels``).
Tasks register under the entry-point group ``uvim_givt.tasks`` (pyproject.toml), or
in-process with :func:`register_task`.

Optional members: ``config_rules`` (the ranges and choices of the task's own config keys,
see :mod:`uvim_givt.schema`), ``check_config(cfg)`` (checks across keys or against the
data), ``baseline(cfg, source)`` (a reference predictor for ``prediction="baseline"``).
All checks run before a run directory is written.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import ml_collections

from uvim_givt.errors import UserError

ENTRY_POINT_GROUP = "uvim_givt.tasks"
ROUTES = ("train", "eval", "predict")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published value, with the data it was measured on (plots draw it only beside
    runs on that data)."""

    model: str
    data: str
    metric: str
    value: float
    prediction: str = "sampled"  # what it scores: "oracle" (stage 1) or "sampled"


@dataclasses.dataclass(frozen=True)
class MetricFamily:
    """What a task says about the metrics of one evaluator kind."""

    order: tuple[str, ...]  # known metrics first, in this order
    primary: str | None = None  # the headline metric (runs are ranked by it)
    higher_is_better: bool = True
    units: tuple[tuple[str, str], ...] = ()  # (metric, unit) pairs, for plot axes
    references: tuple[Reference, ...] = ()

    def as_record(self, family: str) -> dict[str, Any]:
        """The ``metric_meta`` of an eval record (the leaderboard reads records only)."""
        return {"family": family, "order": list(self.order), "primary": self.primary,
                "higher_is_better": self.higher_is_better, "units": dict(self.units),
                "references": [dataclasses.asdict(r) for r in self.references]}


#: The held-out losses (evaluator kind "loss") are the stages' own, the same for every task.
HELDOUT_LOSSES = MetricFamily(
    order=("loss", "xent", "mse", "rec", "kl", "nll_per_token", "nll_per_dim",
           "xent_smoothed"),
    higher_is_better=False,
    units=(("xent", "nats/pixel"), ("kl", "nats"), ("nll_per_token", "nats/code"),
           ("nll_per_dim", "nats/dim"), ("xent_smoothed", "nats/code")))


@dataclasses.dataclass(frozen=True)
class TaskMetadata:
    """A task's metrics (by evaluator kind) and the datasets its references were measured
    on; evaluators copy it into every record."""

    title: str
    metrics: dict[str, MetricFamily]
    #: data source kind or TFDS name -> the dataset it is, as references name it
    datasets: tuple[tuple[str, str], ...] = ()

    def family(self, kind: str) -> MetricFamily | None:
        """The task's metrics of evaluator ``kind`` (the held-out losses are the library's)."""
        return self.metrics.get(kind, HELDOUT_LOSSES if kind == "loss" else None)

    def dataset_of(self, source: str) -> str:
        """The dataset a data source is, as the references name it (eval records carry it,
        so plots set published values only beside runs on the same data)."""
        return dataset_name(dict(self.datasets), source)


def dataset_name(datasets: dict[str, str], source: str) -> str:
    """``datasets`` (source kind or TFDS name -> name) applied to ``source`` ("embedded",
    "tfds:coco/2017_panoptic", "folder:PATH"); the source itself when it is not listed."""
    kind, _, arg = source.partition(":")
    return datasets.get(arg or kind, datasets.get(kind, source))


@runtime_checkable
class Task(Protocol):
    """Every task: where its data comes from, its routes and its metadata."""

    name: str
    readers: Any  # uvim_givt.data.catalog.Readers
    metadata: TaskMetadata

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, mode: str,
                   seed: Any = None) -> dict:
        """Raw example -> model inputs and ``meta`` (tf ops) by the route ``mode``
        (``ROUTES``); random augmentation only in ``train``."""


@runtime_checkable
class DenseTask(Task, Protocol):
    """A task whose stage-1 VAE decodes label maps (per-channel logits) into predictions."""

    #: labels of a mirrored image are the mirrored labels (test-time flip needs it)
    mirror_equivariant: bool

    def postprocess(self, cfg: ml_collections.ConfigDict, logits: dict[str, Any],
                    meta: dict[str, Any]) -> Any:
        """Per-channel logits [H, W, K] of ONE example -> a prediction at the raw
        resolution, as ``meta`` (from ``preprocess``) says."""

    def metric(self, cfg: ml_collections.ConfigDict, kind: str) -> Any:
        """A fresh accumulator (``add(example, prediction)``, ``result() -> dict``) of the
        evaluator family ``kind``; if it has ``configure(options)``, the evaluation loops
        call it with the evaluator's declared options first."""

    def draw(self, cfg: ml_collections.ConfigDict, example: dict, prediction: Any) -> Any:
        """An RGB uint8 picture (image | ground truth if any | prediction)."""


_REGISTERED: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Makes ``task`` findable by its name in this process (tests, notebooks)."""
    _REGISTERED[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task named ``name``: registered in-process, else by entry point."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise UserError(f"no task named {name!r} (known: {sorted(set(found) | set(_REGISTERED))}"
                        f"; tasks register under the {ENTRY_POINT_GROUP!r} entry points)")
    task = found[name].load()
    return register_task(task)
