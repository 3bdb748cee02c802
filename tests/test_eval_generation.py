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
