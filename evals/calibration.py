"""Uncertainty and calibration of dense predictions from several samples per image.

Pure NumPy, accumulated over a split one image at a time:

* :class:`CalibrationAccumulator`: the expected calibration error (ECE) of per-pixel
  class probabilities (the mean of the decoded softmax over the code samples): pixels are
  binned by their confidence (the top probability, ``num_bins`` equal bins on [0, 1]);
  ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
* :class:`CoverageAccumulator`: for a continuous output (depth), how often the truth lies
  in the central interval of the samples at each nominal level (the (1 - a) / 2 and
  (1 + a) / 2 empirical quantiles of the draws, per pixel), and the intervals' mean width.
  Well calibrated samples cover the truth at the nominal rate.
* :func:`entropy_map`, :func:`heat_picture`: the per-pixel maps written beside the
  predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) [H, W] of per-pixel class probabilities [H, W, C]."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class CalibrationAccumulator:
    """ECE and accuracy of per-pixel class probabilities against the true classes."""

    def __init__(self, num_bins: int = 15):
        self.num_bins = int(num_bins)
        self.count = np.zeros(self.num_bins)
        self.correct = np.zeros(self.num_bins)
        self.confidence = np.zeros(self.num_bins)

    def add(self, probs: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None
            ) -> None:
        """``probs`` [..., C], ``labels`` int [...], ``valid`` bool [...] (pixels scored)."""
        probs = np.asarray(probs, np.float64).reshape(-1, np.shape(probs)[-1])
        labels = np.asarray(labels).reshape(-1)
        if valid is not None:
            keep = np.asarray(valid, bool).reshape(-1)
            probs, labels = probs[keep], labels[keep]
        conf = probs.max(axis=1)
        right = probs.argmax(axis=1) == labels
        # bin b holds conf in (b / B, (b + 1) / B]; conf = 0 cannot occur (C >= 1)
        bins = np.clip(np.ceil(conf * self.num_bins).astype(int) - 1, 0, self.num_bins - 1)
        self.count += np.bincount(bins, minlength=self.num_bins)
        self.correct += np.bincount(bins, right.astype(float), minlength=self.num_bins)
        self.confidence += np.bincount(bins, conf, minlength=self.num_bins)

    def result(self) -> dict[str, float]:
        n = self.count.sum()
        if n == 0:
            return {}
        used = self.count > 0
        gap = np.abs(self.correct[used] - self.confidence[used])  # n_b |acc_b - conf_b|
        return {"ECE": float(gap.sum() / n), "accuracy": float(self.correct.sum() / n),
                "confidence": float(self.confidence.sum() / n)}


class CoverageAccumulator:
    """Coverage of the truth by the samples' central intervals at nominal ``levels``."""

    def __init__(self, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)):
        self.levels = tuple(float(a) for a in levels)
        self.inside = np.zeros(len(self.levels))
        self.width = np.zeros(len(self.levels))
        self.pixels = 0
        self.spread = 0.0

    def add(self, draws: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        """``draws`` [K, H, W] samples of the output, ``truth`` [H, W], ``valid`` [H, W]."""
        draws = np.asarray(draws, np.float64)
        keep = np.asarray(valid, bool) & np.all(np.isfinite(draws), axis=0)
        if not keep.any():
            return
        d, t = draws[:, keep], np.asarray(truth, np.float64)[keep]
        for i, a in enumerate(self.levels):
            lo, hi = np.quantile(d, [(1 - a) / 2, (1 + a) / 2], axis=0)
            self.inside[i] += np.count_nonzero((t >= lo) & (t <= hi))
            self.width[i] += np.sum(hi - lo)
        self.spread += float(np.sum(d.std(axis=0)))
        self.pixels += int(keep.sum())

    def result(self) -> dict[str, float]:
        if not self.pixels:
            return {}
        out = {"std": self.spread / self.pixels}
        for a, inside, width in zip(self.levels, self.inside, self.width, strict=True):
            out[f"coverage@{a:g}"] = float(inside / self.pixels)
            out[f"width@{a:g}"] = float(width / self.pixels)
        return out


def heat_picture(values: np.ndarray, scale: tuple[float, float], size: tuple[int, int]
                 ) -> np.ndarray:
    """A map [h, w] as an RGB uint8 picture [H, W, 3] of ``size`` (inferno over the fixed
    ``scale``, so pictures of one run compare; NaN black), nearest-neighbour enlarged."""
    lo, hi = scale
    v = np.asarray(values, np.float64)
    g = np.clip((np.nan_to_num(v, nan=lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = cv2.applyColorMap(np.round(g * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    rgb = np.where(np.isfinite(v)[..., None], rgb, 0).astype(np.uint8)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
