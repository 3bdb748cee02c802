"""FID / IS / class consistency against closed forms, the digits classifier, the CLI."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest
import scipy.linalg

from evals import features as X
from evals import generation as G
from evals import generation_metrics as M
from evals.features import digits_classifier as D
from evals.features import keras_inception as K


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _closed_form_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(np.real(covmean)))


@pytest.mark.parametrize("d", [1, 5, 32])
def test_frechet_distance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    want = _closed_form_fd(mu1, s1, mu2, s2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-7)
    # symmetric in its two arguments
    assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-7)


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    for d, rank in [(64, None), (64, 10)]:  # full-rank and singular covariance
        mu, s = rng.normal(size=d), _random_spd(rng, d, rank)
        assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-6
    feats = rng.normal(size=(50, 128))  # fewer samples than dimensions
    assert abs(M.fid_from_features(feats, feats)) < 1e-6


def test_fid_of_large_samples_approaches_analytic_value():
    rng = np.random.default_rng(1)
    d, n = 6, 40_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    want = _closed_form_fd(mu1, s1, mu2, s2)
    assert M.fid_from_features(a, b) == pytest.approx(want, rel=0.03, abs=0.01)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(M.GenerationEvalError, match="shapes"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(M.GenerationEvalError, match="NaN"):
        M.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
    with pytest.raises(M.GenerationEvalError, match="N >= 2"):
        M.fid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))


def test_inception_score_extremes():
    c, n = 10, 1000
    uniform = np.full((n, c), 1.0 / c)
    assert M.inception_score(uniform)[0] == pytest.approx(1.0)
    same_class = np.eye(c)[np.zeros(n, int)]
    assert M.inception_score(same_class)[0] == pytest.approx(1.0)
    spread = np.eye(c)[np.arange(n) % c]  # each split holds every class equally often
    mean, std = M.inception_score(spread, splits=10)
    assert mean == pytest.approx(c) and std == pytest.approx(0.0, abs=1e-9)
    # against a direct formula on random probs (one split)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(c) * 0.3, size=200)
    py = p.mean(0)
    kl = [sum(pi[k] * np.log(pi[k] / py[k]) for k in range(c) if pi[k] > 0) for pi in p]
    assert M.inception_score(p, splits=1)[0] == pytest.approx(np.exp(np.mean(kl)), rel=1e-9)
    with pytest.raises(M.GenerationEvalError):
        M.inception_score(p[:5], splits=10)
    with pytest.raises(M.GenerationEvalError):
        M.inception_score(p * 2)


def test_class_consistency_accuracy():
    assert M.class_consistency_accuracy([1, 2, 3, 4], np.array([1, 2, 0, 4])) == 0.75
    with pytest.raises(M.GenerationEvalError):
        M.class_consistency_accuracy([1, 2], [1])


def test_load_digits_32():
    tr_x, tr_y = D.load_digits_32("train")
    te_x, te_y = D.load_digits_32("test")
    assert tr_x.shape[1:] == (32, 32, 3) and tr_x.dtype == np.uint8
    assert len(tr_x) + len(te_x) == 1797 and len(te_x) == 359
    assert set(np.unique(te_y)) == set(range(10))
    # pixel replication of the 8x8 originals, gray copied to RGB, 16 -> 255
    assert (tr_x[:, ::4, ::4] == tr_x[:, 3::4, 3::4]).all()
    assert (tr_x[..., 0] == tr_x[..., 2]).all() and tr_x.max() == 255
    all_x, _ = D.load_digits_32("all")
    rows = {x.tobytes() for x in all_x}
    assert len(rows) >= 1780  # the splits are disjoint up to duplicate digits
    assert not {x.tobytes() for x in te_x[:50]} <= {x.tobytes() for x in tr_x}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    t0 = time.time()
    clf = D.DigitsClassifier(cache=cache)
    return clf, cache, time.time() - t0


def test_digits_classifier_trains_caches_and_reloads(digits):
    clf, cache, seconds = digits
    assert seconds < 120  # ~10-20 s on 2 idle CPU cores; generous for busy machines
    x, y = D.load_digits_32("test")
    acc = clf.accuracy(x, y)
    assert acc >= 0.95
    feats, probs = clf.features_and_probs(x)
    assert feats.shape == (len(x), 128) and probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert os.path.isfile(os.path.join(cache, D.DIGITS_CACHE_NAME))
    t0 = time.time()
    again = D.DigitsClassifier(cache=cache, train_if_missing=False)
    assert time.time() - t0 < 10
    np.testing.assert_allclose(again.probs(x[:20]), probs[:20], atol=1e-6)
    assert again.meta["test_accuracy"] == pytest.approx(acc)
    # other sizes and grayscale are accepted
    assert clf.features(cv2.resize(x[0], (64, 64))[None]).shape == (1, 128)
    assert clf.probs(x[:3, ..., 0]).shape == (3, 10)
    assert isinstance(clf, X.FeatureExtractor)


def test_digits_cache_env_var_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "c"))
    assert D.cache_dir() == str(tmp_path / "c")
    with pytest.raises(X.GenerationEvalError, match="no trained digits classifier"):
        D.DigitsClassifier(train_if_missing=False)


def test_cli_npz_and_directory(digits, tmp_path, capsys):
    clf, cache, _ = digits
    x, y = D.load_digits_32("test")
    ref_x, _ = D.load_digits_32("train")
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=x[:200], labels=y[:200])
    np.savez(tmp_path / "ref.npz", images=ref_x)
    out = tmp_path / "out" / "gen.json"
    args = ["--samples", str(samples), "--reference", str(tmp_path / "ref.npz"),
            "--extractor", "digits", "--cache-dir", cache, "--out", str(out)]
    assert G.main(args) == 0
    res = json.loads(out.read_text())["metrics"]
    assert res["class_accuracy"] >= 0.95
    assert 7.0 < res["IS"] <= 10.0
    feats = clf.features(x[:200])
    assert res["FID"] == pytest.approx(M.fid_from_features(feats, clf.features(ref_x)), rel=1e-6)
    assert "FID" in capsys.readouterr().out
    ref_feats = clf.features(ref_x)
    pr = M.precision_recall(ref_feats, feats)
    assert (res["precision"], res["recall"]) == pytest.approx((pr["precision"], pr["recall"]))
    assert res["KID"] == pytest.approx(M.kernel_inception_distance(ref_feats, feats)[0])

    # the reference's statistics saved once (ADM layout), then the FID reference
    stats = tmp_path / "ref_stats.npz"
    assert G.main(args[:-2] + ["--save-stats", str(stats)]) == 0
    with np.load(stats) as z:
        assert sorted(z.files) == ["mu", "sigma"]
        np.testing.assert_allclose(z["mu"], ref_feats.mean(0), rtol=1e-5, atol=1e-6)
    args_stats = list(args)
    args_stats[3], args_stats[-1] = str(stats), str(tmp_path / "stats.json")
    assert G.main(args_stats) == 0
    by_stats = json.loads((tmp_path / "stats.json").read_text())
    assert by_stats["metrics"]["FID"] == pytest.approx(res["FID"], rel=1e-6)
    assert "KID" not in by_stats["metrics"] and by_stats["num_reference"] is None
    capsys.readouterr()

    # an image directory with labels.json; wrong labels give low consistency
    d = tmp_path / "pngs"
    d.mkdir()
    for i in range(30):
        cv2.imwrite(str(d / f"s{i:02d}.png"), x[i][..., ::-1])
    (d / "labels.json").write_text(json.dumps({f"s{i:02d}": int(y[i] + 1) % 10
                                               for i in range(30)}))
    args[1], args[-1] = str(d), str(tmp_path / "dir.json")
    assert G.main(args) == 0
    res = json.loads((tmp_path / "dir.json").read_text())
    assert res["num_samples"] == 30 and res["metrics"]["class_accuracy"] < 0.2


def _brute_precision_recall(real, fake, k):
    """Kynkaanniemi et al.'s definition, literally: scipy distances, a sort per point."""
    from scipy.spatial.distance import cdist

    def radii(x):
        return np.sort(cdist(x, x), axis=1)[:, k]  # column 0: the point itself
    inside = lambda pts, centres: (cdist(pts, centres) <= radii(centres)[None]).any(1)
    return inside(fake, real).mean(), inside(real, fake).mean()


