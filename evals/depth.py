"""Depth evaluation: RMSE, AbsRel, log10 and delta1/2/3, per image then averaged.

Definitions, as in the published UViM / GIVT NYU Depth v2 evaluators (big_vision
``evaluators/proj/uvim/nyu_depth.py`` and ``evaluators/proj/givt/nyu_depth.py``):

* pixels count when ``min_depth < gt < max_depth``, strictly on both sides (zeros,
  NaNs and infs in the ground truth are therefore invalid pixels, not errors);
* the prediction is resized to the ground-truth size with nearest-neighbour
  sampling at half-pixel centres (``src = floor((i + 0.5) * in / out)``, the
  same as ``jax.image.resize(..., "nearest")``), then optionally cropped;
* predictions are scored as they are, never clipped (the published evaluators do
  not clip); a prediction <= 0 on a scored pixel, where log10 is undefined, is an
  error naming the image, as is a NaN/inf inside the scored region;
* RMSE = sqrt(mean((p - g)^2)), AbsRel = mean(|p - g| / g),
  log10 = mean(|log10 p - log10 g|), delta_k = fraction of max(p/g, g/p) < 1.25^k,
  each over the valid pixels of one image, then averaged over the images;
* the NYU evaluation crop of the 480x640 frames, as big_vision's ``nyu_eval_crop``
  op slices it, keeps rows 54..479 (426 rows) and columns 41..600 (560 columns),
  i.e. ``gt[54:480, 41:601]``. (That op's comment names rows 45:471, the crop of
  Eigen et al. that most of the literature uses; its code starts at row 54. The
  size, 426 x 560, is the same; ``EIGEN_CROP`` / ``--crop eigen`` score that one.)
  :class:`CropSpec` scales such a box to frames of another size.

An image without a single valid pixel is counted and listed by
:class:`DepthAccumulator`, never averaged in.

Command line, files mode (16-bit PNG in millimetres or ``.npy`` in metres on
either side, matched by file-name stem)::

    python -m evals.depth --pred-dir preds/ --gt-dir gt/ [--crop nyu|eigen] [--out result.json]

Checkpoint mode (the run's declared depth evaluators, through the runner API)::

    python -m evals.depth --ckpt RUN_DIR [--data SRC] [--split validation] [--max-examples N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from uvim_givt.data.images import read_image, resize_nearest
from uvim_givt.errors import (
    ArgumentParser,
    DataError,
    EvalError,
    add_verbose_argument,
    non_negative_float,
    positive_float,
    positive_int,
    run_command,
)
from uvim_givt.rundir import write_json

METRIC_NAMES = ("RMSE", "AbsRel", "log10", "delta1", "delta2", "delta3")
NYU_FRAME_SHAPE = (480, 640)
# (row_start, row_stop, col_start, col_stop), stops exclusive: 426 x 560 pixels.
NYU_CROP = (54, 480, 41, 601)  # big_vision's nyu_eval_crop, as its code slices
EIGEN_CROP = (45, 471, 41, 601)  # Eigen et al.'s crop (the comment of that op)
NAMED_CROPS = {"nyu": NYU_CROP, "eigen": EIGEN_CROP}
DEPTH_FILE_SUFFIXES = (".png", ".npy")

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """A crop box ``(r0, r1, c0, c1)`` (stops exclusive) in pixels of a ``frame``-sized
    frame, scaled to the size of each frame it is applied to (see :func:`scale_crop`)."""

    box: Box = NYU_CROP
    frame: tuple[int, int] = NYU_FRAME_SHAPE

    def for_shape(self, shape: tuple[int, int]) -> Box:
        return scale_crop(self.box, self.frame, shape)


NYU_CROP_SPEC = CropSpec(NYU_CROP, NYU_FRAME_SHAPE)
Crop = str | Box | CropSpec | None


def scale_edge(edge: int, ref: int, size: int) -> int:
    """``edge * size / ref`` rounded half up, in integers (``edge`` of a ``ref``-pixel
    side, moved to a ``size``-pixel side); tasks.depth computes the same in TensorFlow."""
    return (2 * edge * size + ref) // (2 * ref)


def scale_crop(box: Sequence[int], frame: Sequence[int], shape: Sequence[int]) -> Box:
    """A crop box of a ``frame``-sized frame scaled to a frame of ``shape`` (exact when the
    shapes agree). The NYU crop on the 60x80 embedded frames: (7, 60, 5, 75)."""
    r0, r1, c0, c1 = (int(b) for b in box)
    (fh, fw), (h, w) = (int(x) for x in frame), (int(x) for x in shape[:2])
    out = (scale_edge(r0, fh, h), scale_edge(r1, fh, h), scale_edge(c0, fw, w),
           scale_edge(c1, fw, w))
    if not (0 <= out[0] < out[1] <= h and 0 <= out[2] < out[3] <= w):
        raise DepthEvalError(f"crop {tuple(box)} of a {fh}x{fw} frame is empty or outside "
                             f"a {h}x{w} frame once scaled: {out}")
    return out


class DepthEvalError(EvalError):
    """A depth input (file, array, argument) that cannot be evaluated as given."""


def _as_map(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise DepthEvalError(f"{what} must be a 2-d depth map [H, W] (or [H, W, 1]); got {x.shape}")
    return x.astype(np.float64)


def _crop_box(crop: Crop, shape: tuple[int, int]) -> Box | None:
    if crop is None:
        return None
    if isinstance(crop, CropSpec):
        return crop.for_shape(shape)
    if crop == "auto":
        return NYU_CROP if tuple(shape) == NYU_FRAME_SHAPE else None
    if isinstance(crop, str) and crop in NAMED_CROPS:
        if tuple(shape) != NYU_FRAME_SHAPE:
            raise DepthEvalError(
                f"the {crop} crop applies to 480x640 frames; ground truth is "
                f"{shape[0]}x{shape[1]}"
            )
        return NAMED_CROPS[crop]
    if isinstance(crop, tuple) and len(crop) == 4:
        return tuple(int(c) for c in crop)  # type: ignore[return-value]
    raise DepthEvalError(f"unknown crop {crop!r}; use None, 'nyu', 'eigen', 'auto', "
                         "(r0, r1, c0, c1) or a CropSpec")


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop: Crop = None,
) -> dict[str, float]:
    """Metrics of one image (depths in metres).

    Returns the six metrics plus ``valid_pixels``; when no pixel is valid the
    metrics are NaN and ``valid_pixels`` is 0 (:class:`DepthAccumulator` lists
    such images instead of averaging them). ``crop`` is None, ``"nyu"``,
    ``"eigen"``, ``"auto"`` (NYU crop for 480x640 frames only), ``(r0, r1, c0, c1)``
    or a :class:`CropSpec`. Only the crop has to hold a finite prediction.
    """
    pred = _as_map(pred, "prediction")
    gt = _as_map(gt, "ground truth")
    pred = resize_nearest(pred, gt.shape)
    box = _crop_box(crop, gt.shape)
    if box is not None:
        r0, r1, c0, c1 = box
        pred, gt = pred[r0:r1, c0:c1], gt[r0:r1, c0:c1]
    bad = int(np.size(pred) - np.count_nonzero(np.isfinite(pred)))
    if bad:
        where = " inside the crop" if box is not None else ""
        raise DepthEvalError(f"prediction has {bad} NaN/inf values{where}")
    with np.errstate(invalid="ignore"):  # NaN ground truth is simply not valid
        valid = (gt > min_depth) & (gt < max_depth)
    n = int(valid.sum())
    if n == 0:
        return {**{k: float("nan") for k in METRIC_NAMES}, "valid_pixels": 0}
    g = gt[valid]
    p = pred[valid]
    if (p <= 0).any():
        raise DepthEvalError(f"prediction has {int((p <= 0).sum())} values <= 0 on scored "
                             "pixels (log10 and the ratios are undefined there)")
    ratio = np.maximum(p / g, g / p)
    out = {
        "RMSE": float(np.sqrt(np.mean((p - g) ** 2))),
        "AbsRel": float(np.mean(np.abs(p - g) / g)),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
    }
    for k in (1, 2, 3):
        out[f"delta{k}"] = float(np.mean(ratio < 1.25**k))
    out["valid_pixels"] = n
    return out


class DepthAccumulator:
    """Averages per-image depth metrics; images without valid pixels are listed apart."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop: Crop = None):
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = crop
        self.per_image: dict[str, dict[str, float]] = {}
        self.invalid_images: list[str] = []

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Scores one image; errors name the image."""
        if name in self.per_image or name in self.invalid_images:
            raise DepthEvalError(f"image {name!r} was added twice")
        try:
            m = depth_metrics(pred, gt, self.min_depth, self.max_depth, self.crop)
        except DepthEvalError as e:
            raise DepthEvalError(f"image {name!r}: {e}") from None
        if m["valid_pixels"] == 0:
            self.invalid_images.append(name)
        else:
            self.per_image[name] = m
        return m

    @property
    def num_images(self) -> int:
        return len(self.per_image)

    def metrics(self) -> dict[str, float]:
        """Mean of each metric over images with at least one valid pixel."""
        if not self.per_image:
            return {}
        return {
            k: float(np.mean([m[k] for m in self.per_image.values()])) for k in METRIC_NAMES
        }

    def result(self) -> dict[str, Any]:
        """Metrics plus counts, JSON-ready."""
        return {
            "metrics": self.metrics(),
            "num_images": self.num_images,
            "num_images_without_valid_pixels": len(self.invalid_images),
            "images_without_valid_pixels": list(self.invalid_images),
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "crop": _crop_json(self.crop),
        }


def _crop_json(crop: Crop) -> Any:
    if isinstance(crop, CropSpec):
        return {"box": list(crop.box), "frame": list(crop.frame)}
    return list(crop) if isinstance(crop, tuple) else crop


# ----------------------------------------------------------------------------- files


def read_depth_file(path: str) -> np.ndarray:
    """Reads a depth map in metres: 16-bit PNG in millimetres or ``.npy`` in metres."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DepthEvalError(f"unreadable depth file {path}: {e}") from None
        if arr.dtype.kind not in "fiu":
            raise DepthEvalError(f"depth file {path} holds {arr.dtype}, not numbers")
        return _as_map_named(arr, path).astype(np.float64)
    if suffix == ".png":
        try:
            arr = read_image(path, cv2.IMREAD_UNCHANGED)
        except DataError as e:
            raise DepthEvalError(f"unreadable depth file: {e}") from None
        if arr.dtype != np.uint16:
            raise DepthEvalError(
                f"depth PNG {path} is {arr.dtype}; expected 16-bit PNG in millimetres"
            )
        return _as_map_named(arr, path).astype(np.float64) / 1000.0
    raise DepthEvalError(f"depth file {path}: unknown type (use .png in mm or .npy in m)")


