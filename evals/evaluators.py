"""Evaluators declared in the config, as big_vision's configs declare theirs.

``cfg.evals`` holds one group per evaluator (``configs/common.py:evaluator``)::

    evals.sampled = dict(kind="panoptic", prediction="sampled", split="validation",
                         num_examples=0, every=0, batch_size=50, overlays=8)

``kind`` names the metric family and so the evaluation loop (one per family of task):

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

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from uvim_givt import rundir, schema
from uvim_givt.data import catalog, pipeline
from uvim_givt.data.images import write_png_or_warn
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.task import Task
from uvim_givt.training import stages
from uvim_givt.training.metrics import progress_interval, write_eval_board
from uvim_givt.training.runner import Run, load_givt_params, load_run, with_settings
from uvim_givt.training.trainer import split_weights

#: prediction -> the stage whose parameters it needs (and after which it runs)
PREDICTION_STAGE = {"oracle": "vae", "sampled": "givt", "teacher_forced": "givt",
                    "completed": "givt", "uncertainty": "givt", "baseline": "baseline"}
DENSE_PREDICTIONS = ("oracle", "sampled", "teacher_forced", "completed", "uncertainty",
                     "baseline")
#: kind -> the predictions its loop scores (a kind not listed is a dense task's metric).
#: "loss": held-out losses: stage 1's (oracle) and stage 2's NLL (teacher_forced).
KIND_PREDICTIONS = {"generation": ("oracle", "sampled"), "loss": ("oracle", "teacher_forced")}
#: ``evals.<name>.codes`` of a stage-2 ``loss`` evaluator: what its NLL scores
HELDOUT_CODES = {
    "sample": "a posterior sample of the stage-1 codes, labels dropped and dropout as in "
              "training, no input noise (big_vision's validation_fn: the training loss)",
    "mean": "the stage-1 posterior means, no label or other dropout (deterministic)",
}
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
    (_E + "extractor", schema.Text(r"digits|(fid_|keras_)?inception:.+",
                                   "digits, fid_inception:PATH (pytorch-fid's FID Inception "
                                   "weights: FIDs comparable to published ones) or "
                                   "keras_inception:PATH (Keras' InceptionV3 .h5)",
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
        if cfg.givt.model.style != "ar":  # MaskGIT decodes no teacher-forced means
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
        loop = {"completed": completion_loop, "uncertainty": uncertainty_loop}.get(
            spec.prediction, LOOPS.get(spec.kind, dense_loop))
        metrics, extra = loop(self.task, run, spec, source=source, split=split,
                              max_examples=cap, step=step, periodic=periodic)
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


# ------------------------------------------------------------------------- the loops
def _progress(desc: str, periodic: bool, ds: Any = None, cap: int | None = None) -> tqdm:
    """The bar of one evaluation, with its total when the dataset knows its size."""
    total = None
    if ds is not None:
        with contextlib.suppress(Exception):  # a dataset without a known size: no total
            n = int(ds.cardinality())
            total = n if n >= 0 else None
    if cap and total is not None:
        total = min(total, cap)
    return tqdm(desc=desc, total=total, disable=periodic, unit="img",
                mininterval=progress_interval(), dynamic_ncols=True)


def dense_loop(task: Any, run: Run, spec: Spec, *, source: str, split: str,
               max_examples: int | None, step: int, periodic: bool
               ) -> tuple[dict[str, float], dict[str, Any]]:
    """Predicts a split (oracle, sampled, teacher-forced or the task's baseline) through the
    task's ``eval`` route and scores it with the task's metric of ``spec.kind``; overlays go
    to RUN/predictions/<evaluator>_NNN.png."""
    cfg = run.cfg
    ds = catalog.load(task.readers, cfg, source, split)
    if max_examples:
        ds = ds.take(max_examples)
    metric = task.metric(cfg, spec.kind)
    n_overlays = 0 if periodic else int(spec.options.overlays)
    overlay_dir = os.path.join(run.run_dir, "predictions")
    extra: dict[str, Any] = {}
    if spec.prediction == "baseline":  # before the progress bar: it may print
        predict_one, extra = task.baseline(cfg, source)
    bar = _progress(f"eval {spec.name} {split}", periodic, ds)
    seen = 0

    pngs: list[str] = []

    def add(example, pred):
        nonlocal seen
        metric.add(example, pred)
        if seen < n_overlays:
            pngs.append(write_png_or_warn(
                os.path.join(overlay_dir, f"{spec.name}_{seen:03d}.png"),
                task.draw(cfg, example, pred)))
        seen += 1
        bar.update(1)

    raw = ds.as_numpy_iterator()  # full-resolution examples, for postprocess and metrics
    predictor = None if spec.prediction == "baseline" else Predictor(
        cfg, run.vae_params, None if spec.prediction == "oracle" else run.givt_params)
    for batch in pipeline.eval_batches(ds, lambda ex: task.preprocess(cfg, ex, "eval"),
                                       spec.batch_size):
        if spec.prediction == "baseline":
            logits = None
        elif spec.prediction == "oracle":
            logits = predictor.oracle(batch["labels"], batch.get("image"))
        elif spec.prediction == "teacher_forced":
            logits = predictor.teacher_forced(batch["image"], batch["labels"])
        else:
            logits = predictor.predict(batch["image"], seed=seen,
                                       mirror_equivariant=task.mirror_equivariant)
        for i in np.flatnonzero(batch["_valid"]):
            example = next(raw)
            meta = {k: v[i] for k, v in batch["meta"].items()}
            if logits is None:
                add(example, predict_one(meta))
            else:
                add(example, task.postprocess(cfg, {k: v[i] for k, v in logits.items()}, meta))
    bar.close()
    if seen == 0:
        raise UserError(f"split {split!r} of {source} has no examples")
    if hasattr(metric, "details"):
        extra = dict(extra, **metric.details())
    return metric.result(), dict(extra, pngs=_relative(pngs, run.run_dir))


def _relative(paths: Iterable[str | None], run_dir: str) -> list[str]:
    """The pictures written (a failed write is None), relative to the run directory."""
    return [os.path.relpath(p, run_dir) for p in paths if p]


def completion_loop(task: Any, run: Run, spec: Spec, *, source: str, split: str,
                    max_examples: int | None, step: int, periodic: bool
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """The exposure-bias curve of a dense task: for each fraction f of ``spec.options.keep``
    the first round(f * seq_len) codes are the ground truth's (its stage-1 posterior means)
    and stage 2 samples the rest given them and the image; each completion is decoded and
    scored with the task metric (``keep_<f>/<metric>``). f = 0 is the plain sampled
    prediction, f = 1 decodes the true codes (the oracle). Also stage 2's teacher-forced NLL
    of each code position (nats, ``extra["nll_per_position"]``): where in the sequence the
    model is unsure."""
    cfg = run.cfg
    if cfg.givt.model.style != "ar":
        raise ConfigError(f"evals.{spec.name}: completing given codes needs a causal GIVT "
                          f"(givt.model.style='ar', not {cfg.givt.model.style!r})")
    seq_len = int(cfg.givt.model.seq_len)
    fractions = [float(f) for f in spec.options.keep]
    num_given = [int(round(f * seq_len)) for f in fractions]
    metrics = [task.metric(cfg, spec.kind) for _ in fractions]
    ds = catalog.load(task.readers, cfg, source, split)
    if max_examples:
        ds = ds.take(max_examples)
    raw = ds.as_numpy_iterator()
    predictor = Predictor(cfg, run.vae_params, run.givt_params)
    nll_sum, seen = np.zeros(seq_len), 0
    bar = _progress(f"eval {spec.name} {split}", periodic, ds)
    for batch in pipeline.eval_batches(ds, lambda ex: task.preprocess(cfg, ex, "eval"),
                                       spec.batch_size):
        rows = np.flatnonzero(batch["_valid"])
        examples = [next(raw) for _ in rows]
        nll = predictor.position_nll(batch["image"], batch["labels"])
        nll_sum += nll[rows].sum(0)
        for metric, k in zip(metrics, num_given, strict=True):
            logits = predictor.predict(batch["image"], seed=seen, given=batch["labels"],
                                       num_given=k)
            for example, i in zip(examples, rows, strict=True):
                meta = {name: v[i] for name, v in batch["meta"].items()}
                metric.add(example, task.postprocess(
                    cfg, {name: v[i] for name, v in logits.items()}, meta))
        seen += len(rows)
        bar.update(len(rows))
    bar.close()
    if seen == 0:
        raise UserError(f"split {split!r} of {source} has no examples")
    out: dict[str, float] = {}
    for f, metric in zip(fractions, metrics, strict=True):
        out.update({f"keep_{f:g}/{k}": v for k, v in metric.result().items()
                    if not k.startswith("num_")})
    out["num_images"] = float(seen)
    per_position = nll_sum / seen
    out["nll_per_token"] = float(per_position.mean())
    return out, {"keep": fractions, "num_given": num_given, "seq_len": seq_len,
                 "nll_per_position": [round(float(v), 5) for v in per_position]}


def uncertainty_loop(task: Any, run: Run, spec: Spec, *, source: str, split: str,
                     max_examples: int | None, step: int, periodic: bool
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    """Uncertainty of a dense task from ``draws`` code samples per image, each decoded.

    For each label channel in ``channels``: the mean of the decoded softmax over the draws
    is the per-pixel class distribution, scored for calibration against the true classes at
    the model's resolution (``<channel>/ECE``, ``accuracy``, ``confidence``; class 0 left
    out where the stage-1 loss ignores it) and drawn as an entropy map. With ``value_key``
    (a continuous output such as depth: the example field holding the truth), the draws'
    task outputs give the per-pixel spread (``<value_key>/std``) and the coverage of the
    truth by their central intervals at the nominal ``levels`` (``coverage@a``,
    ``width@a``), drawn as a standard-deviation map (colour range 0..``std_scale``).
    Pictures: RUN/predictions/<evaluator>_NNN.png = image | entropy | [std]."""
    from evals.calibration import (
        CalibrationAccumulator,
        CoverageAccumulator,
        entropy_map,
        heat_picture,
        softmax,
    )
    cfg, options = run.cfg, spec.options
    stage1 = stages.stage_of(cfg, "vae")
    channels = {}
    for name in options.channels:
        if name not in stage1.channels:
            raise ConfigError(f"evals.{spec.name}.channels: no label channel {name!r} "
                              f"(the VAE's: {sorted(stage1.channels)})")
        channels[name] = stage1.channels[name]
    calibration = {name: CalibrationAccumulator() for name in channels}
    value_key = str(options.value_key)
    coverage = CoverageAccumulator(tuple(options.levels)) if value_key else None
    draws, n_pictures = int(options.draws), 0 if periodic else int(options.overlays)
    pngs: list[str | None] = []
    ds = catalog.load(task.readers, cfg, source, split)
    if max_examples:
        ds = ds.take(max_examples)
    raw = ds.as_numpy_iterator()
    predictor = Predictor(cfg, run.vae_params, run.givt_params)
    bar = _progress(f"eval {spec.name} {split}", periodic, ds)
    seen = 0
    for batch in pipeline.eval_batches(ds, lambda ex: task.preprocess(cfg, ex, "eval"),
                                       spec.batch_size):
        decoded = [jax.tree_util.tree_map(np.asarray, predictor.decode(
            predictor.sample_codes(seen, k, image=batch["image"]))) for k in range(draws)]
        probs = {name: np.mean([softmax(d[name]) for d in decoded], axis=0)
                 for name in channels}
        for i in np.flatnonzero(batch["_valid"]):
            example = next(raw)
            maps = []
            for name, (index, classes) in channels.items():
                truth = batch["labels"][i, ..., index]
                valid = truth != 0 if name in stage1.ignore_zero else None
                calibration[name].add(probs[name][i], truth, valid)
                maps.append((entropy_map(probs[name][i]), (0.0, float(np.log(classes)))))
            if coverage is not None:
                meta = {k: v[i] for k, v in batch["meta"].items()}
                values = np.stack([task.postprocess(cfg, {k: v[i] for k, v in d.items()},
                                                    meta) for d in decoded])
                truth = np.asarray(example[value_key], np.float32)
                with np.errstate(invalid="ignore"):
                    coverage.add(values, truth, np.isfinite(truth) & (truth > 0))
                maps.append((values.std(axis=0), (0.0, float(options.std_scale))))
            if seen < n_pictures:
                picture = np.asarray(example["image"])
                if picture.ndim == 2:
                    picture = np.repeat(picture[..., None], 3, axis=-1)
                size = picture.shape[:2]
                panels = [picture.astype(np.uint8)] + [heat_picture(m, scale, size)
                                                       for m, scale in maps]
                pngs.append(write_png_or_warn(os.path.join(run.run_dir, "predictions",
                                                           f"{spec.name}_{seen:03d}.png"),
                                              np.concatenate(panels, axis=1)))
            seen += 1
            bar.update(1)
    bar.close()
    if seen == 0:
        raise UserError(f"split {split!r} of {source} has no examples")
    out: dict[str, float] = {"num_images": float(seen)}
    for name, acc in calibration.items():
        out.update({f"{name}/{k}": v for k, v in acc.result().items()})
    if coverage is not None:
        out.update({f"{value_key}/{k}": v for k, v in coverage.result().items()})
    return out, {"draws": draws, "channels": list(channels), "value_key": value_key,
                 "levels": list(options.levels), "pngs": _relative(pngs, run.run_dir)}


# Compiled held-out losses by stage definition: periodic evaluations reuse them.
_HELDOUT: dict[tuple[int, str], Callable] = {}
#: the posterior sample (stage 1) and mask (MaskGIT) of every held-out evaluation
HELDOUT_KEY = 0


def heldout_loss_fn(kind: Any, codes: str = "mean") -> Callable:
    """(stage params, batch, frozen, batch index) -> the stage's loss parts, jitted: the
    training loss of :mod:`uvim_givt.training.stages`, evaluated. ``codes="mean"``: with
    ``train=False`` (stage 1: a posterior sample from a fixed key; stage 2: the posterior
    means); ``"sample"`` (stage 2, as published): with ``train=True`` but no input noise,
    the randomness drawn from the fixed key folded with the batch index."""
    if codes not in HELDOUT_CODES:
        raise ValueError(f"codes={codes!r}: one of {sorted(HELDOUT_CODES)}")
    if (id(kind), codes) not in _HELDOUT:
        base = jax.random.PRNGKey(HELDOUT_KEY)

        def parts(params, batch, frozen, index=0):
            if codes == "mean":
                loss, out = kind.loss(params, batch, base, False, frozen)
            else:
                loss, out = kind.loss(params, batch, jax.random.fold_in(base, index), True,
                                      frozen, input_noise=False)
            return dict(split_weights(out)[0], loss=loss)  # the metrics, without weights
        _HELDOUT[(id(kind), codes)] = jax.jit(parts)
    return _HELDOUT[(id(kind), codes)]


def loss_loop(task: Task, run: Run, spec: Spec, *, source: str, split: str,
              max_examples: int | None, step: int, periodic: bool
              ) -> tuple[dict[str, float], dict[str, Any]]:
    """Held-out losses, averaged over the examples of a split: the stage's training loss
    (``uvim_givt.training.stages``) with ``train=False``.

    ``oracle``: stage 1's objective (``vae.beta``-weighted): ``loss``, the reconstruction
    term (``xent`` [and ``xent/<channel>``] for label maps, ``rec`` for images) and ``kl``,
    of a posterior sample drawn from a fixed key, no dropout. ``teacher_forced``: stage 2's
    NLL of the frozen VAE's codes (``evals.<name>.codes``: :data:`HELDOUT_CODES`), in nats
    per token (``nll_per_token``, also ``loss``) and per code dimension (``nll_per_dim``);
    the record says which codes (``codes``).
    """
    cfg = run.cfg
    stage1 = stages.stage_of(cfg, "vae")
    extra: dict[str, Any] = {}
    if spec.prediction == "oracle":
        kind, params, frozen = stage1, stage1.stage_params(run.vae_params), None
        batch_metrics = heldout_loss_fn(kind)
    else:
        kind, params, frozen = stages.stage_of(cfg, "givt"), run.givt_params, run.vae_params
        codes = str(spec.options.codes)
        batch_metrics = heldout_loss_fn(kind, codes)
        extra = {"codes": codes, "codes_meaning": HELDOUT_CODES[codes]}

    def prep(ex):
        out = task.preprocess(cfg, ex, "eval")
        return {k: out[k] for k in kind.inputs}

    sums: dict[str, float] = {}
    count = 0
    ds = catalog.load(task.readers, cfg, source, split)
    bar = _progress(f"eval {spec.name} {split}", periodic, ds, max_examples)
    for index, batch in enumerate(pipeline.eval_batches(ds, prep, spec.batch_size,
                                                        max_examples)):
        valid = batch.pop("_valid")
        n = int(valid.sum())
        if n < len(valid):  # the padded last batch: score only the real rows
            batch = {k: v[valid] for k, v in batch.items()}
        for k, v in batch_metrics(params, batch, frozen, index).items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
        bar.update(n)
    bar.close()
    if count == 0:
        raise UserError(f"split {split!r} of {source} has no examples")
    return {k: v / count for k, v in sums.items()}, {"num_examples": count, **extra}


def _generation_loop(*args: Any, **kw: Any) -> tuple[dict[str, float], dict[str, Any]]:
    from evals.generation_loop import generation_loop  # pulls in the feature extractors
    return generation_loop(*args, **kw)


#: the loops of the non-dense kinds (every other kind runs ``dense_loop``)
LOOPS: dict[str, Callable[..., tuple[dict[str, float], dict[str, Any]]]] = {
    "generation": _generation_loop, "loss": loss_loop}
