"""What tasks share: the standard commands wired to the declared evaluators, and, for
the dense tasks, the routes' views of a frame (the training crop and flip, the model's image,
the ``meta`` saying where the input lies in the raw frame, a prediction put back there) and
prediction over an image folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from evals.evaluators import Evaluators, evaluate_run
from evals.model_card import write_model_card
from uvim_givt import cli, rundir
from uvim_givt.data import pipeline
from uvim_givt.data.images import IMAGE_SUFFIXES, read_rgb, resize_nearest, write_png_or_warn
from uvim_givt.errors import DataError, UserError
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.task import Reference
from uvim_givt.training.metrics import progress_interval
from uvim_givt.training.runner import load_run, with_settings


def uvim_givt_references(data: str, metric: str, oracle: float, givt: float, uvim: float,
                         oracle_model: str = "VAE stage 1 (oracle)") -> tuple[Reference, ...]:
    """A dense task's published values of ``metric`` on ``data`` (the UViM-GIVT paper): its
    stage-1 VAE's oracle, the GIVT's samples, and UViM's discrete VQ-VAE for comparison."""
    return (Reference(oracle_model, data, metric, oracle, "oracle"),
            Reference("GIVT stage 2", data, metric, givt),
            Reference("UViM (VQ-VAE, discrete)", data, metric, uvim))


def train_view(cfg: ml_collections.ConfigDict, seed: tf.Tensor, image: tf.Tensor,
               *labels: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
    """The dense tasks' training view of ``image`` [H, W, C] and its label maps [H, W, ...]:
    ([image, *labels], meta).

    An inception-style crop (area fraction in [``data.crop_area_min``, 1], aspect 3/4 to
    4/3; 1 = no crop) and, with ``data.flip``, a random horizontal mirror, the same for the
    image and every label map. ``meta`` (``frame_meta``'s keys) says the crop's box and
    whether the view is mirrored.
    """
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    area_min = float(cfg.data.crop_area_min)  # in (0, 1]: schema.LIBRARY_RULES
    maps = [image, *labels]
    meta = frame_meta(image)
    if area_min < 1.0:
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=s_crop,
            area_range=(area_min, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            use_image_if_no_bounding_boxes=True)
        maps = [m[begin[0]:begin[0] + crop[0], begin[1]:begin[1] + crop[1]] for m in maps]
        meta["box"] = tf.cast(tf.stack([begin[0], begin[0] + crop[0], begin[1],
                                        begin[1] + crop[1]]), tf.int32)
    if cfg.data.flip:
        flip = tf.random.stateless_uniform([], s_flip) < 0.5
        maps = [tf.cond(flip, lambda m=m: m[:, ::-1], lambda m=m: m) for m in maps]
        meta["flip"] = flip
    return maps, meta


def frame_meta(image: tf.Tensor) -> dict[str, tf.Tensor]:
    """The ``meta`` of a model input that covers the whole raw frame ``image`` [H, W, C]:
    ``size`` int32 (H, W), ``box`` int32 (r0, r1, c0, c1) = (0, H, 0, W), ``flip`` False."""
    size = tf.shape(image, out_type=tf.int32)[:2]
    return {"size": size, "box": tf.stack([0, size[0], 0, size[1]]),
            "flip": tf.constant(False)}


def model_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, 3] -> the model's float32 [size, size, 3] in [-1, 1] (bilinear)."""
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
    return image / 127.5 - 1.0


def place_in_box(prediction: np.ndarray, meta: dict[str, Any], fill: Any,
                 resize: Callable[[np.ndarray, tuple[int, int]], np.ndarray] = resize_nearest
                 ) -> np.ndarray:
    """A map [h, w, ...] at the model's resolution -> [H, W, ...] at ``meta["size"]``:
    mirrored back when ``meta["flip"]``, resized (nearest by default) to ``meta["box"]``
    and placed there; ``fill`` elsewhere."""
    height, width = (int(v) for v in np.asarray(meta["size"]))
    r0, r1, c0, c1 = (int(v) for v in np.asarray(meta["box"]))
    if bool(np.asarray(meta.get("flip", False))):
        prediction = prediction[:, ::-1]
    prediction = resize(prediction, (r1 - r0, c1 - c0))
    if (r0, r1, c0, c1) == (0, height, 0, width):
        return prediction
    out = np.full((height, width, *prediction.shape[2:]), fill,
                  np.result_type(prediction.dtype, np.asarray(fill).dtype))
    out[r0:r1, c0:c1] = prediction
    return out


