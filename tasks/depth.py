"""Monocular depth (NYU Depth v2) with UViM + GIVT.

    python -m tasks.depth train                      # embedded default, tiny config
    python -m tasks.depth train --config configs/depth.py:size=paper --data tfds:nyu_depth_v2
    python -m tasks.depth train --data folder:PATH   # NYU HDF5 frames: PATH/train, PATH/val
    python -m tasks.depth predict --ckpt RUN --images DIR --out DIR
    python -m tasks.depth eval --ckpt RUN [--oracle]
    python -m evals.depth --ckpt RUN                 # same metrics via the shared evaluator

Label (one channel, ``depth``): depth binned into ``N`` (256; the classes of the
``depth`` channel in ``vae.model.label_channels``) bins of
width ``w = (max - min) / N`` over ``[min, max] = [0.001, 10]`` m. The published formula is
``floor((d - min) / w)`` clipped to ``[0, N - 1]``, and the published VAE masks target class
0 out of its loss. Here class 0 *means* invalid, explicitly:

* invalid depth (``d <= min``, ``d > max``, NaN, inf) -> class 0, ignored by the VAE loss;
* valid depth -> ``clip(floor((d - min) / w), 1, N - 1)``.

This equals the published binning for every depth ``>= min + w`` (0.040 m); the valid
depths in ``(min, min + w)``, which the published recipe drops with class 0, go to class 1
here (NYU's Kinect sees nothing that close, so in practice both agree), and depths beyond
``max``, which it clips into the last bin, are invalid here, as for the metrics.

Decoding (``cfg.data.decode``) uses the bin centres ``min + (k + 0.5) w`` of the valid
classes ``k = 1 .. N - 1`` (class 0 is never a target, so it is never predicted; the
published decoder takes the argmax over all ``N`` classes, class 0 included):
``"argmax"``, the centre of the most likely bin, as published (error at most w/2 per pixel
when the bin is right), or ``"expectation"``, the softmax-weighted mean of the centres (the
minimum-squared-error estimate under the decoded distribution).

Evaluation protocol (``data.eval_*``; the published one, from big_vision's GIVT/UViM NYU
configs, ``nyu_eval_crop`` op and ``nyu_depth`` evaluators, in ``base`` and ``paper``):

1. the evaluation crop ``data.eval_crop`` (rows 54:480, columns 41:601 of a 480x640 frame:
   ``evals.depth.NYU_CROP``) is cut from the image and the ground truth *before* the
   prediction (``data.eval_crop_before_predict``): the ``eval`` route hands the model the
   crop, resized to the square input, and says so in its ``meta["box"]``;
2. the model's depth bins are decoded (``data.decode``: argmax centre);
3. the decoded map is resized to the crop's size at the frame's resolution with
   ``data.eval_resize`` (``"nearest"``, as jax.image.resize samples it) and placed into the
   frame: ``postprocess`` returns a map of ``meta["size"]``, NaN outside ``meta["box"]``
   (never scored);
4. the metric scores the crop's pixels with ``min < gt < max`` (evals.depth).

The crop box is given in pixels of a ``data.eval_crop_frame`` (480x640) frame and scaled to
frames of another size (the embedded 60x80 frames: rows 7:60, columns 5:75), so it means
the same part of the view on every data source; ``()`` scores whole frames. With
``eval_crop_before_predict=False`` the whole frame is predicted, resized to the frame and
then cropped for scoring. ``postprocess`` reads where the input lay from the route's
``meta`` (the ``predict`` route's images are predicted and returned whole). The tiny
preset's protocol and its measurement are in configs/depth.py and README "Deviations";
configs/depth.py sets every ``data.eval_*`` key.

Frames (NYU: 480x640, 3:4; the crop 426x560) are resized to the square model input
(``image_size``, 512 in the paper) without keeping the aspect ratio, image bilinear and
depth nearest, as the published recipe does, by every route (``train``, ``eval``,
``predict``).
"""

from __future__ import annotations

import sys

from uvim_givt import cli

# The command line comes first: ``--help`` answers before TensorFlow and JAX are imported.
COMMANDS = cli.dense_commands("predict 16-bit depth PNGs (mm) and previews for images")
cli.exit_if_help(__name__, "depth", COMMANDS, __doc__)

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow as tf