def _as_map_named(arr: np.ndarray, path: str) -> np.ndarray:
    try:
        return _as_map(arr, "depth map")
    except DepthEvalError as e:
        raise DepthEvalError(f"{path}: {e}") from None


def _depth_files(directory: str, what: str) -> dict[str, str]:
    if not os.path.isdir(directory):
        raise DepthEvalError(f"{what} directory {directory} does not exist")
    files: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in DEPTH_FILE_SUFFIXES:
            continue
        if stem in files:
            raise DepthEvalError(
                f"{what} directory {directory} has two files for {stem!r}: "
                f"{os.path.basename(files[stem])} and {name}"
            )
        files[stem] = os.path.join(directory, name)
    if not files:
        raise DepthEvalError(f"{what} directory {directory} has no .png or .npy depth files")
    return files


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def match_depth_files(pred_dir: str, gt_dir: str) -> list[tuple[str, str, str]]:
    """(stem, pred_path, gt_path) for every ground-truth file; unmatched files are an error."""
    preds = _depth_files(pred_dir, "prediction")
    gts = _depth_files(gt_dir, "ground-truth")
    no_pred = sorted(set(gts) - set(preds))
    no_gt = sorted(set(preds) - set(gts))
    if no_pred or no_gt:
        lines = ["prediction and ground-truth files do not match (matched by name stem):"]
        if no_pred:
            lines.append(
                f"  {len(no_pred)} ground truths without a prediction: {_name_list(no_pred)}"
            )
        if no_gt:
            lines.append(
                f"  {len(no_gt)} predictions without a ground truth: {_name_list(no_gt)}"
            )
        raise DepthEvalError("\n".join(lines))
    return [(stem, preds[stem], gts[stem]) for stem in sorted(gts)]


