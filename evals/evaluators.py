"""Evaluators declared in the config, as big_vision's configs declare theirs.

``cfg.evals`` holds one group per evaluator (``configs/common.py:evaluator``)::

    evals.sampled = dict(kind="panoptic", prediction="sampled", split="validation",
                         num_examples=0, every=0, batch_size=50, overlays=8)

``kind`` names the metric family and so the evaluation loop (one per family of task; the
loops are in evals/loops.py):

* ``generation``: the generation loop (evals.generation_loop): FID, IS, class accuracy;
* ``loss``: held-out losses, for any task: stage 1's objective (``oracle``) and stage 2's
  teacher-forced NLL (``teacher_forced``);
* any other kind (``panoptic``, ``depth``, a new task's own): the dense loop: predict a
  split, ``task.postprocess`` each example, feed ``task.metric(cfg, kind)`` (evals.pq /
  evals.depth underneath for the two published tasks).

``prediction`` names what is scored (and so after which stage it runs): ``oracle``
(stage 1: encode the ground truth, decode), ``sampled`` (stage 2 samples, decoded),
``teacher_forced`` (stage 2, teacher-forced) or ``baseline`` (the task's reference
predictor, after training). The runner calls :class:`Evaluators` during training (every
``every`` steps of the evaluated stage) and after each stage; ``tasks.<t> eval`` and
``python -m evals.<metric> --ckpt`` run the same declarations through :func:`evaluate_run`.
Each evaluation writes one record (uvim_givt.rundir), tagged with the evaluator's name and
the command that ran it (``origin``), so no two commands overwrite each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable

import ml_collections

from evals import loops
from evals.loops import HELDOUT_CODES, LOOPS
from uvim_givt import config as config_lib
from uvim_givt import rundir, schema
from uvim_givt.data import catalog
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.task import Task
from uvim_givt.training.metrics import write_eval_board
from uvim_givt.training.runner import Run, load_givt_params, load_run, with_settings

#: prediction -> the stage whose parameters it needs (and after which it runs)
PREDICTION_STAGE = {"oracle": "vae", "sampled": "givt", "teacher_forced": "givt",
                    "completed": "givt", "uncertainty": "givt", "baseline": "baseline"}
DENSE_PREDICTIONS = ("oracle", "sampled", "teacher_forced", "completed", "uncertainty",
                     "baseline")
#: kind -> the predictions its loop scores (a kind not listed is a dense task's metric).
#: "loss": held-out losses: stage 1's (oracle) and stage 2's NLL (teacher_forced).
KIND_PREDICTIONS = {"generation": ("oracle", "sampled"), "loss": ("oracle", "teacher_forced")}
REQUIRED = ("kind", "prediction", "split", "num_examples", "every", "batch_size")
_E = r"evals\.\w+\."
#: The ranges of the evaluator keys (uvim_givt/schema.py), checked before a run starts.
CONFIG_RULES: schema.Rules = (
    (_E + "kind", schema.Text(r"[a-z_]+", "a metric family (panoptic, depth, generation, loss)",
                              bad="PQ!")),
    (_E + "prediction", schema.OneOf(tuple(PREDICTION_STAGE))),
    (_E + "split", schema.Text(r".+", "a split name", bad="")),
    (_E + "(num_examples|every|overlays|max_classes)", schema.COUNT),
    (_E + "codes", schema.OneOf(tuple(HELDOUT_CODES))),
    (_E + "keep", schema.Nums(schema.PROBABILITY, increasing=True)),
    (_E + "after_training", schema.Flag()),
    (_E + "draws", schema.Num(lo=2)),
    (_E + "levels", schema.Nums(schema.Num(0.0, 1.0, lo_open=True, hi_open=True),
                                increasing=True)),
    (_E + "std_scale", schema.POSITIVE),
    (_E + "channels", schema.Names()),
    (_E + "value_key", schema.Text(r"\w*", "an example's field (or empty)", bad="a b")),
    (_E + "(batch_size|samples_per_class|grid_per_class)", schema.POSITIVE_INT),
    (_E + "extractor", schema.Text(r"(digits|(fid_|keras_)?inception:.*)?",
                                   "digits, fid_inception:PATH (pytorch-fid's FID Inception "
                                   "weights: FIDs comparable to published ones), "
                                   "keras_inception:PATH (Keras' InceptionV3 .h5) or empty "
                                   "(a dense metric without its FID)",
                                   bad="inception")),
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One declared evaluator (``cfg.evals.<name>``)."""

    name: str
    kind: str
    prediction: str
    split: str
    num_examples: int
    every: int
    batch_size: int
    options: ml_collections.ConfigDict  # the whole group (loop-specific keys too)

    @property
    def stage(self) -> str:
        return PREDICTION_STAGE[self.prediction]

    @property
    def after_training(self) -> bool:
        """Run after its stage's training and by a plain ``eval`` (False: only when named,
        ``eval --evaluator NAME``: the costly research evaluators)."""
        return bool(self.options.get("after_training", True))