from evals import pictures
from evals.depth import (
    METRIC_NAMES,
    NYU_CROP_SPEC,
    Crop,
    CropSpec,
    DepthAccumulator,
    DepthEvalError,
    scale_crop,
)
from tasks import common
from tasks.datasets.synthetic_depth import SyntheticDepth
from uvim_givt import schema
from uvim_givt.data import catalog
from uvim_givt.data.images import resize_nearest, write_png
from uvim_givt.errors import ConfigError, DataError, UserError
from uvim_givt.models import builders
from uvim_givt.task import ROUTES, MetricFamily, TaskMetadata

DECODE_MODES = ("expectation", "argmax")
RESIZE_MODES = ("nearest", "bilinear")
NYU_VAL = "NYU Depth v2 val"
H5_SUFFIXES = (".h5", ".hdf5")
# Indoor depth beyond this is a unit mistake (NYU's Kinect reaches ~10 m; in millimetres
# the same scenes read 500-10,000).
MAX_PLAUSIBLE_DEPTH_M = 100.0


# ------------------------------------------------------------------------------ depth bins
def bin_width(min_depth: float, max_depth: float, num_bins: int) -> float:
    """Width of one depth bin in metres."""
    return (max_depth - min_depth) / num_bins


def bin_centres(min_depth: float, max_depth: float, num_bins: int) -> np.ndarray:
    """Depth in metres at the centre of each bin (index 0 included, though it means invalid)."""
    w = bin_width(min_depth, max_depth, num_bins)
    return (min_depth + (np.arange(num_bins) + 0.5) * w).astype(np.float32)


def depth_to_bins(depth: Any, min_depth: float, max_depth: float, num_bins: int) -> tf.Tensor:
    """Depth in metres (any shape, tf or numpy) -> int32 classes; 0 = invalid (see module doc)."""
    d = tf.cast(depth, tf.float32)
    valid = (d > min_depth) & (d <= max_depth)  # False for NaN
    d = tf.where(valid, d, min_depth)
    k = tf.floor((d - min_depth) / (max_depth - min_depth) * num_bins)
    k = tf.clip_by_value(k, 1.0, float(num_bins - 1))
    return tf.where(valid, tf.cast(k, tf.int32), 0)


def bins_to_depth(logits: np.ndarray, min_depth: float, max_depth: float,
                  decode: str = "expectation") -> np.ndarray:
    """Logits [..., N] -> depth in metres [...], from the valid classes 1..N-1 only
    (``decode`` is checked with the config: ``config_rules``)."""
    num_bins = logits.shape[-1]
    centres = bin_centres(min_depth, max_depth, num_bins)[1:]
    valid_logits = np.asarray(logits[..., 1:], np.float32)
    if decode == "argmax":
        return centres[np.argmax(valid_logits, axis=-1)]
    z = valid_logits - valid_logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p @ centres) / p.sum(axis=-1)


# -------------------------------------------------------------------- evaluation protocol
@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How a depth prediction is evaluated (the ``data.eval_*`` keys; see module doc)."""

    crop: CropSpec | None  # None: whole frames
    crop_before_predict: bool
    resize: str  # "nearest" | "bilinear": decoded map -> frame (or crop) size


def eval_protocol(cfg: ml_collections.ConfigDict) -> EvalProtocol:
    """The evaluation protocol of a config; each key's own choices are ``config_rules``'
    (checked with the config), the crop against its frame here (``ConfigError`` naming the
    keys)."""
    data = cfg.data
    resize, before = str(data.eval_resize), bool(data.eval_crop_before_predict)
    box = data.eval_crop
    if len(box) == 0:
        return EvalProtocol(None, before, resize)
    frame = tuple(int(x) for x in data.eval_crop_frame)
    spec = CropSpec(tuple(int(b) for b in box), frame)  # type: ignore[arg-type]
    try:
        scale_crop(spec.box, frame, frame)
    except DepthEvalError as e:
        raise ConfigError(f"data.eval_crop: {e}") from None
    return EvalProtocol(spec, before, resize)


def crop_tf(spec: CropSpec, *maps: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Cuts ``spec`` (scaled to the frame, as evals.depth.scale_crop) from maps [H, W, ...];
    returns (the cut maps, the box int32 (r0, r1, c0, c1) it cut, for the route's meta)."""
    shape = tf.shape(maps[0], out_type=tf.int32)
    (fh, fw), (h, w) = spec.frame, (shape[0], shape[1])

    def edge(e: int, ref: int, size: tf.Tensor) -> tf.Tensor:  # evals.depth.scale_edge
        return (2 * e * size + ref) // (2 * ref)

    r0, r1 = edge(spec.box[0], fh, h), edge(spec.box[1], fh, h)
    c0, c1 = edge(spec.box[2], fw, w), edge(spec.box[3], fw, w)
    with tf.control_dependencies([tf.debugging.assert_less(
            [r0, c0], [r1, c1], message=f"data.eval_crop {spec.box} is empty on this frame")]):
        return [tf.identity(m[r0:r1, c0:c1]) for m in maps], tf.stack([r0, r1, c0, c1])