def evaluate_pairs(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop: Crop = None,
) -> dict[str, Any]:
    """Scores (name, pred_metres, gt_metres) triples; returns :meth:`DepthAccumulator.result`."""
    acc = DepthAccumulator(min_depth, max_depth, crop)
    for name, pred, gt in pairs:
        acc.add(name, pred, gt)
    return acc.result()


def evaluate_files(
    pred_dir: str,
    gt_dir: str,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop: Crop = None,
) -> dict[str, Any]:
    """Files mode: scores every ground-truth file against the prediction with its stem."""
    matched = match_depth_files(pred_dir, gt_dir)
    pairs = ((s, read_depth_file(p), read_depth_file(g)) for s, p, g in matched)
    return evaluate_pairs(pairs, min_depth, max_depth, crop)


# ----------------------------------------------------------------------------- checkpoint


def evaluate_checkpoint(run_dir: str, data: str | None = None, split: str | None = None,
                        max_examples: int | None = None) -> dict[str, dict[str, float]]:
    """The run's declared depth evaluators of stage 2, through the runner API (the task is
    found by the name in the run's config); each writes an eval record."""
    from evals.evaluators import evaluate_run  # the models: only this mode needs them
    return evaluate_run(run_dir, "cli", stage="givt", kind="depth", source=data, split=split,
                        max_examples=max_examples)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (files mode or checkpoint mode)."""
    p = ArgumentParser(
        prog="python -m evals.depth",
        description="Depth metrics (RMSE, AbsRel, log10, delta1..3) from files or a run.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pred-dir", help="predictions: 16-bit PNG (mm) or .npy (m) per image")
    mode.add_argument("--ckpt", metavar="RUN_DIR", help="a run directory of the depth task")
    p.add_argument("--gt-dir", help="ground truth (files mode), same formats, same file stems")
    p.add_argument("--crop", choices=["none", "nyu", "eigen", "auto"], default=None,
                   help="files mode: evaluation crop of 480x640 frames: nyu = rows 54:480 "
                        "(big_vision), eigen = rows 45:471, both cols 41:601; auto = nyu on "
                        "480x640 frames only (default none); --ckpt: the run's config")
    p.add_argument("--min-depth", type=non_negative_float, default=None,
                   help="files mode (default 1e-3)")
    p.add_argument("--max-depth", type=positive_float, default=None, help="files mode (default 10)")
    p.add_argument("--data", default=None, help="data source for --ckpt (default: the run's)")
    p.add_argument("--split", default=None, help="--ckpt: default each evaluator's split")
    p.add_argument("--max-examples", type=positive_int, default=None)
    p.add_argument("--out", help="write the result as JSON here")
    add_verbose_argument(p)
    return p


def _format_result(result: dict[str, Any]) -> str:
    lines = [f"{k:>8s}  {v:.4f}" for k, v in result["metrics"].items()]
    lines.append(f"{'images':>8s}  {result['num_images']}")
    n_bad = result["num_images_without_valid_pixels"]
    if n_bad:
        lines.append(f"{n_bad} image(s) without valid ground-truth pixels (not averaged): "
                     + _name_list(result["images_without_valid_pixels"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a user error, on one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: _main(parser, args), args.verbose)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.ckpt:
        given = [f for f, v in (("--crop", args.crop), ("--min-depth", args.min_depth),
                                ("--max-depth", args.max_depth), ("--gt-dir", args.gt_dir))
                 if v is not None]
        if given:
            parser.error(f"{', '.join(given)}: files mode only (a run's config fixes them)")
        results = evaluate_checkpoint(args.ckpt, args.data, args.split, args.max_examples)
        for name, metrics in results.items():
            print(f"{name}:\n" + "\n".join(f"{k:>8s}  {v:.4f}" for k, v in metrics.items()))
        if args.out:
            write_json(args.out, results)
        return 0
    if not args.gt_dir:
        parser.error("--pred-dir needs --gt-dir")
    lo = 1e-3 if args.min_depth is None else args.min_depth
    hi = 10.0 if args.max_depth is None else args.max_depth
    if not lo < hi:
        parser.error("--min-depth must be below --max-depth")
    if args.split is not None or args.data is not None:
        parser.error("--data and --split go with --ckpt")
    result = evaluate_files(args.pred_dir, args.gt_dir, lo, hi,
                            None if args.crop in (None, "none") else args.crop)
    print(_format_result(result))
    if not result["metrics"]:
        raise DepthEvalError("no image has a valid ground-truth pixel")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