def declared(cfg: ml_collections.ConfigDict) -> dict[str, Spec]:
    """The config's evaluators, checked: a bad one is a ConfigError naming its key."""
    out = {}
    for name, group in cfg.evals.items():
        where = f"evals.{name}"
        missing = [k for k in REQUIRED if k not in group]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}")
        kind, prediction = str(group.kind), str(group.prediction)
        allowed = KIND_PREDICTIONS.get(kind, DENSE_PREDICTIONS)
        if prediction not in allowed:
            raise ConfigError(f"{where}.prediction={prediction!r}: a {kind!r} evaluator "
                              f"scores {', '.join(allowed)}")
        if prediction == "completed" and "keep" not in group:
            raise ConfigError(f"{where} lacks keep (the fractions of ground-truth codes kept, "
                              "e.g. (0, 0.25, 0.5, 0.75, 1))")
        if kind == "loss" and prediction == "teacher_forced" and "codes" not in group:
            raise ConfigError(f"{where} lacks codes (what the NLL scores: "
                              + "; ".join(f"{k}: {v}" for k, v in HELDOUT_CODES.items()) + ")")
        schema.check(ml_collections.ConfigDict({"evals": {name: group}}), CONFIG_RULES)
        out[name] = Spec(name, kind, prediction, str(group.split), int(group.num_examples),
                         int(group.every), int(group.batch_size), group)
    return out


class Evaluators:
    """The runner's evaluation hooks (``uvim_givt.training.runner.EvalHooks``)."""

    config_rules = CONFIG_RULES

    def __init__(self, task: Task, cfg: ml_collections.ConfigDict, origin: str = "train",
                 source: str | None = None, split: str | None = None,
                 max_examples: int | None = None, names: Iterable[str] | None = None,
                 kind: str | None = None, log: Callable[[str], None] = print,
                 tag: str = "", settings: Iterable[str] = (), reeval: bool = False):
        self.task, self.cfg, self.origin, self.log, self.tag = task, cfg, origin, log, tag
        self.reeval = reeval
        self.settings = list(settings)
        # (kind, split, step) -> {prediction: metrics}: pairs sampled and teacher-forced
        # results of one evaluation for the exposure-bias gap
        self._scored: dict[tuple, dict[str, dict[str, float]]] = {}
        self.source, self.split, self.max_examples = source, split, max_examples
        specs = declared(cfg)
        if names is not None:
            unknown = sorted(set(names) - set(specs))
            if unknown:
                raise UserError(f"no evaluator {unknown[0]!r} in this run's config "
                                f"(declared: {sorted(specs)})")
            specs = {n: s for n, s in specs.items() if n in set(names)}
        if kind is not None:
            specs = {n: s for n, s in specs.items() if s.kind == kind}
        if config_lib.stage2_style(cfg) != "ar":  # MaskGIT decodes no teacher-forced means
            tf = [n for n, s in specs.items()
                  if s.prediction == "teacher_forced" and s.kind != "loss"]
            if tf:
                log(f"  not run with givt.model.style={cfg.givt.model.style!r}: "
                    f"{', '.join(tf)} (teacher-forced means need a causal GIVT)")
            specs = {n: s for n, s in specs.items() if n not in tf}
        self.specs = specs

    def of_stage(self, stage: str) -> list[Spec]:
        return [s for s in self.specs.values() if s.stage == stage]

    def periodic(self, stage: str, run: Run, step: int) -> dict[str, float]:
        out = {}
        for spec in self.of_stage(stage):
            if spec.every and step % spec.every == 0:
                metrics = self.run_one(spec, run, step, periodic=True)
                out.update({f"{spec.name}/{k}": v for k, v in metrics.items()})
        return out

    def final(self, stage: str, run: Run) -> dict[str, dict[str, float]]:
        return {spec.name: self.run_one(spec, run, run.step(spec.stage))
                for spec in self.of_stage(stage) if spec.after_training}

    def _with_exposure_gap(self, spec: Spec, split: str, step: int, cap: int | None,
                           metrics: dict[str, float]) -> dict[str, float]:
        """The second of a sampled / teacher-forced pair (same task metric, split, step and
        examples) also records ``gap/<metric>`` = sampled - teacher-forced: the exposure
        bias, in one record."""
        if spec.kind in LOOPS or spec.prediction not in ("sampled", "teacher_forced"):
            return metrics
        seen = self._scored.setdefault((spec.kind, split, step, cap), {})
        seen[spec.prediction] = metrics
        other = "teacher_forced" if spec.prediction == "sampled" else "sampled"
        if other not in seen:
            return metrics
        sampled, forced = seen["sampled"], seen["teacher_forced"]
        gap = {f"gap/{k}": sampled[k] - forced[k] for k in sampled
               if k in forced and not k.startswith(("num_", "gap/"))}
        return {**metrics, **gap}

    def run_one(self, spec: Spec, run: Run, step: int, periodic: bool = False
                ) -> dict[str, float]:
        """Runs one evaluator on ``run`` and writes its record; returns the metrics."""
        source = self.source or self.cfg.data.source
        split = self.split or spec.split
        cap = self.max_examples or spec.num_examples or None
        if source != run.cfg.data.source:  # the task reads its data settings from cfg
            cfg = ml_collections.ConfigDict(run.cfg.to_dict())
            cfg.data.source = source
            run = dataclasses.replace(run, cfg=cfg)
        if not periodic and not self.reeval:
            recorded = self._recorded(run, spec, source, split, step, cap)
            if recorded is not None:
                return recorded
        metrics, extra = loops.loop_for(spec)(self.task, run, spec, source=source,
                                              split=split, max_examples=cap, step=step,
                                              periodic=periodic)
        metrics = self._with_exposure_gap(spec, split, step, cap, metrics)
        info = rundir.read_run_info(run.run_dir)
        num_params = info.get("num_params", {}).get(spec.stage)
        record = {
            "task": self.task.name, "stage": spec.stage, "evaluator": spec.name,
            "kind": spec.kind, "prediction": spec.prediction, "split": split, "data": source,
            "dataset": self.task.metadata.dataset_of(str(source)),
            "step": step, "metrics": metrics, "origin": self.origin,
            "num_examples": int(metrics.get("num_images", extra.get("num_examples", 0))),
            "config_hash": rundir.config_hash(self.cfg),
            "model": {"size": self.cfg.size, "num_params": num_params},
            "extra": dict(extra, periodic=periodic, max_examples=cap),
        }
        family = self.task.metadata.family(spec.kind)
        if family is not None:  # the leaderboard reads what a metric is from the records
            record["metric_meta"] = family.as_record(spec.kind)
        if self.tag:
            record["tag"] = self.tag
            record["extra"]["settings"] = self.settings
        try:
            rundir.write_eval_record(run.run_dir, record)
            if not periodic:  # periodic ones are in the stage's own curves (the trainer's)
                write_eval_board(run.run_dir, record)
        except OSError as e:  # a read-only run or a full disk: the metrics still count
            self.log(f"warning: could not save the {spec.name} record in "
                     f"{os.path.join(run.run_dir, 'eval')} ({e.strerror or e}); its metrics "
                     "are printed only")
        return metrics

    def _recorded(self, run: Run, spec: Spec, source: str, split: str, step: int,
                  cap: int | None) -> dict[str, float] | None:
        """The metrics of this very evaluation when a record of it exists: same evaluator,
        data, split, step, origin and settings tag, same config and example cap. Rerunning
        a finished run (or ``eval`` twice) then costs nothing; ``--reeval`` recomputes."""
        key = {"stage": spec.stage, "evaluator": spec.name, "split": split, "data": source,
               "step": step, "origin": self.origin, "tag": self.tag}
        path = os.path.join(run.run_dir, "eval", rundir.record_name(key) + ".json")
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        extra = record.get("extra") or {}
        if (record.get("config_hash") != rundir.config_hash(self.cfg)
                or "max_examples" not in extra or extra["max_examples"] != cap
                or extra.get("periodic")):
            return None
        self.log(f"  {spec.name}: step {step} already evaluated "
                 f"({os.path.relpath(path, run.run_dir)}); --reeval recomputes it")
        return {k: float(v) for k, v in record["metrics"].items()}


