"""The generation evaluation loop (evaluator kind ``generation``) and its pieces.

* ``oracle`` (stage 1): ``recon_mse`` (mean squared error of the split's images in
  [-1, 1], decoded from the posterior mean), ``FID_recon`` and ``FID_random_latents``
  (images decoded from N(0, I) latents);
* ``sampled`` (stage 2): ``FID``, ``IS`` and ``class_accuracy`` of class-conditional
  samples with the config's guidance, the same without guidance (``*_no_cfg``), and
  ``FID_random_latents``.

FIDs are against the held-out split with the evaluator's feature ``extractor``
(``digits`` classifier, ``fid_inception:PATH``: the network of published FIDs, or
``keras_inception:PATH`` / ``inception:PATH``: Keras' InceptionV3, not comparable with
published FIDs). Records name it: ``extractor`` (the label), ``extractor_spec`` and
``fid_comparable_to_published``. The class accuracy is the fraction of samples the
extractor's classifier assigns to the requested class (computed when its classes are the
dataset's labels). PNG grids go to RUN/samples/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from evals.features import (
    EXTRACTOR_PREFIXES,
    GenerationEvalError,
    extractor_record,
    features_and_probs,
    get_extractor,
)
from evals.features.keras_inception import INCEPTION_WEIGHTS_FILE
from evals.features.torch_weights import WEIGHTS_FILE
from evals.generation_metrics import (
    class_consistency_accuracy,
    fid_from_features,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from uvim_givt.data import catalog, pipeline
from uvim_givt.data.images import image_grid, write_png_or_warn
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.sampling.predictor import Predictor, to_uint8
from uvim_givt.task import Task


def make_extractor(spec: str) -> Any:
    """The feature extractor named by an evaluator's ``extractor``."""
    prefix, sep, path = spec.partition(":")
    if sep and not path and prefix in EXTRACTOR_PREFIXES:
        raise ConfigError(
            f"FID needs Inception weights here: --set evals.<name>.extractor={prefix}:PATH "
            f"(fid_inception: pytorch-fid's {WEIGHTS_FILE}, FIDs comparable to published "
            f"ones; keras_inception: Keras' {INCEPTION_WEIGHTS_FILE}, not "
            "comparable; nothing is downloaded)")
    try:
        return get_extractor(spec)
    except GenerationEvalError as e:
        raise ConfigError(f"extractor: {e}") from None


