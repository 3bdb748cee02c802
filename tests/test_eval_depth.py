"""Depth metrics against an independent, explicit computation (the published NYU
evaluators' definitions: strict min < gt < max mask, no clipping, per-image means)."""

from __future__ import annotations

import json
import math

import cv2
import jax
import numpy as np
import pytest

from evals import depth as D
from uvim_givt.data.images import resize_nearest


def _reference_metrics(pred, gt, lo=1e-3, hi=10.0):
    """Pixel loops with the textbook formulas (small images only); nothing clipped."""
    h, w = gt.shape
    ph, pw = pred.shape
    sq = rel = lg = 0.0
    good = [0, 0, 0]
    n = 0
    for i in range(h):
        for j in range(w):
            g = float(gt[i, j])
            if not (g > lo and g < hi):
                continue
            # nearest source pixel, half-pixel centres
            si = min(int(math.floor((i + 0.5) * ph / h)), ph - 1)
            sj = min(int(math.floor((j + 0.5) * pw / w)), pw - 1)
            p = float(pred[si, sj])
            n += 1
            sq += (p - g) ** 2
            rel += abs(p - g) / g
            lg += abs(math.log10(p) - math.log10(g))
            r = max(p / g, g / p)
            for k in range(3):
                good[k] += r < 1.25 ** (k + 1)
    if n == 0:
        return None
    return {
        "RMSE": math.sqrt(sq / n), "AbsRel": rel / n, "log10": lg / n,
        "delta1": good[0] / n, "delta2": good[1] / n, "delta3": good[2] / n,
    }


def _vectorised_reference(pred, gt, lo=1e-3, hi=10.0):
    """Same formulas, for full-size frames (pred already at gt size)."""
    mask = np.logical_and(gt > lo, gt < hi)
    g, p = gt[mask], pred[mask]
    thr = np.maximum(g / p, p / g)
    return {
        "RMSE": np.sqrt(((g - p) ** 2).sum() / g.size),
        "AbsRel": (np.abs(g - p) / g).sum() / g.size,
        "log10": np.abs(np.log10(g) - np.log10(p)).sum() / g.size,
        **{f"delta{k}": (thr < 1.25**k).sum() / g.size for k in (1, 2, 3)},
    }


def _assert_close(got, want, rtol=1e-9):
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rtol, abs=1e-12), k


def _random_depth(rng, shape, invalid_frac=0.1):
    d = rng.uniform(0.5, 9.0, size=shape)
    d[rng.random(shape) < invalid_frac] = 0.0
    return d


@pytest.mark.parametrize("pred_shape", [(12, 16), (5, 7), (30, 41)])
def test_metrics_match_pixel_loops_with_resize(pred_shape):
    rng = np.random.default_rng(0)
    gt = _random_depth(rng, (12, 16))
    gt[0, 0], gt[1, 1] = 12.0, np.nan  # beyond max_depth / NaN: not valid
    pred = rng.uniform(0.0005, 14.0, size=pred_shape)  # beyond [min, max]: not clipped
    got = D.depth_metrics(pred, gt)
    _assert_close(got, _reference_metrics(pred, gt))
    assert got["valid_pixels"] == int(np.sum((np.nan_to_num(gt) > 1e-3) & (gt < 10)))


def test_resize_nearest_matches_jax():
    rng = np.random.default_rng(1)
    for src, dst in [((4, 10), (10, 4)), ((240, 320), (480, 640)), ((7, 3), (3, 8))]:
        x = rng.random(src).astype(np.float32)
        want = np.asarray(jax.image.resize(x, dst, "nearest"))
        np.testing.assert_array_equal(resize_nearest(x, dst), want)


def test_nyu_crop():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1.0, 5.0, size=(480, 640))
    pred = gt * rng.uniform(0.8, 1.2, size=gt.shape)
    inside = np.zeros(gt.shape, bool)
    inside[54:480, 41:601] = True
    assert inside.sum() == 426 * 560
    pred[~inside] = 9.9  # huge errors outside the crop must not count
    got = D.depth_metrics(pred, gt, crop="nyu")
    _assert_close(got, _vectorised_reference(pred[54:480, 41:601], gt[54:480, 41:601]))
    assert got["valid_pixels"] == 426 * 560
    uncropped = D.depth_metrics(pred, gt)
    assert uncropped["RMSE"] > got["RMSE"]
    # auto crop: NYU crop only on 480x640 frames
    _assert_close(D.depth_metrics(pred, gt, crop="auto"), got)
    small = D.depth_metrics(pred[:100, :100], gt[:100, :100], crop="auto")
    _assert_close(small, _vectorised_reference(pred[:100, :100], gt[:100, :100]))
    with pytest.raises(D.DepthEvalError, match="480x640"):
        D.depth_metrics(pred[:100], gt[:100], crop="nyu")