def evaluate_run(run_dir: str, origin: str, *, stage: str | None = None,
                 kind: str | None = None, names: Iterable[str] | None = None,
                 source: str | None = None, split: str | None = None,
                 max_examples: int | None = None, task: Task | None = None,
                 overrides: Iterable[str] = (), reeval: bool = False
                 ) -> dict[str, dict[str, float]]:
    """Runs a run directory's declared evaluators (of ``stage``/``kind``/``names``), finding
    the task by the name in its config; returns {evaluator: metrics}.

    ``overrides`` (``key=value``, as ``--set``) change how the run is evaluated: decoding and
    protocol (``data.*``), sampling (``givt.sampling.*``) or the evaluators (``evals.*``),
    never the models. The records are then tagged with a hash of the settings, so they sit
    next to the default ones instead of replacing them.
    """
    if source is not None:
        catalog.parse_source(source)
    run = load_run(run_dir, task, need_givt=False)
    tag = ""
    if overrides:
        run = with_settings(run, overrides, ("data.", "givt.sampling.", "evals."), Evaluators,
                            "eval")
        settings = sorted(o.strip() for o in overrides)
        tag = "set-" + rundir.config_hash("\n".join(settings))[:8]
        print(f"  evaluating with {', '.join(overrides)} (records tagged {tag})")
    hooks = Evaluators(run.task, run.cfg, origin, source, split, max_examples, names, kind,
                       tag=tag, settings=settings if overrides else (), reeval=reeval)
    specs = [s for s in hooks.specs.values() if (stage is None or s.stage == stage)
             and (names is not None or s.after_training)]
    if not specs:
        raise UserError(f"{run_dir}: no evaluator of "
                        + ", ".join(f"{k} {v!r}" for k, v in
                                    (("stage", stage), ("kind", kind)) if v)
                        + f" is declared (evals: {sorted(declared(run.cfg))})")
    if any(s.stage == "givt" for s in specs):
        run.givt_params, run.givt_step = load_givt_params(run_dir, run.cfg)
    return {s.name: hooks.run_one(s, run, run.step(s.stage)) for s in specs}