def folder_split_dir(root: str, split: str) -> str:
    """A folder source's split: ``root/train`` for train; ``root/val`` or
    ``root/validation`` for validation (a missing one names what was looked for)."""
    names = {"train": ("train",), "validation": ("val", "validation"),
             "val": ("val", "validation")}.get(split, (split,))
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise DataError(f"folder:{root}: no split folder for {split!r} "
                    f"(looked for {', '.join(names)})")


def embedded_frame_overrides(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Builder-config overrides of an embedded dataset of frames asked for by the config:
    ``data.embedded_frame_size`` (H, W), and ``data.embedded_num_{train,validation}`` when
    not 0 (0 = the builder's default)."""
    h, w = (int(x) for x in cfg.data.embedded_frame_size)
    out = {"height": h, "width": w}
    for key in ("num_train", "num_validation"):
        if int(cfg.data[f"embedded_{key}"]):
            out[key] = int(cfg.data[f"embedded_{key}"])
    return out


def list_images(images: str) -> list[str]:
    """The image file names in folder ``images``, sorted; a missing or empty folder names
    itself."""
    if not os.path.isdir(images):
        raise UserError(f"--images {images}: not a directory")
    names = sorted(f for f in os.listdir(images) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise UserError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return names


def predict_image_folder(task: Any, cfg: ml_collections.ConfigDict, predictor: Predictor,
                         images: str, batch_size: int,
                         skipped: list[tuple[str, str]] | None = None
                         ) -> Iterator[tuple[str, dict, Any]]:
    """(file name, raw example {"image"}, prediction) for each image in folder ``images``,
    sorted by name: the ``predict`` command of every dense task.

    Each image goes through the task's ``predict`` route (``task.preprocess(cfg, {"image":
    raw}, "predict")``) and its prediction through ``task.postprocess`` with that example's
    meta, so it comes back at the image's raw size. An unreadable or truncated image raises
    :class:`DataError` naming it (after the images before it are yielded), unless
    ``skipped`` is a list: then (file name, reason) is appended to it and the image skipped.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1")
    names = list_images(images)
    raws: dict[int, np.ndarray] = {}  # read, not yet yielded
    failed: list[DataError] = []  # raised here, after the batches read before it

    def read() -> Iterator[dict[str, Any]]:
        for index, n in enumerate(names):
            try:
                raws[index] = read_rgb(os.path.join(images, n))
            except DataError as e:
                if skipped is None:
                    failed.append(DataError(f"{e} (predict --skip-bad skips such files)"))
                    return
                skipped.append((n, str(e)))
                continue
            yield {"index": np.int64(index), "image": raws[index]}

    files = tf.data.Dataset.from_generator(read, output_signature={
        "index": tf.TensorSpec((), tf.int64), "image": tf.TensorSpec((None, None, 3), tf.uint8)})

    def prepare(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs = task.preprocess(cfg, {"image": ex["image"]}, "predict")
        return {"image": inputs["image"], "index": ex["index"], "meta": inputs["meta"]}

    for batch in pipeline.eval_batches(files, prepare, batch_size):
        start = int(batch["index"][0])  # the first file's position: the same seed as before
        logits = predictor.predict(batch["image"], seed=start,
                                   mirror_equivariant=task.mirror_equivariant)
        for i in np.flatnonzero(batch["_valid"]):
            index = int(batch["index"][i])
            meta = {k: v[i] for k, v in batch["meta"].items()}
            yield (names[index], {"image": raws.pop(index)},
                   task.postprocess(cfg, {k: v[i] for k, v in logits.items()}, meta))
    if failed:
        raise failed[0]


@dataclasses.dataclass
class PredictArgs:
    """What a task's ``write`` gets besides the predictions."""

    out: str
    image_ids: Callable[[str], tuple[int | str, str]]  # file name -> (image id, stem)


def coco_image_ids(images_json: str | None, names: Sequence[str] = ()
                   ) -> Callable[[str], tuple[int | str, str]]:
    """file name -> (image id, output stem): from ``images_json``'s ``images`` (matched by
    file name, then by stem), else the stem, as an int when numeric (COCO's
    ``000000142238.jpg`` is image 142238). Files of ``names`` sharing a stem (``a.jpg``,
    ``a.png``) get the stem and extension as their output name (``a_jpg``) and, without
    ``images_json``, as their id; two files given one id are refused, naming both."""
    by_name: dict[str, int | str] = {}
    if images_json:
        try:
            with open(images_json) as f:
                entries = json.load(f)["images"]
            for im in entries:
                by_name[os.path.basename(im["file_name"])] = im["id"]
                by_name.setdefault(os.path.splitext(os.path.basename(im["file_name"]))[0],
                                   im["id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--images-json {images_json}: not a COCO JSON with an 'images' "
                            f"list of {{id, file_name}} ({type(e).__name__}: {e})") from None
    stems: dict[str, int] = {}
    for n in names:
        stems[os.path.splitext(n)[0]] = stems.get(os.path.splitext(n)[0], 0) + 1

    def ids(name: str) -> tuple[int | str, str]:
        stem, ext = os.path.splitext(name)
        out = f"{stem}_{ext.lstrip('.').lower()}" if stems.get(stem, 0) > 1 else stem
        if images_json:
            if name not in by_name and stem not in by_name:
                raise UserError(f"--images-json {images_json}: no entry for {name}")
            return by_name.get(name, by_name.get(stem)), out
        if out != stem:
            return out, out
        return (int(stem) if stem.isdigit() else stem), stem

    given: dict[Any, str] = {}
    for n in names:  # every image has one id of its own before any work is done
        image_id = ids(n)[0]
        if image_id in given:
            raise UserError(f"{given[image_id]} and {n} would both be image {image_id!r} "
                            + (f"in --images-json {images_json}" if images_json else "")
                            + ": rename one, or give distinct ids")
        given[image_id] = n
    return ids


def predict_run(write: Callable[[Any, Any, PredictArgs, Iterator], str]) -> cli.Run:
    """``predict --ckpt RUN --images DIR --out DIR``: ``write(task, run, args, predictions)``
    stores the predictions in the task's format as they come (so a failure loses nothing
    written) and returns a summary line. Skipped images are listed in OUT/skipped.json."""
    def run(task, args):
        run = load_run(args.ckpt, task)
        if args.set:  # sampling and decoding only, checked as eval checks them
            run = with_settings(run, args.set, ("data.", "givt.sampling."), Evaluators,
                                "predict")
        names = list_images(args.images)
        ids = coco_image_ids(args.images_json, names)
        with rundir.locked(args.out, "--out"):  # one writer per prediction folder
            there = sorted(f for f in os.listdir(args.out) if f != ".lock")
            if there:
                raise UserError(f"--out {args.out} already holds {len(there)} file(s) "
                                f"({', '.join(there[:3])}{', ...' if len(there) > 3 else ''}): "
                                "predict into a new or empty folder, so that no two commands "
                                "mix their outputs")
            print(f"predicting {len(names)} image(s) of {args.images} with {args.ckpt} "
                  f"({task.name}, step {run.givt_step}) into {args.out}", flush=True)
            if str(run.cfg.data.source) == "embedded":
                print(f"warning: {args.ckpt} was trained on the embedded synthetic data "
                      f"({run.cfg.size} preset): on real photos its predictions say little "
                      "about the method (train on real data, or convert a released "
                      "checkpoint: python -m uvim_givt.compat.big_vision)", file=sys.stderr,
                      flush=True)
            predictor = Predictor(run.cfg, run.vae_params, run.givt_params)
            skipped: list[tuple[str, str]] | None = [] if args.skip_bad else None
            preds = tqdm(predict_image_folder(task, run.cfg, predictor, args.images,
                                              args.batch_size, skipped),
                         total=len(names), desc="predict", unit="img",
                         mininterval=progress_interval(), dynamic_ncols=True)
            try:
                summary = write(task, run, PredictArgs(args.out, ids), preds)
            finally:
                preds.close()
            print(summary)
            if skipped:
                path = os.path.join(args.out, "skipped.json")
                rundir.write_json(path, [{"file": n, "reason": r} for n, r in skipped])
                print(f"skipped {len(skipped)} unreadable image(s), listed in {path}: "
                      f"{', '.join(n for n, _ in skipped[:5])}"
                      f"{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    return run


def run_complete(task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``complete``: the dense tasks' completion of a partial output (depth completion
    from a partial map, panoptic completion from given segments). The ground truth's codes
    outside ``--region`` are kept, stage 2 samples the region's given them and the image;
    each completion is decoded, drawn (the generated region outlined on the input) and
    scored with the task metric beside the plain sampled prediction of the same images."""
    from uvim_givt.data import catalog
    from uvim_givt.sampling import completion
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    rows, cols = completion.code_grid(cfg)
    generated = completion.region_mask(rows, cols, args.region, args.fraction)
    source = args.data or cfg.data.source
    kind = next((str(e.kind) for e in cfg.evals.values()
                 if str(e.prediction) == "sampled"), None)
    ds = catalog.load(task.readers, cfg, source, args.split).take(args.num)
    predictor = Predictor(cfg, run.vae_params, run.givt_params)
    print(f"completing the {args.region} {args.fraction:g} of the outputs of "
          f"{args.num} {args.split} image(s) from {args.ckpt} (step {run.givt_step})")
    metrics = {"completed": task.metric(cfg, kind), "sampled": task.metric(cfg, kind)}
    raw = ds.as_numpy_iterator()
    seen = 0
    for batch in pipeline.eval_batches(ds, lambda ex: task.preprocess(cfg, ex, "eval"),
                                       args.num):
        image = batch["image"]
        codes = predictor.encode(batch["labels"], image)
        outputs = {
            "completed": predictor.decode(predictor.sample_codes(
                args.seed, image=image, given=codes, keep=~generated), image),
            "sampled": predictor.decode(predictor.sample_codes(args.seed, image=image),
                                        image)}
        for i in np.flatnonzero(batch["_valid"]):
            example = next(raw)
            meta = {k: v[i] for k, v in batch["meta"].items()}
            for name, logits in outputs.items():
                pred = task.postprocess(cfg, {k: np.asarray(v[i])
                                              for k, v in logits.items()}, meta)
                metrics[name].add(example, pred)
                if name == "completed":
                    marked = dict(example, image=completion.mark_region(
                        example["image"], generated, rows, cols))
                    write_png_or_warn(os.path.join(args.out, f"complete_{seen:03d}.png"),
                                      task.draw(cfg, marked, pred))
            seen += 1
    if seen == 0:
        raise UserError(f"split {args.split!r} of {source} has no examples")
    result = {"region": args.region, "fraction": args.fraction, "split": args.split,
              "data": source, "num_images": seen, "generated_codes": int(generated.sum()),
              "seq_len": int(generated.size),
              **{name: m.result() for name, m in metrics.items()}}
    rundir.write_json(os.path.join(args.out, "complete.json"), result)
    primary = task.metadata.family(kind).primary if task.metadata.family(kind) else None
    if primary:
        print(f"{primary}: completed {result['completed'][primary]:.4g}, sampled without "
              f"given codes {result['sampled'][primary]:.4g} ({seen} images)")
    print(f"wrote {os.path.join(args.out, 'complete.json')} and {seen} pictures "
          f"({os.path.join(args.out, 'complete_NNN.png')})")
    return result



def main(task: Any, commands: Sequence[cli.Command], runs: dict[str, cli.Run],
         argv: Sequence[str] | None = None, description: str = "") -> int:
    """A task's command line: ``train`` and ``eval`` with the config-declared evaluators
    (and the model card after them), plus the task's own ``runs`` by command name."""
    standard = {"train": cli.train_run(Evaluators, after=write_model_card),
                "eval": cli.eval_run(evaluate_run, after=write_model_card)}
    return cli.main(task, commands, {**standard, **runs}, argv, description)
