"""Command line: FID, Inception Score and class consistency of image files.

::

    python -m evals.generation --samples S.npz|DIR --reference R.npz|DIR|STATS.npz \\
        --extractor digits|fid_inception:PATH|keras_inception:PATH [--out result.json]
        [--save-stats STATS.npz]

Scores: FID, Inception Score, improved precision and recall (k = 3), KID and, with
labels, class consistency. A statistics file (the ADM evaluator's layout: ``mu``,
``sigma`` of the extractor's pool features) serves as the FID reference of a dataset
computed once; precision, recall and KID need the reference images themselves.

An ``.npz`` holds ``images`` (uint8 [N, H, W, 3] or [N, H, W]) and optionally
``labels`` (the requested class of each sample: enables class consistency, for
extractors whose classes are the dataset's); a directory holds PNG/JPEG files of
one size (optionally with ``labels.json`` mapping file stem -> class).

The extractors are :mod:`evals.features`' (built by :func:`evals.features.get_extractor`),
the metrics :mod:`evals.generation_metrics`'; this module reads the files and prints.
Nothing is ever downloaded. Every result names the extractor that made it
(``extractor``: ``fid_inception`` | ``keras_inception`` | ``digits``) and says
whether its FID can be set beside published numbers (``fid_comparable_to_published``;
true for ``fid_inception`` only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from evals.features import GenerationEvalError, check_images, get_extractor
from evals.features.digits_classifier import CACHE_ENV
from evals.generation_metrics import (
    STATS_KEYS,
    evaluate_generation,
    load_reference_stats,
    save_reference_stats,
)
from uvim_givt.errors import (
    ArgumentParser,
    DataError,
    add_verbose_argument,
    positive_int,
    run_cli,
)
from uvim_givt.rundir import write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_images(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8 [N, H, W, 3]) and optional labels from an ``.npz`` or a directory."""
    if os.path.isdir(path):
        return _load_image_dir(path)
    if not os.path.isfile(path):
        raise GenerationEvalError(f"{path} does not exist (expected an .npz file or a directory)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise GenerationEvalError(f"{path} has no 'images' array (has {z.files})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError) as e:
        if isinstance(e, GenerationEvalError):
            raise
        raise GenerationEvalError(f"unreadable image file {path}: {e}") from None
    if images.dtype != np.uint8:
        if images.dtype.kind == "f" and images.size and images.min() >= 0 and images.max() <= 1:
            images = np.round(images * 255).astype(np.uint8)  # floats in [0, 1]
        else:
            raise GenerationEvalError(
                f"{path}: images are {images.dtype}; expected uint8 0..255 (or floats in [0, 1])"
            )
    try:
        images = check_images(images)
    except GenerationEvalError as e:
        raise GenerationEvalError(f"{path}: {e}") from None
    if labels is not None and labels.reshape(-1).shape[0] != len(images):
        raise GenerationEvalError(f"{path}: {len(labels)} labels for {len(images)} images")
    return images, (None if labels is None else labels.reshape(-1).astype(np.int64))


def _load_image_dir(directory: str) -> tuple[np.ndarray, np.ndarray | None]:
    from uvim_givt.data.images import read_image

    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise GenerationEvalError(f"directory {directory} has no PNG/JPEG images")
    images = []
    for name in names:
        p = os.path.join(directory, name)
        try:
            img = read_image(p)
        except DataError as e:
            raise GenerationEvalError(str(e)) from None
        if images and img.shape != images[0].shape:
            raise GenerationEvalError(
                f"image {p} is {img.shape[1]}x{img.shape[0]}, the others "
                f"{images[0].shape[1]}x{images[0].shape[0]}; all images must have one size"
            )
        images.append(img[..., ::-1])  # BGR -> RGB
    labels = None
    labels_path = os.path.join(directory, "labels.json")
    if os.path.isfile(labels_path):
        try:
            with open(labels_path) as f:
                table = json.load(f)
            labels = np.array([int(table[os.path.splitext(n)[0]]) for n in names])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GenerationEvalError(
                f"{labels_path} must map every image's file stem to an int label: {e!r}"
            ) from None
    return np.stack(images).astype(np.uint8), labels


def _reference(path: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Reference images, or (mu, sigma) when ``path`` is a statistics .npz."""
    if path.endswith(".npz") and os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                is_stats = "images" not in z.files and set(STATS_KEYS) <= set(z.files)
        except (OSError, ValueError) as e:
            raise GenerationEvalError(f"{path}: not a readable .npz ({e})") from None
        if is_stats:
            return load_reference_stats(path)
    return load_images(path)[0]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = ArgumentParser(
        prog="python -m evals.generation",
        description="FID, Inception Score and class consistency of generated images.",
    )
    p.add_argument("--samples", required=True, help=".npz (images[, labels]) or image directory")
    p.add_argument("--reference", required=True,
                   help=".npz or image directory (real images), or a statistics .npz (ADM "
                        "layout: mu, sigma of the extractor's features; FID and IS only)")
    p.add_argument("--save-stats", metavar="OUT.npz", default=None,
                   help="also write the reference features' mu and sigma here (ADM layout), "
                        "to reuse as --reference")
    p.add_argument("--extractor", default="digits",
                   help="digits | fid_inception:PATH (pytorch-fid's pt_inception-2015-12-05"
                        "-6726825d.pth: FIDs comparable to published ones) | "
                        "keras_inception:PATH (Keras' InceptionV3 .h5: not comparable)")
    p.add_argument("--cache-dir", default=None, help=f"digits classifier cache (${CACHE_ENV})")
    p.add_argument("--is-splits", type=positive_int, default=10)
    p.add_argument("--out", help="write the result as JSON here")
    add_verbose_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(build_parser().parse_args, _main, argv)


def _main(args: argparse.Namespace) -> int:
    samples, labels = load_images(args.samples)
    reference = _reference(args.reference)
    extractor = get_extractor(args.extractor, cache=args.cache_dir)
    if args.save_stats:
        if isinstance(reference, tuple):
            raise GenerationEvalError(f"--save-stats: {args.reference} is already a "
                                      "statistics file")
        save_reference_stats(args.save_stats, extractor.features(reference))
        print(f"{'':>15s}  reference statistics written to {args.save_stats}")
    result = evaluate_generation(samples, reference, extractor, labels, args.is_splits)
    for k, v in result["metrics"].items():
        print(f"{k:>15s}  {v:.4f}")
    num_reference = result["num_reference"] or f"statistics {args.reference}"
    print(f"{'samples':>15s}  {result['num_samples']} (reference {num_reference}, "
          f"extractor {result['extractor']})")
    if not result["fid_comparable_to_published"]:
        print(f"{'':>15s}  note: FID by {result['extractor']}, not comparable to published FIDs"
              " (use --extractor fid_inception:PATH for those)")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
