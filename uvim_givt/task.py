"""The Task protocol: what a task plugs into the runner and the evaluators, and the registry
that finds a task by the name in a run's config.

Examples flow as dicts of arrays::

    task.load(cfg, source, split)          raw examples, fixed order (as TFDS yields them)
      -> task.preprocess(cfg, ex, train)   model inputs: {"image": float [S, S, 3] in [-1, 1],
                                           "labels": int [S, S, C] (dense) | "label": int}
      -> stage 1 / stage 2 models          (uvim_givt.training.runner)
      -> task.postprocess(cfg, logits, ex) a prediction at the raw example's resolution
      -> task.metric(cfg, kind)            an accumulator of the evaluator family ``kind``

The ViT VAE (``vae.kind = "vit"``) encodes ``labels``; the CNN VAE (``"cnn"``) encodes
``image``. Stage 2 is conditioned on ``image`` when the GIVT has an encoder, on ``label``
when it has ``num_labels``. Tasks register under the entry-point group
``uvim_givt.tasks`` (pyproject.toml), or in-process with :func:`register_task`.

Optional members: ``config_rules`` (the ranges and choices of the task's own config keys,
see :mod:`uvim_givt.schema`), ``check_config(cfg)`` (checks across keys or against the
data), ``baseline(cfg, source)`` (a reference predictor for ``prediction="baseline"``).
All checks run before a run directory is written.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import ml_collections

from uvim_givt.errors import UserError

ENTRY_POINT_GROUP = "uvim_givt.tasks"


@runtime_checkable
class Task(Protocol):
    """Every task: reading and preprocessing its data."""

    name: str

    def load(self, cfg: ml_collections.ConfigDict, source: str, split: str) -> Any:
        """Raw examples of a split (a ``tf.data.Dataset``), in a fixed order."""

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, train: bool,
                   seed: Any = None) -> dict:
        """Raw example -> model inputs (tf ops); random augmentation only when ``train``."""


@runtime_checkable
class DenseTask(Task, Protocol):
    """A task whose stage-1 VAE decodes label maps (per-channel logits) into predictions."""

    #: labels of a mirrored image are the mirrored labels (test-time flip needs it)
    mirror_equivariant: bool

    def postprocess(self, cfg: ml_collections.ConfigDict, logits: dict[str, Any],
                    example: dict | None = None) -> Any:
        """Per-channel logits [H, W, K] of ONE example -> a prediction at the resolution of
        the raw ``example`` when given."""

    def metric(self, cfg: ml_collections.ConfigDict, kind: str) -> Any:
        """A fresh accumulator (``add(example, prediction)``, ``result() -> dict``) of the
        evaluator family ``kind``."""

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
