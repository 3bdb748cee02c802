"""The evaluation loops: what an evaluator of each kind and prediction runs over a split.

Each loop takes (task, run, spec, source=, split=, max_examples=, step=, periodic=) and
returns (metrics, extra): the metrics of the record and what else it keeps (picture paths,
settings). :func:`loop_for` picks the loop of a declared evaluator (``evals.evaluators.Spec``):

* ``dense_loop``: predict a split (oracle, sampled, teacher-forced or the task's baseline)
  and score it with ``task.metric(cfg, kind)``;
* ``completion_loop``: the exposure-bias curve, the metric with a share of the true codes
  given; ``uncertainty_loop``: several draws per image, calibration and spread;
* ``loss_loop``: the stages' held-out losses (the training loss of
  :mod:`uvim_givt.training.stages`, evaluated); ``generation``: evals.generation_loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from tqdm.auto import tqdm

from uvim_givt import config as config_lib
from uvim_givt.data import catalog, pipeline
from uvim_givt.data.images import write_png_or_warn
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.task import Task
from uvim_givt.training import stages
from uvim_givt.training.metrics import progress_interval
from uvim_givt.training.runner import Run
from uvim_givt.training.trainer import split_weights

if TYPE_CHECKING:
    from evals.evaluators import Spec

Loop = Callable[..., tuple[dict[str, float], dict[str, Any]]]

#: ``evals.<name>.codes`` of a stage-2 ``loss`` evaluator: what its NLL scores
HELDOUT_CODES = {
    "sample": "a posterior sample of the stage-1 codes, labels dropped and dropout as in "
              "training, no input noise (big_vision's validation_fn: the training loss)",
    "mean": "the stage-1 posterior means, no label or other dropout (deterministic)",
}

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


def task_metric(task: Any, cfg: Any, spec: Spec) -> Any:
    """The task's accumulator of ``spec.kind``; one with a ``configure(options)`` method
    also gets its evaluator's options (e.g. colorization's FID ``extractor``)."""
    metric = task.metric(cfg, spec.kind)
    configure = getattr(metric, "configure", None)
    if configure is not None:
        configure(spec.options)
    return metric


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
    metric = task_metric(task, cfg, spec)
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
    result = metric.result()  # record_extra: e.g. the network of a dense FID's features
    extra.update(getattr(metric, "record_extra", dict)())
    return result, dict(extra, pngs=_relative(pngs, run.run_dir))


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
    if config_lib.stage2_style(cfg) != "ar":
        raise ConfigError(f"evals.{spec.name}: completing given codes needs a causal stage 2 "
                          f"(givt.model.style='ar', not {cfg.givt.model.style!r})")
    seq_len = int(cfg.givt.model.seq_len)
    fractions = [float(f) for f in spec.options.keep]
    num_given = [int(round(f * seq_len)) for f in fractions]
    metrics = [task_metric(task, cfg, spec) for _ in fractions]
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
            # with no code given, the plain samples (test-time flip too, where declared)
            logits = predictor.predict(batch["image"], seed=seen, given=batch["labels"],
                                       num_given=k, mirror_equivariant=task.mirror_equivariant)
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
            predictor.sample_codes(seen, k, image=batch["image"]), batch["image"]))
            for k in range(draws)]
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
    per token (``nll_per_token``, also ``loss`` unless ``givt.label_smoothing`` makes the
    loss the smoothed cross-entropy, ``xent_smoothed``) and per code dimension
    (``nll_per_dim``); the record says which codes (``codes``).
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


def loop_for(spec: Spec) -> Loop:
    """The loop of a declared evaluator: by its prediction (completed, uncertainty), else
    by its kind (generation, loss), else the dense loop."""
    by_prediction = {"completed": completion_loop, "uncertainty": uncertainty_loop}
    return by_prediction.get(spec.prediction, LOOPS.get(spec.kind, dense_loop))