def test_precision_recall_equals_a_brute_force_computation():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    for fake in (rng.normal(size=(250, 16)), rng.normal(0.7, 0.5, size=(250, 16))):
        got = M.precision_recall(real, fake, k=3)
        want = _brute_precision_recall(real, fake, 3)
        assert (got["precision"], got["recall"]) == pytest.approx(want, abs=1e-12)
    shifted = M.precision_recall(real, real + 20.0)
    assert shifted == {"precision": 0.0, "recall": 0.0}
    assert M.precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    with pytest.raises(M.GenerationEvalError, match="feature sizes differ"):
        M.precision_recall(real, real[:, :8])


def test_kid_equals_the_unbiased_mmd_by_loops():
    """KID: the unbiased squared MMD with k(x, y) = (x.y / D + 1)^3 (Binkowski et al.),
    recomputed pair by pair on one subset covering both sets."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 8)), rng.normal(0.3, 1.0, size=(40, 8))
    kern = lambda a, b: (a @ b / 8 + 1.0) ** 3
    m = 40
    xx = sum(kern(fake[i], fake[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(kern(real[i], real[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(kern(fake[i], real[j]) for i in range(m) for j in range(m))
    want = (xx + yy) / (m * (m - 1)) - 2 * xy / m ** 2
    mean, std = M.kernel_inception_distance(real, fake, num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(want, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    farther = M.kernel_inception_distance(real, fake + 1.0, num_subsets=3)[0]
    assert farther > mean > 0


def test_reference_stats_files_are_checked(tmp_path):
    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(M.GenerationEvalError, match="do not fit"):
        M.load_reference_stats(str(tmp_path / "s.npz"))
    np.savez(tmp_path / "t.npz", mu=np.zeros(3))
    with pytest.raises(M.GenerationEvalError, match="no 'sigma' array"):
        M.load_reference_stats(str(tmp_path / "t.npz"))


def test_cli_errors(tmp_path, capsys):
    assert G.main(["--samples", str(tmp_path / "none.npz"), "--reference", "x"]) == 2
    assert "none.npz does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8))
    assert G.main(["--samples", str(tmp_path / "bad.npz"), "--reference", "x"]) == 2
    assert "no 'images' array" in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    for spec in ("inception:" + str(tmp_path / "w.h5"), "vgg"):
        assert G.main(["--samples", str(tmp_path / "ok.npz"),
                       "--reference", str(tmp_path / "ok.npz"), "--extractor", spec]) == 2
        err = capsys.readouterr().err
        assert ("Nothing is downloaded" in err) if spec != "vgg" else ("unknown extractor" in err)


def test_inception_missing_weights_error(tmp_path):
    with pytest.raises(X.GenerationEvalError) as e:
        K.InceptionV3Extractor(str(tmp_path / "nope.h5"))
    msg = str(e.value)
    assert "nope.h5" in msg and "Nothing is downloaded" in msg
    assert K.INCEPTION_WEIGHTS_FILE in msg


def test_inception_random_weights_tiny_batch():
    """Builds Keras InceptionV3 without weights (~15 s on 2 CPU cores)."""
    ext = K.InceptionV3Extractor(None, batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8)
    feats, probs = ext.features_and_probs(images)
    assert feats.shape == (2, 2048) and probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert isinstance(ext, X.FeatureExtractor)


def test_inception_score_of_class_sorted_samples_is_not_split_by_class():
    """score_images gets samples grouped by class (np.repeat of the labels); perfect,
    evenly spread samples of 10 classes must score IS near 10, not the ~1 of splits that
    each hold one class."""
    from evals.generation_loop import score_images

    class OneHot:  # an "extractor" whose class probabilities are the true labels
        def features_and_probs(self, images):
            return images.reshape(len(images), -1)[:, :4], self.probs

    labels = np.repeat(np.arange(10), 20)
    probs = np.full((200, 10), 1e-6)
    probs[np.arange(200), labels] = 1.0
    probs /= probs.sum(1, keepdims=True)
    ext = OneHot()
    ext.probs = probs
    images = np.random.default_rng(0).integers(0, 255, (200, 8, 8, 3)).astype(np.uint8)
    ref = np.random.default_rng(1).normal(size=(50, 4))
    assert M.inception_score(probs, splits=10)[0] < 1.01  # the in-order splits' trap
    out = score_images(ext, images, ref, labels, 10)
    # 20 random-order samples per split: exp(entropy of each split's class histogram),
    # below 10 by sampling alone
    assert 6.0 < out["IS"] <= 10.0
    assert out["class_accuracy"] == 1.0