def test_accumulator_averages_per_image_and_lists_invalid_images():
    rng = np.random.default_rng(3)
    acc = D.DepthAccumulator()
    refs = []
    for i in range(3):
        gt = _random_depth(rng, (9, 11))
        pred = rng.uniform(0.5, 9.0, size=(6, 8))
        acc.add(f"img{i}", pred, gt)
        refs.append(_reference_metrics(pred, gt))
    acc.add("empty", np.ones((9, 11)), np.zeros((9, 11)))  # no valid pixel at all
    acc.add("far", np.ones((9, 11)), np.full((9, 11), 20.0))
    res = acc.result()
    assert res["num_images"] == 3
    assert res["num_images_without_valid_pixels"] == 2
    assert res["images_without_valid_pixels"] == ["empty", "far"]
    for k in D.METRIC_NAMES:
        want = sum(r[k] for r in refs) / 3
        assert res["metrics"][k] == pytest.approx(want, rel=1e-9)
        assert np.isfinite(res["metrics"][k])


def test_nonfinite_prediction_names_the_image():
    acc = D.DepthAccumulator()
    pred = np.ones((4, 4))
    pred[1, 2] = np.nan
    with pytest.raises(D.DepthEvalError, match="bad_one"):
        acc.add("bad_one", pred, np.ones((4, 4)))
    pred[1, 2] = np.inf
    with pytest.raises(D.DepthEvalError, match="NaN/inf"):
        acc.add("bad_two", pred, np.ones((4, 4)))


def _write_png_mm(path, metres):
    assert cv2.imwrite(str(path), np.round(metres * 1000).astype(np.uint16))