def resize_depth(depth: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    """A decoded depth map [h, w] -> ``shape``: nearest (half-pixel centres, as
    jax.image.resize) or bilinear (half-pixel centres, cv2)."""
    if tuple(depth.shape) == tuple(shape):
        return depth
    if method == "nearest":
        return resize_nearest(depth, shape)
    return cv2.resize(np.ascontiguousarray(depth), (shape[1], shape[0]),
                      interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- HDF5 folders
def read_h5_frame(path: str) -> dict[str, np.ndarray]:
    """One NYU HDF5 frame as the TFDS nyu_depth_v2 builder reads it: ``rgb`` [3, H, W] uint8
    -> image [H, W, 3]; ``depth`` [H, W] -> float16 metres. Problems name the file."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("rgb", "depth") if k not in f]
            if missing:
                raise DataError(f"{path}: no {' or '.join(repr(k) for k in missing)} "
                                f"dataset (has {sorted(f.keys())})")
            rgb, depth = np.asarray(f["rgb"]), np.asarray(f["depth"])
    except OSError as e:
        raise DataError(f"{path}: unreadable HDF5 file ({e})") from None
    if rgb.ndim != 3 or rgb.shape[0] != 3 or depth.shape != rgb.shape[1:]:
        raise DataError(f"{path}: expected rgb [3, H, W] and depth [H, W]; got "
                        f"{list(rgb.shape)} and {list(depth.shape)}")
    if rgb.dtype != np.uint8 or depth.dtype.kind not in "fiu":
        raise DataError(f"{path}: rgb must be uint8 and depth numeric; got "
                        f"{rgb.dtype} and {depth.dtype}")
    bad = int(depth.size - np.count_nonzero(np.isfinite(depth)))
    if bad:
        raise DataError(f"{path}: {bad} NaN/inf depth values")
    deepest = float(depth.max()) if depth.size else 0.0
    if deepest > MAX_PLAUSIBLE_DEPTH_M:  # float16 would also overflow past 65.5 km
        raise DataError(f"{path}: depth values up to {deepest:g}: these look like "
                        "millimetres; NYU depth is in metres (divide by 1000)")
    return {"image": np.ascontiguousarray(np.transpose(rgb, (1, 2, 0))),
            "depth": depth.astype(np.float16)}


_SCANS: dict[tuple[str, str, bool], tuple[list[tuple[str, str]], list[str]]] = {}


def scan_nyu_folder(root: str, split: str, skip_bad: bool = False
                    ) -> tuple[list[tuple[str, str]], list[str]]:
    """Validates every frame of a split once per process: ((name, path) of the good frames,
    messages of the skipped ones). A bad frame raises ``DataError`` unless ``skip_bad``."""
    key = (os.path.abspath(root), split, skip_bad)
    if key in _SCANS:
        return _SCANS[key]
    split_dir = common.folder_split_dir(root, split)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(split_dir) for f in files
                   if f.lower().endswith(H5_SUFFIXES))
    if not paths:
        raise DataError(f"{split_dir}: no {'/'.join(H5_SUFFIXES)} frames")
    good, skipped = [], []
    for path in paths:
        try:
            read_h5_frame(path)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        rel = os.path.splitext(os.path.relpath(path, split_dir))[0]
        good.append((rel.replace(os.sep, "_"), path))
    if skipped:
        print(f"warning: skipped {len(skipped)} bad frame(s) of {len(paths)} in {split_dir}; "
              f"first: {skipped[0]}", file=sys.stderr)
    if not good:
        raise DataError(f"{split_dir}: all {len(paths)} frames are bad")
    _SCANS[key] = (good, skipped)
    return good, skipped


def read_nyu_folder(root: str, split: str, skip_bad: bool = False
                    ) -> Iterator[dict[str, Any]]:
    """Examples ``{"image", "depth", "name"}`` of a folder of NYU HDF5 frames, sorted by path."""
    good, _ = scan_nyu_folder(root, split, skip_bad)
    for name, path in good:
        yield dict(read_h5_frame(path), name=name)


# ------------------------------------------------------------------------------- readers
def read_folder(cfg: ml_collections.ConfigDict, root: str, split: str) -> tf.data.Dataset:
    """``folder:ROOT``: the NYU HDF5 frames of a split, validated first (a bad frame raises
    here, in Python, naming the file, unless ``data.skip_bad``)."""
    skip_bad = bool(cfg.data.skip_bad)
    scan_nyu_folder(root, split, skip_bad)
    sig = {"image": tf.TensorSpec((None, None, 3), tf.uint8),
           "depth": tf.TensorSpec((None, None), tf.float16),
           "name": tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(lambda: read_nyu_folder(root, split, skip_bad),
                                          output_signature=sig)


def raw_fields(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """{image, depth, name} of any source: a folder's frames are named by their files, the
    others ``<split>_<index>``."""
    if "name" in ds.element_spec:
        return ds.map(lambda ex: {"image": ex["image"], "depth": ex["depth"],
                                  "name": ex["name"]})

    def keep(i, ex):
        name = tf.strings.join([split, tf.strings.as_string(i, width=6, fill="0")], "_")
        return {"image": ex["image"], "depth": ex["depth"], "name": name}

    return ds.enumerate().map(keep)


# -------------------------------------------------------------------------------- the task
def num_bins(cfg: ml_collections.ConfigDict) -> int:
    """The number of depth classes (class 0 = invalid): the VAE's ``depth`` channel."""
    return builders.label_channels(cfg)["depth"][1]


class DepthTask:
    """NYU depth: its readers (embedded, TFDS, HDF5 folders), routes, binning, decoding,
    depth metrics and drawings."""

    #: The ranges and choices of the depth keys (uvim_givt/schema.py).
    config_rules: schema.Rules = (
        (r"data\.decode", schema.OneOf(DECODE_MODES)),
        (r"data\.eval_resize", schema.OneOf(RESIZE_MODES)),
        (r"data\.min_depth", schema.NON_NEGATIVE),
        (r"data\.max_depth", schema.POSITIVE),
        (r"data\.(embedded_frame_size|eval_crop_frame)", schema.SIZE_2),
        (r"data\.eval_crop", schema.Nums(schema.COUNT, length=4, or_empty=True)),
        (r"data\.eval_crop_before_predict", schema.Flag()),
    )

    name = "depth"
    mirror_equivariant = True  # a mirrored frame's depth is the mirrored depth
    readers = catalog.Readers(
        embedded=SyntheticDepth, embedded_config=common.embedded_frame_overrides,
        folder=read_folder,
        fields=raw_fields, prepare_hint="`tfds build NAME` (downloads NYU Depth v2)")
    metadata = TaskMetadata(
        title="NYU Depth v2 monocular depth",
        metrics={
            "depth": MetricFamily(
                order=METRIC_NAMES, primary="RMSE", higher_is_better=False,
                units=(("RMSE", "m"),),
                references=common.uvim_givt_references(NYU_VAL, "RMSE", oracle=0.195,
                                                       givt=0.474, uvim=0.467)),
        },
        datasets=(("embedded", "synthetic indoor scenes (tasks/datasets/synthetic_depth.py)"),
                  ("nyu_depth_v2", NYU_VAL)))

    def check_config(self, cfg: ml_collections.ConfigDict) -> None:
        """Depth settings across keys (each key's own range: ``config_rules``), checked
        before a run directory is written."""
        lo, hi = float(cfg.data.min_depth), float(cfg.data.max_depth)
        if not 0 <= lo < hi:
            raise ConfigError(f"data.min_depth={lo}, data.max_depth={hi}: need 0 <= min < max")
        eval_protocol(cfg)

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, mode: str,
                   seed: tf.Tensor | None = None) -> dict:
        """Model inputs {image, labels (not in ``predict``), meta} by the route ``mode``:
        ``train`` crops and flips (``seed``); ``eval`` first cuts the frame to the
        evaluation crop when ``data.eval_crop_before_predict`` (the published protocol);
        ``predict`` takes the image alone, whole. ``meta``: ``size`` (the raw frame),
        ``box`` (the part of it the input covers), ``flip``."""
        if mode not in ROUTES:
            raise ValueError(f"mode {mode!r}: one of {ROUTES}")
        size = int(cfg.data.image_size)
        image = example["image"]
        if mode == "predict":
            return {"image": common.model_image(image, size), "meta": common.frame_meta(image)}
        depth = tf.cast(example["depth"], tf.float32)[..., None]
        if mode == "train":  # whole frames in the tiny preset: a crop zooms, its depths stay
            (view, depth), meta = common.train_view(cfg, seed, image, depth)
        else:
            view, meta = image, common.frame_meta(image)
            protocol = eval_protocol(cfg)
            if protocol.crop_before_predict and protocol.crop is not None:
                (view, depth), meta["box"] = crop_tf(protocol.crop, image, depth)
        depth = tf.image.resize(depth, (size, size), method="nearest")
        labels = depth_to_bins(depth, float(cfg.data.min_depth), float(cfg.data.max_depth),
                               num_bins(cfg))
        return {"image": common.model_image(view, size),
                "labels": tf.ensure_shape(labels, (size, size, 1)), "meta": meta}

    def postprocess(self, cfg: ml_collections.ConfigDict, logits: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> np.ndarray:
        """Logits [S, S, N] of one example -> depth in metres [H, W] at ``meta["size"]``:
        the decoded map resized (``data.eval_resize``) into ``meta["box"]``, NaN around
        it (mirrored back first when ``meta["flip"]``)."""
        depth = bins_to_depth(logits["depth"], float(cfg.data.min_depth),
                              float(cfg.data.max_depth), str(cfg.data.decode))
        resize = functools.partial(resize_depth, method=eval_protocol(cfg).resize)
        return common.place_in_box(depth, meta, np.nan, resize).astype(np.float32)

    def metric(self, cfg: ml_collections.ConfigDict, kind: str) -> DepthMetric:
        if kind != "depth":
            raise ConfigError(f"the depth task has no {kind!r} metric (evals.*.kind)")
        return DepthMetric(float(cfg.data.min_depth), float(cfg.data.max_depth),
                           eval_protocol(cfg).crop)

    def baseline(self, cfg: ml_collections.ConfigDict, source: str
                 ) -> tuple[Callable[[dict], np.ndarray], dict[str, Any]]:
        """The global training-set mean depth (one number: the mean over every valid pixel
        of the training split) predicted everywhere: (predict(meta) -> depth [H, W], what
        to record)."""
        mean = mean_training_depth(self, cfg, source)
        print(f"  mean-depth baseline: training-set mean {mean:.3f} m", flush=True)
        constant = np.full((1, 1), mean, np.float32)

        def predict(meta: dict[str, Any]) -> np.ndarray:
            """The mean over the part of the frame an input covers (``meta`` of the
            ``eval`` route), NaN elsewhere: placed as ``postprocess`` places a prediction."""
            return common.place_in_box(constant, meta, np.nan).astype(np.float32)

        return predict, {"mean_depth_m": mean, "baseline": "global training-set mean depth"}

    def draw(self, cfg: ml_collections.ConfigDict, example: dict, prediction: np.ndarray
             ) -> np.ndarray:
        """Image, ground truth (when the example has it) and prediction on one colour scale
        (the ground truth's range, else the config's depth range: a scale fitted to the
        prediction alone would blow centimetres of noise up to the full palette), titled,
        the prediction with its RMSE on this image, and a colour bar in metres (black: no
        ground truth)."""
        h, w = prediction.shape
        image = example["image"]
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        lo, hi = float(cfg.data.min_depth), float(cfg.data.max_depth)
        panels = [("image", image)]
        title, scale = "prediction", (lo, hi)
        finite = np.isfinite(prediction)
        if "depth" in example:
            gt = example["depth"].astype(np.float32)
            with np.errstate(invalid="ignore"):
                valid = (gt > lo) & (gt <= hi)
            if valid.any():
                scale = (float(gt[valid].min()), float(gt[valid].max()))
                both = valid & finite
                if both.any():
                    rmse = float(np.sqrt(np.mean((prediction[both] - gt[both]) ** 2)))
                    title = f"prediction, RMSE {rmse:.3f} m"
            panels.append(("ground truth", colorize_depth(gt, valid, scale)))
        panels.append((title, colorize_depth(prediction, finite, scale)))
        return pictures.labelled_panels(panels, lambda width: pictures.colour_bar(
            *scale, "m", width, cv2.COLORMAP_INFERNO))


def colorize_depth(depth: np.ndarray, valid: np.ndarray, scale: tuple[float, float]
                   ) -> np.ndarray:
    """Depth -> RGB uint8 with the inferno colour map over ``scale``; invalid pixels black."""
    lo, hi = scale
    g = np.clip((np.nan_to_num(depth) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = cv2.applyColorMap(np.round(g * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    return np.where(valid[..., None], rgb, 0).astype(np.uint8)


class DepthMetric:
    """RMSE, AbsRel, log10, delta1..3 per image, averaged (evals.depth), over the pixels of
    ``crop`` (``data.eval_crop`` scaled to each frame) with ``min < gt < max``."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0,
                 crop: Crop = NYU_CROP_SPEC):
        self.acc = DepthAccumulator(min_depth, max_depth, crop=crop)

    def add(self, example: dict, prediction: np.ndarray) -> None:
        name = example.get("name", f"{len(self.acc.per_image) + len(self.acc.invalid_images)}")
        name = name.decode() if isinstance(name, bytes) else str(name)
        self.acc.add(name, prediction, example["depth"].astype(np.float32))

    def result(self) -> dict[str, float]:
        out = dict(self.acc.metrics())
        out["num_images"] = float(self.acc.num_images)
        if self.acc.invalid_images:
            out["num_images_without_valid_pixels"] = float(len(self.acc.invalid_images))
        return out


TASK = DepthTask()


# --------------------------------------------------------------------- mean-depth baseline
def mean_training_depth(task: DepthTask, cfg: ml_collections.ConfigDict, source: str) -> float:
    """The mean over every valid pixel of the training split, in metres."""
    lo, hi = float(cfg.data.min_depth), float(cfg.data.max_depth)
    total, count = 0.0, 0
    ds = catalog.load(task.readers, cfg, source, cfg.data.train_split)
    for ex in ds.as_numpy_iterator():
        d = ex["depth"].astype(np.float64)
        valid = (d > lo) & (d <= hi)
        total += float(d[valid].sum())
        count += int(valid.sum())
    if count == 0:
        raise DataError(f"split {cfg.data.train_split!r} of {source} has no valid depth")
    return total / count


# ------------------------------------------------------------------------------ prediction
def write_depth_png(path: str, depth_m: np.ndarray) -> None:
    """16-bit PNG in millimetres (0 where the depth is not finite)."""
    mm = np.clip(np.round(np.nan_to_num(depth_m) * 1000.0), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(path, mm):
        raise UserError(f"could not write {path} (read-only folder or disk full?)")


def write_predictions(task: DepthTask, run: Any, args: common.PredictArgs,
                      predictions: Iterator) -> str:
    """``predict``: 16-bit PNG depth (mm) per image plus colour-mapped previews, each
    written as it comes."""
    out = args.out
    previews = os.path.join(out, "previews")
    count = 0
    for name, ex, pred in predictions:
        stem = args.image_ids(name)[1]  # unique per file (a.jpg, a.png: a_jpg, a_png)
        write_depth_png(os.path.join(out, f"{stem}.png"), pred)
        write_png(os.path.join(previews, f"{stem}.png"), task.draw(run.cfg, ex, pred))
        count += 1
    return (f"wrote {count} depth maps (16-bit PNG, millimetres) to {out} and previews to "
            f"{previews} (step {run.givt_step})")


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / predict / complete); returns the exit status."""
    return common.main(TASK, COMMANDS, {"predict": common.predict_run(write_predictions),
                                        "complete": common.run_complete}, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
