"""Calibration and coverage of sampled dense predictions (evals/calibration.py) against
literal recomputations, and on synthetic samples whose calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from evals import calibration as C


def _ece_by_loops(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE written out: each pixel into the bin (b / B, (b + 1) / B] of its confidence."""
    members: dict[int, list[tuple[float, bool]]] = {}
    for p, y in zip(probs.reshape(-1, probs.shape[-1]), labels.reshape(-1), strict=True):
        conf = float(p.max())
        b = next(b for b in range(bins) if b / bins < conf <= (b + 1) / bins)
        members.setdefault(b, []).append((conf, int(np.argmax(p)) == int(y)))
    n = labels.size
    return sum(len(m) / n * abs(np.mean([r for _, r in m]) - np.mean([c for c, _ in m]))
               for m in members.values())


def test_ece_equals_the_definition_written_out():
    rng = np.random.default_rng(0)
    probs = C.softmax(rng.normal(0, 2, (2, 9, 7, 5)))
    labels = rng.integers(0, 5, (2, 9, 7))
    acc = C.CalibrationAccumulator(num_bins=15)
    acc.add(probs[0], labels[0])  # two images, accumulated
    acc.add(probs[1], labels[1])
    got = acc.result()
    assert got["ECE"] == pytest.approx(_ece_by_loops(probs, labels, 15), abs=1e-12)
    assert got["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == labels))
    valid = labels[0] != 0  # class 0 left out, as for void
    masked = C.CalibrationAccumulator()
    masked.add(probs[0], labels[0], valid)
    assert masked.result()["ECE"] == pytest.approx(
        _ece_by_loops(probs[0][valid], labels[0][valid], 15), abs=1e-12)


def test_labels_drawn_from_the_probabilities_are_calibrated():
    rng = np.random.default_rng(1)
    probs = C.softmax(rng.normal(0, 1.5, (200_000, 4)))
    labels = (rng.random((200_000, 1)) > np.cumsum(probs, -1)).sum(-1)
    calibrated = C.CalibrationAccumulator()
    calibrated.add(probs, labels)
    overconfident = C.CalibrationAccumulator()
    overconfident.add(C.softmax(3 * np.log(probs)), labels)
    assert calibrated.result()["ECE"] < 0.01 < overconfident.result()["ECE"]


def test_coverage_equals_per_pixel_quantiles_and_the_nominal_rate():
    rng = np.random.default_rng(2)
    draws, truth = rng.normal(size=(9, 6, 5)), rng.normal(size=(6, 5))
    valid = rng.random((6, 5)) > 0.2
    acc = C.CoverageAccumulator(levels=(0.5, 0.9))
    acc.add(draws, truth, valid)
    got = acc.result()
    for a in (0.5, 0.9):
        inside, widths = [], []
        for r, c in zip(*np.nonzero(valid), strict=True):
            lo = np.percentile(draws[:, r, c], 100 * (1 - a) / 2)
            hi = np.percentile(draws[:, r, c], 100 * (1 + a) / 2)
            inside.append(lo <= truth[r, c] <= hi)
            widths.append(hi - lo)
        assert got[f"coverage@{a:g}"] == pytest.approx(np.mean(inside))
        assert got[f"width@{a:g}"] == pytest.approx(np.mean(widths))
    assert got["std"] == pytest.approx(draws[:, valid].std(axis=0).mean())
    # samples and truth from one distribution cover it at about the nominal rate
    many = C.CoverageAccumulator(levels=(0.5, 0.9))
    many.add(rng.normal(size=(199, 100, 100)), rng.normal(size=(100, 100)),
             np.ones((100, 100), bool))
    res = many.result()
    assert abs(res["coverage@0.5"] - 0.5) < 0.02 and abs(res["coverage@0.9"] - 0.9) < 0.02


def test_entropy_and_pictures():
    uniform = np.full((2, 3, 4), 0.25)
    np.testing.assert_allclose(C.entropy_map(uniform), np.log(4))
    pic = C.heat_picture(np.array([[0.0, np.nan], [1.0, 0.5]]), (0.0, 1.0), (4, 4))
    assert pic.shape == (4, 4, 3) and pic.dtype == np.uint8
    assert (pic[:2, 2:] == 0).all() and pic[2:, :2].sum() > pic[:2, :2].sum()