def eval_images(task: Task, cfg: ml_collections.ConfigDict, source: str, split: str,
                batch_size: int, max_examples: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float [n, S, S, 3] in [-1, 1], labels [n]) batches of a split, in order."""
    ds = catalog.load(task.readers, cfg, source, split)
    for batch in pipeline.eval_batches(ds, lambda ex: task.preprocess(cfg, ex, "eval"),
                                       batch_size, max_examples):
        valid = batch["_valid"]
        yield batch["image"][valid], batch["label"][valid]


def reference_features(task: Task, cfg: ml_collections.ConfigDict, extractor: Any,
                       source: str, split: str, batch_size: int,
                       max_examples: int | None = None) -> np.ndarray:
    """Extractor features of the real images of a split (streamed)."""
    feats = [extractor.features(to_uint8(images))
             for images, _ in eval_images(task, cfg, source, split, batch_size, max_examples)]
    if not feats:
        raise UserError(f"split {split!r} of {source} has no examples")
    return np.concatenate(feats)


def score_images(extractor: Any, images: np.ndarray, ref_feats: np.ndarray,
                 labels: np.ndarray | None, num_classes: int) -> dict[str, float]:
    """FID vs the reference, IS and (labels given, the extractor's classes being the
    dataset's) the class-consistency accuracy."""
    feats, probs = features_and_probs(extractor, images)
    out = {"FID": fid_from_features(feats, ref_feats)}
    if len(feats) > 3 and len(ref_feats) > 3:
        out.update(precision_recall(ref_feats, feats))
        out["KID"] = kernel_inception_distance(ref_feats, feats)[0]
    # The samples come grouped by class; IS splits in order, so a split of one class would
    # score ~1 however good the samples: split a fixed shuffle instead (as random-order
    # samples are split in the usual protocol).
    order = np.random.default_rng(0).permutation(len(probs))
    out["IS"] = inception_score(probs[order], splits=min(10, len(probs)))[0]
    if labels is not None and probs.shape[1] == num_classes:
        out["class_accuracy"] = class_consistency_accuracy(probs.argmax(1), labels)
    return out


def eval_classes(cfg: ml_collections.ConfigDict, options: ml_collections.ConfigDict
                 ) -> np.ndarray:
    n, cap = int(cfg.givt.model.num_labels), int(options.max_classes)
    return np.arange(min(n, cap) if cap else n)


def sample_and_score(gen: Predictor, extractor: Any, ref_feats: np.ndarray,
                     labels: np.ndarray, seed: int) -> tuple[dict[str, float], np.ndarray]:
    """Samples one image per label with the predictor's settings, scores them."""
    images = gen.decode_images(gen.sample_latents(labels, seed=seed))
    return score_images(extractor, images, ref_feats, labels,
                        int(gen.model.num_labels)), images


def per_class_grids(images: np.ndarray, labels: np.ndarray, classes: np.ndarray, per_class: int
                    ) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    """(overview: one row per class, up to 32; {class: a row of its first samples})."""
    rows = {}
    for c in classes:
        mine = images[labels == c][:per_class]
        if len(mine):
            rows[int(c)] = image_grid(mine, 1)
    full = [r for r in rows.values() if r.shape[1] == per_class * images.shape[2]]
    return (np.concatenate(full[:32], axis=0) if full else None), rows


def _oracle(task, run, spec, source, split, max_examples, step, extractor):
    gen = Predictor(run.cfg, run.vae_params, batch_size=spec.batch_size)
    sample_dir = os.path.join(run.run_dir, "samples")
    ref_feats, recon_feats, sq, count = [], [], 0.0, 0
    for images, _ in eval_images(task, run.cfg, source, split, spec.batch_size, max_examples):
        recon = gen.reconstruct(images)
        sq += float(np.sum(np.mean(np.square(recon - images), axis=(1, 2, 3))))
        count += len(images)
        ref_feats.append(extractor.features(to_uint8(images)))
        recon_feats.append(extractor.features(to_uint8(recon)))
        if count == len(images):
            pngs = [write_png_or_warn(os.path.join(sample_dir, "vae_reconstructions.png"),
                                      np.concatenate([image_grid(to_uint8(images[:16]), 1),
                                                      image_grid(to_uint8(recon[:16]), 1)],
                                                     axis=0))]
    if not count:
        raise UserError(f"split {split!r} of {source} has no examples")
    ref = np.concatenate(ref_feats)
    random_images = gen.decode_images(gen.random_latents(max(len(ref), 2), seed=1))
    pngs.append(write_png_or_warn(os.path.join(sample_dir, "vae_random_latents.png"),
                                  image_grid(random_images[:32], 2)))
    metrics = {"recon_mse": sq / count,
               "FID_recon": fid_from_features(np.concatenate(recon_feats), ref),
               "FID_random_latents": fid_from_features(
                   extractor.features(random_images), ref)}
    return metrics, {"num_examples": count, "ema": run.vae_is_ema,
                     "pngs": [os.path.relpath(p, run.run_dir) for p in pngs if p]}


def _sampled(task, run, spec, source, split, max_examples, step, extractor, seed=0):
    cfg, opts = run.cfg, spec.options
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=spec.batch_size)
    s = gen.settings
    t, w = s.temperature, s.cfg_weight
    classes = eval_classes(cfg, opts)
    labels = np.repeat(classes, int(opts.samples_per_class)).astype(np.int32)
    ref = reference_features(task, cfg, extractor, source, split, spec.batch_size,
                             max_examples)
    t0 = time.time()
    guided, images = sample_and_score(gen, extractor, ref, labels, seed)
    sample_time = time.time() - t0
    metrics = dict(guided)
    sample_dir = os.path.join(run.run_dir, "samples")
    per_class = int(opts.grid_per_class)
    grid, rows = per_class_grids(images, labels, classes, per_class)
    pngs = [write_png_or_warn(os.path.join(sample_dir, f"class_{c:04d}.png"), row)
            for c, row in rows.items()]
    if grid is not None:
        pngs.append(write_png_or_warn(
            os.path.join(sample_dir, f"grid_step{step}_cfg{w:g}.png"), grid))
    if w != 0:
        plain, images_u = sample_and_score(gen.with_settings(s.replace(cfg_weight=0.0)),
                                           extractor, ref, labels, seed)
        metrics.update({f"{k}_no_cfg": v for k, v in plain.items()})
        grid_u, _ = per_class_grids(images_u, labels, classes, per_class)
        if grid_u is not None:
            pngs.append(write_png_or_warn(os.path.join(sample_dir, f"grid_step{step}_cfg0.png"),
                                          grid_u))
    else:
        metrics.update({f"{k}_no_cfg": v for k, v in guided.items()})
    random_images = gen.decode_images(gen.random_latents(len(labels), seed=seed + 1))
    metrics["FID_random_latents"] = fid_from_features(
        extractor.features(random_images), ref)
    k = min(len(random_images), 100)
    pngs.append(write_png_or_warn(os.path.join(sample_dir, "random_latents.png"),
                                  image_grid(random_images[:k], max(1, k // 10))))
    extra = {"temperature": t, "cfg_weight": w, "style": cfg.givt.model.style,
             "samples_per_class": int(opts.samples_per_class), "num_classes": len(classes),
             "num_reference": len(ref), "num_examples": len(labels),
             "sampling_seconds": round(sample_time, 1),
             "pngs": [os.path.relpath(p, run.run_dir) for p in pngs if p]}
    if cfg.givt.model.style == "masked":
        extra.update(num_steps=s.num_steps, choice_temperature=s.choice_temperature)
    return metrics, extra


def generation_loop(task: Task, run: Any, spec: Any, *, source: str, split: str,
                    max_examples: int | None, step: int, periodic: bool
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """Scores stage 1 (``oracle``) or stage 2 (``sampled``) of a generation run."""
    extractor = make_extractor(str(spec.options.extractor))
    fn = _oracle if spec.prediction == "oracle" else _sampled
    metrics, extra = fn(task, run, spec, source, split, max_examples, step, extractor)
    # the label (fid_inception / keras_inception / digits) and whether the FIDs may be set
    # beside published ones, with the spec as given
    return metrics, dict(extra, **extractor_record(extractor, str(spec.options.extractor)))