def test_files_mode_png_mm_and_npy(tmp_path, capsys):
    rng = np.random.default_rng(4)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    per_image = []
    for i in range(4):
        gt = np.round(_random_depth(rng, (10, 13)) * 1000) / 1000  # mm-exact
        pred = np.round(rng.uniform(0.5, 9.0, size=(5, 6)) * 1000) / 1000
        if i % 2:  # gt as PNG in mm, prediction as npy in metres
            _write_png_mm(gt_dir / f"f{i}.png", gt)
            np.save(pred_dir / f"f{i}.npy", pred.astype(np.float32))
            pred = pred.astype(np.float32).astype(np.float64)
        else:  # and the other way round
            np.save(gt_dir / f"f{i}.npy", gt)
            _write_png_mm(pred_dir / f"f{i}.png", pred)
        per_image.append(_reference_metrics(pred, gt))
    (gt_dir / "notes.txt").write_text("ignored")
    out = tmp_path / "res" / "result.json"
    assert D.main(["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["num_images"] == 4
    for k in D.METRIC_NAMES:
        assert res["metrics"][k] == pytest.approx(np.mean([m[k] for m in per_image]), rel=1e-6)
    assert "RMSE" in capsys.readouterr().out


def test_files_mode_errors(tmp_path, capsys):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for stem in ("a", "b", "c"):
        np.save(gt_dir / f"{stem}.npy", np.ones((4, 4)))
    np.save(pred_dir / "a.npy", np.ones((4, 4)))
    np.save(pred_dir / "zzz.npy", np.ones((4, 4)))
    args = ["--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir)]
    assert D.main(args) == 2
    err = capsys.readouterr().err
    assert "2 ground truths without a prediction: b, c" in err
    assert "1 predictions without a ground truth: zzz" in err

    (pred_dir / "zzz.npy").unlink()
    np.save(pred_dir / "b.npy", np.ones((4, 4)))
    (pred_dir / "c.png").write_bytes(b"not a png")
    assert D.main(args) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "c.png" in err

    (pred_dir / "c.png").unlink()
    cv2.imwrite(str(pred_dir / "c.png"), np.ones((4, 4), np.uint8))
    assert D.main(args) == 2
    assert "16-bit" in capsys.readouterr().err

    with pytest.raises(D.DepthEvalError, match="does not exist"):
        D.evaluate_files(str(tmp_path / "nope"), str(gt_dir))


def test_cli_argument_parsing():
    p = D.build_parser()
    a = p.parse_args(["--ckpt", "runs/x", "--data", "nyu_depth_v2", "--max-examples", "5"])
    # --split: each declared evaluator's own unless given
    assert (a.ckpt, a.data, a.split, a.max_examples) == ("runs/x", "nyu_depth_v2", None, 5)
    a = p.parse_args(["--pred-dir", "p", "--gt-dir", "g", "--crop", "nyu", "--max-depth", "8"])
    assert (a.crop, a.max_depth, a.min_depth) == ("nyu", 8.0, None)  # None: 1e-3 in main
    # a run's config fixes the depth range and crop: files-mode flags are refused with --ckpt
    with pytest.raises(SystemExit):
        D.main(["--ckpt", "runs/x", "--crop", "nyu"])
    with pytest.raises(SystemExit):
        p.parse_args(["--ckpt", "r", "--pred-dir", "p"])
    with pytest.raises(SystemExit):
        p.parse_args([])


# ------------------------------------------------------------- published definitions
def test_mask_is_strict_on_both_sides():
    """Pixels count when min < gt < max: gt exactly at min or max is not scored."""
    lo, hi = 1e-3, 10.0
    gt = np.array([[lo, hi, np.nextafter(lo, 1.0), np.nextafter(hi, 0.0)],
                   [0.0, np.nan, np.inf, 5.0]])
    pred = np.array([[7.0, 7.0, 2.0, 4.0], [7.0, 7.0, 7.0, 5.5]])
    got = D.depth_metrics(pred, gt, lo, hi)
    assert got["valid_pixels"] == 3  # a mask with <= would count 5
    g = np.array([np.nextafter(lo, 1.0), np.nextafter(hi, 0.0), 5.0])
    p = np.array([2.0, 4.0, 5.5])
    assert got["RMSE"] == pytest.approx(np.sqrt(np.mean((p - g) ** 2)), rel=1e-12)
    assert got["AbsRel"] == pytest.approx(np.mean(np.abs(p - g) / g), rel=1e-12)


def test_predictions_are_not_clipped():
    """The published evaluators score the prediction as it is (a clip would give 1 m)."""
    gt = np.full((3, 3), 9.0)
    got = D.depth_metrics(np.full((3, 3), 12.0), gt)
    assert got["RMSE"] == pytest.approx(3.0)
    assert got["log10"] == pytest.approx(np.log10(12 / 9))


def test_non_positive_prediction_on_a_scored_pixel_is_an_error():
    gt = np.array([[0.0, 2.0], [3.0, 4.0]])
    pred = np.array([[0.0, 2.0], [3.0, 4.0]])
    assert D.depth_metrics(pred, gt)["RMSE"] == 0.0  # 0 where gt is invalid: not scored
    pred[1, 1] = 0.0
    with pytest.raises(D.DepthEvalError, match="1 values <= 0"):
        D.depth_metrics(pred, gt)


def test_delta_thresholds_are_strict():
    gt = np.full((1, 2), 1.0)
    pred = np.array([[1.25, 1.2]])  # ratio exactly 1.25 is not < 1.25
    assert D.depth_metrics(pred, gt)["delta1"] == pytest.approx(0.5)


# -------------------------------------------------------------------- scaled crops
def test_scale_crop_is_exact_on_nyu_frames_and_rounds_elsewhere():
    assert D.scale_crop(D.NYU_CROP, (480, 640), (480, 640)) == D.NYU_CROP
    assert D.NYU_CROP_SPEC.for_shape((60, 80)) == (7, 60, 5, 75)
    for h, w in [(60, 80), (120, 160), (6, 8), (481, 641), (240, 320), (37, 53)]:
        box = D.scale_crop(D.NYU_CROP, (480, 640), (h, w))
        # brute force: the nearest integer to edge * size / ref, halves rounded up
        want = tuple(int(math.floor(e * n / r + 0.5)) for e, n, r in
                     zip(D.NYU_CROP, (h, h, w, w), (480, 480, 640, 640), strict=True))
        assert box == want, (h, w)
    with pytest.raises(D.DepthEvalError, match="empty"):
        D.scale_crop((54, 55, 41, 601), (480, 640), (6, 8))


def test_crop_spec_scores_only_the_scaled_box():
    rng = np.random.default_rng(5)
    gt = rng.uniform(1.0, 5.0, size=(60, 80))
    pred = np.full(gt.shape, np.nan)  # nothing predicted outside the crop
    pred[7:60, 5:75] = gt[7:60, 5:75] * 1.1
    got = D.depth_metrics(pred, gt, crop=D.NYU_CROP_SPEC)
    assert got["valid_pixels"] == 53 * 70
    _assert_close(got, _vectorised_reference(pred[7:60, 5:75], gt[7:60, 5:75]))
    pred[7, 5] = np.nan  # inside the crop: an error
    with pytest.raises(D.DepthEvalError, match="NaN/inf values inside the crop"):
        D.depth_metrics(pred, gt, crop=D.NYU_CROP_SPEC)
    acc = D.DepthAccumulator(crop=D.NYU_CROP_SPEC)
    assert acc.result()["crop"] == {"box": [54, 480, 41, 601], "frame": [480, 640]}


def test_eigen_crop():
    rng = np.random.default_rng(6)
    gt = rng.uniform(1.0, 5.0, size=(480, 640))
    pred = gt * rng.uniform(0.8, 1.2, size=gt.shape)
    got = D.depth_metrics(pred, gt, crop="eigen")
    _assert_close(got, _vectorised_reference(pred[45:471, 41:601], gt[45:471, 41:601]))
    assert got["RMSE"] != D.depth_metrics(pred, gt, crop="nyu")["RMSE"]
