"""Depth task: depth binning, the NYU HDF5 folder reader, a tiny two-stage run, predict,
the shared evaluator's checkpoint mode, and the published parameter trees."""

import json
import os
from pathlib import Path

import cv2
import h5py
import jax
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import softmax

from evals import depth as depth_eval
from tasks import depth as D
from uvim_givt import schema
from uvim_givt.config import load_config
from uvim_givt.data import catalog
from uvim_givt.errors import DataError, UserError
from uvim_givt.models import builders
from uvim_givt.sampling.maskgit import sample_maskgit
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training.runner import load_run

TREES = Path(__file__).parent / "data" / "big_vision_param_trees.json"
LO, HI, N = 0.001, 10.0, 256
W = (HI - LO) / N


# ------------------------------------------------------------------------ training views
def _frame(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (60, 80, 3), dtype=np.uint8),
            "depth": rng.uniform(0.5, 9.5, (60, 80)).astype(np.float32)}


def _views(area_min, seeds):
    import tensorflow as tf
    sets = [] if area_min is None else [f"data.crop_area_min={area_min}"]
    cfg = load_config("configs/depth.py", sets)  # tiny preset
    ex = _frame()
    plain = D.TASK.preprocess(cfg, ex, "eval")
    train = [D.TASK.preprocess(cfg, ex, "train", seed=tf.constant([s, 7], tf.int64))
             for s in seeds]
    as_np = lambda v: (np.asarray(v["image"]), np.asarray(v["labels"]))  # noqa: E731
    return as_np(plain), [as_np(v) for v in train]


def _kind(view, plain):
    """"plain", "mirror" (of the whole resized frame) or "other" (a zoomed crop)."""
    (pi, pl), (vi, vl) = plain, view
    if np.allclose(vi, pi, atol=1e-5) and np.array_equal(vl, pl):
        return "plain"
    if np.allclose(vi, pi[:, ::-1], atol=1e-5) and np.array_equal(vl, pl[:, ::-1]):
        return "mirror"
    return "other"


def test_no_crop_training_views_keep_the_whole_frame():
    """The tiny preset (no crop): each training view is the whole frame at the evaluation's
    scale, mirrored or not, so depths stay consistent with apparent sizes."""
    plain, views = _views(None, range(12))
    kinds = [_kind(v, plain) for v in views]
    assert set(kinds) == {"plain", "mirror"}, kinds


def test_crops_zoom_the_training_views():
    plain, views = _views(0.5, range(12))
    assert "other" in [_kind(v, plain) for v in views]


@pytest.mark.parametrize("area_min", [0.0, 1.5])
def test_crop_area_min_out_of_range_is_a_clear_error(area_min):
    """Refused by its schema rule, which every command checks before anything runs."""
    cfg = load_config("configs/depth.py", [f"data.crop_area_min={area_min}"])
    with pytest.raises(UserError, match=rf"data.crop_area_min={area_min}"):
        schema.check(cfg, schema.rules_of(D.TASK))


# ----------------------------------------------------------------------------- binning
def test_binning_round_trip_within_half_a_bin():
    rs = np.random.RandomState(0)
    d = np.concatenate([rs.uniform(LO + W, HI, 20_000), [LO + W, HI, 0.5, 9.99]])
    bins = D.depth_to_bins(d.astype(np.float32), LO, HI, N).numpy()
    assert bins.min() >= 1 and bins.max() <= N - 1
    back = D.bin_centres(LO, HI, N)[bins]
    assert np.abs(back - d).max() <= W / 2 + 1e-5
    # the published formula, for every depth at or above min + one bin
    ref = np.clip(np.floor((d.astype(np.float32) - LO) / (HI - LO) * N), 0, N - 1)
    np.testing.assert_array_equal(bins, ref)


def test_invalid_depths_map_to_zero():
    d = np.array([0.0, -1.0, LO, np.nan, np.inf, -np.inf, HI + 0.01, 1e4], np.float32)
    assert D.depth_to_bins(d, LO, HI, N).numpy().tolist() == [0] * len(d)
    # valid depths closer than one bin go to class 1 (the published recipe drops them)
    near = D.depth_to_bins(np.float32([LO + 1e-3, LO + W / 2]), LO, HI, N)
    assert near.numpy().tolist() == [1, 1]


def test_bins_to_depth_argmax_and_expectation_ignore_class_zero():
    centres = D.bin_centres(LO, HI, N)
    logits = np.full((2, N), -50.0, np.float32)
    logits[:, 0] = 100.0  # class 0 (invalid) is never decoded
    logits[0, 10] = 5.0
    logits[1, [20, 30]] = 5.0
    arg = D.bins_to_depth(logits, LO, HI, "argmax")
    exp = D.bins_to_depth(logits, LO, HI, "expectation")
    assert arg[0] == pytest.approx(centres[10]) and arg[1] == pytest.approx(centres[20])
    assert exp[0] == pytest.approx(centres[10], abs=1e-4)
    assert exp[1] == pytest.approx((centres[20] + centres[30]) / 2, abs=1e-4)
    cfg = load_config("configs/depth.py", ["data.decode='median'"])
    with pytest.raises(UserError, match="data.decode='median'"):  # the config's rule
        schema.check(cfg, schema.rules_of(D.TASK))


# ----------------------------------------------------------------------- the HDF5 reader
def _write_frame(path, rgb=None, depth=None, keys=("rgb", "depth")):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        if "rgb" in keys:
            f["rgb"] = rgb
        if "depth" in keys:
            f["depth"] = depth


def _nyu_folder(root, n=3, split_dir="val"):
    rs = np.random.RandomState(1)
    frames = []
    for k in range(n):
        rgb = rs.randint(0, 255, (3, 6, 8)).astype(np.uint8)
        depth = rs.uniform(0.5, 9.5, (6, 8)).astype(np.float32)
        scene = "kitchen_0001" if k < 2 else "office_0002"
        path = os.path.join(root, split_dir, scene, f"{k:05d}.h5")
        _write_frame(path, rgb, depth)
        frames.append((f"{scene}_{k:05d}", rgb, depth))
    return frames


def test_folder_reader_reads_nyu_frames(tmp_path):
    frames = _nyu_folder(str(tmp_path))
    _nyu_folder(str(tmp_path), n=1, split_dir="train")
    got = list(D.read_nyu_folder(str(tmp_path), "validation"))
    assert [g["name"] for g in got] == [f[0] for f in frames]
    for g, (_, rgb, depth) in zip(got, frames, strict=True):
        np.testing.assert_array_equal(g["image"], rgb.transpose(1, 2, 0))
        assert g["depth"].dtype == np.float16  # as TFDS's nyu_depth_v2 stores it
        np.testing.assert_array_equal(g["depth"], depth.astype(np.float16))
    # the same through the task's tf.data source
    cfg = load_config("configs/depth.py")
    ds = catalog.load(D.TASK.readers, cfg, f"folder:{tmp_path}", "validation")
    ex = list(ds.as_numpy_iterator())
    assert [e["name"].decode() for e in ex] == [f[0] for f in frames]
    np.testing.assert_array_equal(ex[2]["image"], frames[2][1].transpose(1, 2, 0))
    assert len(list(D.read_nyu_folder(str(tmp_path), "train"))) == 1


@pytest.mark.parametrize("problem,words", [
    ("no_depth", "no 'depth' dataset"),
    ("no_rgb", "no 'rgb' dataset"),
    ("nan", "2 NaN/inf depth values"),
    ("garbage", "unreadable HDF5 file"),
])
def test_folder_reader_bad_frames(tmp_path, problem, words):
    _nyu_folder(str(tmp_path))
    bad = str(tmp_path / "val" / "zzz" / "bad.h5")
    rgb = np.zeros((3, 6, 8), np.uint8)
    depth = np.ones((6, 8), np.float32)
    if problem == "no_depth":
        _write_frame(bad, rgb, depth, keys=("rgb",))
    elif problem == "no_rgb":
        _write_frame(bad, rgb, depth, keys=("depth",))
    elif problem == "nan":
        depth[0, :2] = np.nan
        _write_frame(bad, rgb, depth)
    else:
        os.makedirs(os.path.dirname(bad))
        open(bad, "wb").write(b"not an hdf5 file")
    with pytest.raises(DataError, match=f"{bad}: .*{words}"):
        list(D.read_nyu_folder(str(tmp_path), "validation"))
    good, skipped = D.scan_nyu_folder(str(tmp_path), "validation", skip_bad=True)
    assert len(good) == 3 and len(skipped) == 1 and bad in skipped[0]


def test_skip_bad_counts_and_warns(tmp_path, capsys):
    _nyu_folder(str(tmp_path))
    _write_frame(str(tmp_path / "val" / "a" / "x.h5"), np.zeros((3, 6, 8), np.uint8),
                 np.ones((6, 8)), keys=("rgb",))
    nan = np.ones((6, 8))
    nan[1, 1] = np.nan
    _write_frame(str(tmp_path / "val" / "a" / "y.h5"), np.zeros((3, 6, 8), np.uint8), nan)
    assert len(list(D.read_nyu_folder(str(tmp_path), "validation", skip_bad=True))) == 3
    assert "skipped 2 bad frame(s) of 5" in capsys.readouterr().err


# -------------------------------------------------------------------- end to end (tiny)
def _load(run_dir):
    run = load_run(run_dir, D.TASK)
    return run.cfg, run.vae_params, run.givt_params


def _tiny(data_dir):
    sets = {
        "data.data_dir": data_dir, "data.embedded_num_train": 32,
        "data.embedded_num_validation": 8, "vae.model.label_channels.depth": "(0,16)",
        **{f"evals.{e}.{k}": 4 for e in ("oracle", "sampled", "baseline")
           for k in ("num_examples", "batch_size")},
        "evals.oracle.overlays": 2, "evals.sampled.overlays": 2,
        "data.shuffle_buffer": 32,
        "vae.train.total_steps": 3, "givt.train.total_steps": 3,
        "vae.train.batch_size": 4, "givt.train.batch_size": 4,
        "vae.model.width": 32, "vae.model.mlp_dim": 64, "vae.model.depth": 1,
        "vae.model.decoder_depth": 1, "vae.model.code_len": 16, "vae.model.codeword_dim": 4,
        "givt.model.emb_dim": 32, "givt.model.mlp_dim": 64, "givt.model.num_layers": 1,
        "givt.model.num_decoder_layers": 1, "givt.model.seq_len": 16, "givt.model.out_dim": 4,
        "givt.sampling.beam_size": 1, "givt.sampling.fan_size": 1,
        "givt.sampling.num_samples": 1,
        "givt.model.patches": "(16,16)",  # a 4x4 encoder grid: encoder_skip fits
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    run = str(root / "run")
    args = _tiny(str(root / "tfds"))
    assert D.main(["train", "--workdir", run, *args]) == 0
    return run, args


def test_tiny_two_stage_run(tiny_run):
    run, _ = tiny_run
    records = {r: json.load(open(os.path.join(run, "eval", r)))
               for r in os.listdir(os.path.join(run, "eval"))}
    stages = {r["stage"]: r for r in records.values()  # the depth-metric evaluators
              if r["evaluator"] in ("oracle", "sampled", "baseline")}
    assert set(stages) == {"vae", "givt", "baseline"}
    for rec in stages.values():
        assert rec["task"] == "depth" and rec["metrics"]["num_images"] == 4
        assert set(depth_eval.METRIC_NAMES) <= set(rec["metrics"])
        assert rec["metrics"]["RMSE"] > 0 and 0 <= rec["metrics"]["delta1"] <= 1
    assert stages["vae"]["step"] == 3 and stages["givt"]["step"] == 3
    assert stages["baseline"]["extra"]["mean_depth_m"] > 0.5
    overlays = sorted(os.listdir(os.path.join(run, "predictions")))
    assert overlays == ["oracle_000.png", "oracle_001.png", "sampled_000.png", "sampled_001.png"]
    panel = cv2.imread(os.path.join(run, "predictions", "sampled_000.png"))
    assert panel.shape == _labelled(60, 80, 3)  # image | ground truth | prediction


def test_rerun_resumes_without_retraining(tiny_run, capsys):
    run, args = tiny_run
    metrics = open(os.path.join(run, "metrics.jsonl")).read()
    assert D.main(["train", "--workdir", run, "--no-eval", *args]) == 0
    assert open(os.path.join(run, "metrics.jsonl")).read() == metrics  # no step retrained
    for stage in ("vae", "givt"):
        assert os.listdir(os.path.join(run, "checkpoints", stage)) == ["3"]


def test_masked_stage_two_trains_and_samples_by_maskgit(tiny_run, tmp_path):
    """style=masked: stage 2 trains on the run's VAE and the predictor decodes by MaskGIT."""
    run, args = tiny_run
    out = str(tmp_path / "masked")
    sets = ["--set", "givt.model.style=masked", "--set", "givt.sampling.num_steps=3"]
    assert D.main(["train", "--stage", "givt", "--vae-ckpt", run, "--workdir", out,
                   *args, *sets]) == 0
    rec = json.load(open(os.path.join(
        out, "eval", "givt_sampled_validation_embedded_step00000003_train.json")))
    assert rec["metrics"]["num_images"] == 4 and rec["metrics"]["RMSE"] > 0
    cfg, vae, givt = _load(out)
    predictor = Predictor(cfg, vae, givt)
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3), minval=-1, maxval=1)
    codes = predictor.sample_codes(5, image=np.asarray(images))
    s = cfg.givt.sampling
    expected = sample_maskgit(predictor.model, givt, jax.random.PRNGKey(5), labels=None,
                              batch_size=2, image=images, num_steps=3,
                              temperature=s.temperature, temperature_probs=s.temperature_probs,
                              choice_temperature=s.choice_temperature)
    np.testing.assert_allclose(np.asarray(codes), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_num_samples_averages_the_decoded_class_distributions(tiny_run):
    """num_samples=n: log of the mean of n decoded softmaxes (numpy), draw 0 = one sample."""
    run, _ = tiny_run
    cfg, vae, givt = _load(run)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3),
                                           minval=-1, maxval=1))
    one = Predictor(cfg, vae, givt).predict(images, seed=3, mirror_equivariant=True)
    temperature = cfg.givt.sampling.temperature
    with cfg.unlocked():
        cfg.givt.sampling.temperature = 1.0  # spread the draws apart
        cfg.givt.sampling.num_samples = 3
        cfg.givt.sampling.test_time_flip = False  # on in the tiny preset; tested below
    predictor = Predictor(cfg, vae, givt)
    averaged = predictor.predict(images, seed=3, mirror_equivariant=True)

    draws = [predictor.decode(predictor.sample_codes(3, k, image=images))
             for k in range(3)]
    assert not np.allclose(draws[0]["depth"], draws[1]["depth"])  # the draws differ
    for name, logp in averaged.items():
        mean = np.mean([softmax(np.asarray(d[name], np.float64), axis=-1) for d in draws],
                       axis=0)
        np.testing.assert_allclose(np.exp(logp), mean, atol=1e-5)
    with cfg.unlocked():
        cfg.givt.sampling.temperature = temperature
        cfg.givt.sampling.num_samples = 1
    again = Predictor(cfg, vae, givt).predict(images, seed=3, mirror_equivariant=True)
    for name in one:
        np.testing.assert_array_equal(again[name], one[name])  # num_samples=1: unchanged
    with cfg.unlocked():
        cfg.givt.sampling.num_samples = 0
    with pytest.raises(UserError, match="num_samples=0"):
        Predictor(cfg, vae, givt).predict(images, mirror_equivariant=True)


def test_test_time_flip_mirrors_odd_draws_back(tiny_run):
    """test_time_flip: odd draws sample the mirrored image, their logits mirrored back."""
    run, _ = tiny_run
    cfg, vae, givt = _load(run)
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (2, 64, 64, 3),
                                           minval=-1, maxval=1))
    with cfg.unlocked():
        cfg.givt.sampling.temperature = 1.0
        cfg.givt.sampling.num_samples = 2
        cfg.givt.sampling.test_time_flip = True
    predictor = Predictor(cfg, vae, givt)
    averaged = predictor.predict(images, seed=4, mirror_equivariant=True)

    plain = predictor.decode(predictor.sample_codes(4, 0, image=images))
    mirror = predictor.decode(predictor.sample_codes(4, 1, image=np.flip(images, axis=2)))
    for name, logp in averaged.items():
        back = np.flip(np.asarray(mirror[name], np.float64), axis=2)
        mean = (softmax(np.asarray(plain[name], np.float64), axis=-1)
                + softmax(back, axis=-1)) / 2
        np.testing.assert_allclose(np.exp(logp), mean, atol=1e-5)
        # Not mirrored back, the second draw would give another average.
        wrong = (softmax(np.asarray(plain[name], np.float64), axis=-1)
                 + softmax(np.asarray(mirror[name], np.float64), axis=-1)) / 2
        assert not np.allclose(np.exp(logp), wrong, atol=1e-4)
    # no odd draw: the plain one-sample prediction
    one = predictor.with_settings(predictor.settings.replace(num_samples=1))
    for name, logits in one.predict(images, seed=4, mirror_equivariant=True).items():
        np.testing.assert_array_equal(logits, np.asarray(plain[name]))


def test_test_time_flip_is_refused_for_a_task_whose_labels_do_not_mirror(tiny_run):
    run, _ = tiny_run
    cfg, vae, givt = _load(run)
    with cfg.unlocked():
        cfg.givt.sampling.num_samples = 2
        cfg.givt.sampling.test_time_flip = True

    predictor = Predictor(cfg, vae, givt)
    with pytest.raises(UserError, match="test_time_flip.*do not mirror"):
        predictor.predict(np.zeros((1, 64, 64, 3), np.float32), mirror_equivariant=False)


def test_exposure_curve_under_test_time_flip_starts_at_the_sampled_score(tiny_run):
    """The depth preset samples with test-time flip (2 draws here, as tiny's 4): the
    exposure curve's no-code point is those plain samples (the evaluator once refused the
    flip), and keeping every true code needs no flip."""
    run, _ = tiny_run
    flip = ["--set", "givt.sampling.num_samples=2", "--set", "givt.sampling.test_time_flip=True"]
    assert D.main(["eval", "--ckpt", run, "--max-eval", "2", "--evaluator", "exposure",
                   "--evaluator", "sampled", "--set", "evals.exposure.batch_size=2",
                   "--set", "evals.sampled.batch_size=2", *flip]) == 0
    tagged = {r["evaluator"]: r for r in (json.load(open(os.path.join(run, "eval", f)))
                                          for f in os.listdir(os.path.join(run, "eval")))
              if "test_time_flip=True" in str(r["extra"].get("settings"))}
    curve = tagged["exposure"]["metrics"]
    assert curve["keep_0/RMSE"] == pytest.approx(tagged["sampled"]["metrics"]["RMSE"])
    assert curve["keep_1/RMSE"] > 0


def test_uncertainty_evaluator_scores_calibration_and_coverage(tiny_run):
    """``eval --evaluator uncertainty``: depth-bin calibration and the coverage of the
    true depth by the draws' intervals, with entropy and spread pictures; never run by
    training or a plain eval."""
    run, _ = tiny_run
    assert not any("uncertainty" in r for r in os.listdir(os.path.join(run, "eval")))
    assert D.main(["eval", "--ckpt", run, "--evaluator", "uncertainty", "--max-eval", "2",
                   "--set", "evals.uncertainty.draws=3",
                   "--set", "evals.uncertainty.overlays=1"]) == 0
    rec = next(json.load(open(os.path.join(run, "eval", r)))
               for r in os.listdir(os.path.join(run, "eval")) if "uncertainty" in r)
    m = rec["metrics"]
    assert m["num_images"] == 2 and rec["extra"]["draws"] == 3
    assert 0 <= m["depth/ECE"] <= 1 and 0 <= m["depth/accuracy"] <= 1
    assert 0 <= m["depth/coverage@0.5"] <= m["depth/coverage@0.95"] <= 1
    assert m["depth/width@0.5"] <= m["depth/width@0.95"] and m["depth/std"] > 0
    picture = os.path.join(run, "predictions", "uncertainty_000.png")
    image = cv2.imread(picture)
    assert image is not None and image.shape[1] == 3 * image.shape[0] * 4 // 3  # 3 panels


def test_depth_completion_keeps_the_given_part_and_scores_it(tiny_run, tmp_path, capsys):
    """``complete``: the ground truth's codes outside the region are kept; with the whole
    output but one code given, the completion is nearly the oracle, and both it and the
    plain sampled prediction are scored on the same images."""
    run, _ = tiny_run
    out = tmp_path / "complete"
    assert D.main(["complete", "--ckpt", run, "--region", "bottom", "--fraction", "0.2",
                   "--num", "3", "--out", str(out)]) == 0
    result = json.loads((out / "complete.json").read_text())
    assert result["num_images"] == 3 and 0 < result["generated_codes"] < result["seq_len"]
    for name in ("completed", "sampled"):
        assert result[name]["num_images"] == 3 and result[name]["RMSE"] > 0
    assert sorted(os.listdir(out)) == ["complete.json", "complete_000.png",
                                       "complete_001.png", "complete_002.png"]
    assert "RMSE: completed" in capsys.readouterr().out
    assert D.main(["complete", "--ckpt", run, "--fraction", "1", "--out", str(out)]) == 2
    assert "--fraction 1" in capsys.readouterr().err


def test_predict_writes_millimetre_pngs(tiny_run, tmp_path):
    run, _ = tiny_run
    os.makedirs(tmp_path / "imgs")
    for k, shape in enumerate([(30, 40, 3), (48, 64, 3)]):
        cv2.imwrite(str(tmp_path / "imgs" / f"im{k}.jpg"),
                    np.random.RandomState(k).randint(0, 255, shape).astype(np.uint8))
    assert D.main(["predict", "--ckpt", run, "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "out")]) == 0
    for k, shape in enumerate([(30, 40), (48, 64)]):
        png = cv2.imread(str(tmp_path / "out" / f"im{k}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == shape
        assert 1 <= png.min() and png.max() <= 10_000  # millimetres within [0.001, 10] m
        preview = cv2.imread(str(tmp_path / "out" / "previews" / f"im{k}.png"))
        assert preview.shape == _labelled(*shape, 2)  # image | prediction
    # the files evaluator reads them back as metres
    assert depth_eval.read_depth_file(str(tmp_path / "out" / "im0.png")).max() <= 10.0


def test_shared_evaluator_checkpoint_mode(tiny_run, capsys):
    run, _ = tiny_run
    assert depth_eval.main(["--ckpt", run, "--max-examples", "3"]) == 0
    out = capsys.readouterr().out
    assert "RMSE" in out and "num_images  3.0000" in out


def test_bad_folder_data_is_a_clear_error(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    _nyu_folder(str(tmp_path))
    _write_frame(str(tmp_path / "val" / "b" / "nan.h5"), np.zeros((3, 6, 8), np.uint8),
                 np.full((6, 8), np.nan))
    assert D.main(["eval", "--ckpt", run, "--data", f"folder:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "nan.h5: 48 NaN/inf depth values" in err and "Traceback" not in err


# ------------------------------------------------------------------ published trees
@pytest.mark.parametrize("stage,key", [("vae", "vae_uvim_depth_stage1"),
                                       ("givt", "givt_uvim_depth_stage2")])
def test_paper_config_builds_the_published_trees(stage, key):
    ref = json.loads(TREES.read_text())[key]
    cfg = load_config("configs/depth.py:size=paper")
    params = builders.abstract_params(stage, cfg)
    flat = {k: list(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    assert sorted(flat) == sorted(ref["params"])
    assert flat == ref["params"]
    assert sum(int(np.prod(s)) for s in flat.values()) == ref["num_params"]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: x.dtype == np.float32,
                                                         params))


# ------------------------------------------------------- the published evaluation protocol
PUBLISHED = {"data.eval_crop": "(54,480,41,601)", "data.eval_crop_frame": "(480,640)",
             "data.eval_crop_before_predict": "True", "data.decode": "argmax",
             "data.eval_resize": "nearest"}


def _cfg(**protocol):
    """The tiny preset (64 px input, 32 bins) under the published protocol, or another."""
    sets = dict(PUBLISHED, **{f"data.{k}": str(v) for k, v in protocol.items()})
    return load_config("configs/depth.py", [f"{k}={v}" for k, v in sets.items()])


@pytest.mark.parametrize("size", ["paper", "base"])
def test_published_presets_use_the_published_protocol(size):
    data = load_config(f"configs/depth.py:size={size}").data
    assert tuple(data.eval_crop) == (54, 480, 41, 601) == depth_eval.NYU_CROP
    assert tuple(data.eval_crop_frame) == (480, 640)
    assert data.eval_crop_before_predict is True
    assert (data.decode, data.eval_resize) == ("argmax", "nearest")
    assert (data.min_depth, data.max_depth) == (0.001, 10.0)


def test_crop_tf_cuts_the_box_evals_scales():
    import tensorflow as tf
    spec = depth_eval.NYU_CROP_SPEC
    for h, w in [(480, 640), (60, 80), (120, 160), (6, 8), (37, 53)]:
        frame = np.arange(h * w, dtype=np.float32).reshape(h, w, 1)
        (got,), box = D.crop_tf(spec, tf.constant(frame))
        r0, r1, c0, c1 = spec.for_shape((h, w))
        np.testing.assert_array_equal(got.numpy(), frame[r0:r1, c0:c1])
        assert box.numpy().tolist() == [r0, r1, c0, c1]


def _nyu_frame(seed):
    """A 480x640 frame: a bright band above the crop (rows < 54), dark elsewhere; depth
    with exact min / max values (not scored) inside the crop."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 100, (480, 640, 3), dtype=np.uint8)
    image[:54] = 255
    depth = rng.uniform(0.5, 9.5, (480, 640)).astype(np.float32)
    depth[100, 100:110], depth[200, 200:205] = LO, HI
    depth[300:310, 300:320] = 0.0
    return {"image": image, "depth": depth, "name": f"f{seed}"}


def _bins_pattern(size, n, shift=0):
    """Sharp-edged argmax bins over the model's grid (every pixel its own bin in 1..n-1)."""
    u, v = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return 1 + (7 * u + 13 * v + shift) % (n - 1)


def _as_np(meta):
    return {k: np.asarray(v) for k, v in meta.items()}


def _peaked(size, n, shift):
    """Logits [size, size, n] whose argmax is ``_bins_pattern`` (shifted)."""
    return np.eye(n, dtype=np.float32)[_bins_pattern(size, n, shift)] * 5.0


def _protocol_eval(cfg, frames):
    """The evaluation route as the evaluators run it: ``eval`` preprocessing, logits
    peaked on ``_bins_pattern`` (shifted per example) for the model, ``postprocess`` with
    the example's meta, the depth metric on the raw example. Returns (metrics, the model's
    inputs, (example, prediction) pairs)."""
    metric = D.TASK.metric(cfg, "depth")
    size, n = int(cfg.data.image_size), D.num_bins(cfg)
    seen, added = [], []
    for k, frame in enumerate(frames):
        inputs = D.TASK.preprocess(cfg, frame, "eval")
        seen.append(np.asarray(inputs["image"]))
        pred = D.TASK.postprocess(cfg, {"depth": _peaked(size, n, k)},
                                  _as_np(inputs["meta"]))
        metric.add(frame, pred)
        added.append((frame, pred))
    return metric.result(), np.stack(seen), added


def _brute_force(frame, box, size, n, shift):
    """The published order in numpy: the crop's pixel (i, j) takes the model pixel
    floor((i - r0 + 0.5) * size / crop_h) (jax nearest), decoded to its bin's centre."""
    r0, r1, c0, c1 = box
    out = np.full(frame["depth"].shape, np.nan)
    i, j = np.arange(r0, r1), np.arange(c0, c1)
    u = np.floor((i - r0 + 0.5) * size / (r1 - r0)).astype(int)
    v = np.floor((j - c0 + 0.5) * size / (c1 - c0)).astype(int)
    out[r0:r1, c0:c1] = D.bin_centres(LO, HI, n)[_bins_pattern(size, n, shift)[np.ix_(u, v)]]
    return out


def _metrics_brute_force(pred, gt, box):
    r0, r1, c0, c1 = box
    p, g = pred[r0:r1, c0:c1].ravel(), gt[r0:r1, c0:c1].astype(np.float64).ravel()
    keep = [k for k in range(g.size) if LO < g[k] < HI]
    p, g = p[keep], g[keep]
    r = np.maximum(p / g, g / p)
    return {"RMSE": np.sqrt(np.mean((p - g) ** 2)), "AbsRel": np.mean(np.abs(p - g) / g),
            "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
            **{f"delta{k}": np.mean(r < 1.25**k) for k in (1, 2, 3)}}


def test_published_order_crop_predict_resize_score_on_nyu_frames():
    """480x640 frames through the evaluation route: the model sees the crop (no pixel
    of the band above it), its argmax bins' centres are resized to the crop with nearest
    neighbour, and the crop's pixels with min < gt < max are scored: all recomputed here."""
    import tensorflow as tf
    cfg = _cfg()
    frames = [_nyu_frame(0), _nyu_frame(1)]
    metrics, seen, added = _protocol_eval(cfg, frames)
    size, n, box = int(cfg.data.image_size), D.num_bins(cfg), depth_eval.NYU_CROP

    for k, frame in enumerate(frames):  # 1. the model's input is the resized crop
        crop = frame["image"][54:480, 41:601].astype(np.float32)
        want = tf.image.resize(crop, (size, size), method="bilinear").numpy() / 127.5 - 1.0
        np.testing.assert_allclose(seen[k], want, atol=1e-5)
        assert seen[k].max() < 0.0  # nothing of the bright band (255 -> 1.0)

    per_image = []
    for k, (frame, (example, pred)) in enumerate(zip(frames, added, strict=True)):
        assert example["depth"].shape == (480, 640)  # the metric gets the whole frame
        want = _brute_force(frame, box, size, n, shift=k)  # 2.-3. decode, resize, place
        np.testing.assert_array_equal(np.isnan(pred), np.isnan(want))
        np.testing.assert_allclose(pred, want, rtol=1e-6)
        per_image.append(_metrics_brute_force(want, frame["depth"], box))
    for name in depth_eval.METRIC_NAMES:  # 4. scored on the crop, strict mask, per image
        assert metrics[name] == pytest.approx(np.mean([m[name] for m in per_image]),
                                              rel=1e-5), name

    # Another order (predict the whole frame, then crop) is a different evaluation.
    cfg_full = _cfg(eval_crop_before_predict=False)
    metrics_full, seen_full, added_full = _protocol_eval(cfg_full, frames)
    assert seen_full[0].max() == pytest.approx(1.0)  # the band is in the model's input
    assert not np.isnan(added_full[0][1]).any()
    assert not np.allclose(added_full[0][1][54:480, 41:601], added[0][1][54:480, 41:601])
    assert metrics_full["RMSE"] != pytest.approx(metrics["RMSE"])


def test_argmax_decoding_gives_the_centre_of_the_most_likely_bin():
    cfg = _cfg()
    n = D.num_bins(cfg)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 8, n)).astype(np.float32)
    logits[..., 0] = 50.0  # class 0 (invalid) is never decoded
    meta = {"size": np.int32([8, 8]), "box": np.int32([0, 8, 0, 8]), "flip": np.bool_(False)}
    got = D.TASK.postprocess(cfg, {"depth": logits}, meta)
    centres = D.bin_centres(LO, HI, n)
    np.testing.assert_array_equal(got, centres[1 + np.argmax(logits[..., 1:], axis=-1)])
    expectation = D.TASK.postprocess(_cfg(decode="expectation"), {"depth": logits}, meta)
    assert not np.allclose(expectation, got)


@pytest.mark.parametrize("resize,only_centres", [("nearest", True), ("bilinear", False)])
def test_nearest_resize_keeps_only_bin_centres(resize, only_centres):
    """Sharp-edged bins resized to a 480x640 frame: nearest neighbour keeps each value a
    bin centre; bilinear blends neighbouring centres at every edge."""
    cfg = _cfg(eval_resize=resize)
    size, n = int(cfg.data.image_size), D.num_bins(cfg)
    logits = np.eye(n, dtype=np.float32)[_bins_pattern(size, n)] * 5.0
    frame = _nyu_frame(2)
    pred = D.TASK.postprocess(cfg, {"depth": logits},
                              _as_np(D.TASK.preprocess(cfg, frame, "eval")["meta"]))
    assert pred.shape == (480, 640)
    values = pred[np.isfinite(pred)]
    assert values.size == 426 * 560  # the crop's box, NaN around it
    is_centre = np.isin(values, D.bin_centres(LO, HI, n))
    assert is_centre.all() == only_centres
    # predict's images (no ground truth) were predicted whole: the whole frame, no NaN
    predict_meta = D.TASK.preprocess(cfg, {"image": frame["image"]}, "predict")["meta"]
    whole = D.TASK.postprocess(cfg, {"depth": logits}, _as_np(predict_meta))
    assert np.isfinite(whole).all() and np.isin(whole, D.bin_centres(LO, HI, n)).all() \
        == only_centres


@pytest.mark.parametrize("key,value,words", [
    ("eval_resize", "cubic", "data.eval_resize='cubic'"),
    ("eval_crop", (54, 480, 41), r"data.eval_crop=\(54, 480, 41\): 4 numbers are required"),
    ("eval_crop", (54, 500, 41, 601), "data.eval_crop: .*outside"),
    ("eval_crop_before_predict", 1, "eval_crop_before_predict=1"),
])
def test_bad_protocol_keys_are_config_errors(key, value, words):
    """Each key by its rule (the task's config_rules), the crop against its frame by
    check_config: both run before a run directory is written."""
    cfg = _cfg()
    with cfg.unlocked(), cfg.ignore_type():
        cfg.data[key] = value
    with pytest.raises(UserError, match=words):
        schema.check(cfg, schema.rules_of(D.TASK))
        D.TASK.check_config(cfg)


# ------------------------------------------------------------------------ routes and meta
@pytest.mark.parametrize("box,flip", [((7, 60, 5, 75), False), ((0, 60, 0, 80), False),
                                      ((3, 41, 10, 33), True)])
@pytest.mark.parametrize("resize", ["nearest", "bilinear"])
def test_postprocess_places_the_decoded_map_into_the_box(box, flip, resize):
    """The decoded map, mirrored back when flipped, resized to the box (pixel (i, j) of a
    nearest resize takes model pixel floor((i + 0.5) * S / box_h)) and put at the box of a
    meta["size"] map; NaN elsewhere: recomputed pixel by pixel."""
    cfg = _cfg(eval_resize=resize, decode="argmax")
    size, n = int(cfg.data.image_size), D.num_bins(cfg)
    h, w = 60, 80
    meta = {"size": np.int32([h, w]), "box": np.int32(box), "flip": np.bool_(flip)}
    pred = D.TASK.postprocess(cfg, {"depth": _peaked(size, n, 3)}, meta)
    assert pred.shape == (h, w) and pred.dtype == np.float32
    r0, r1, c0, c1 = box
    decoded = D.bin_centres(LO, HI, n)[_bins_pattern(size, n, 3)]
    if flip:
        decoded = decoded[:, ::-1]
    inside = np.zeros((h, w), bool)
    inside[r0:r1, c0:c1] = True
    assert np.isnan(pred[~inside]).all() and np.isfinite(pred[inside]).all()
    if resize == "nearest":
        want = np.full((h, w), np.nan, np.float32)
        for i in range(r0, r1):
            for j in range(c0, c1):
                u = int(np.floor((i - r0 + 0.5) * size / (r1 - r0)))
                v = int(np.floor((j - c0 + 0.5) * size / (c1 - c0)))
                want[i, j] = decoded[u, v]
        np.testing.assert_array_equal(pred, want)
    else:  # bilinear (half-pixel centres, cv2) of the decoded map, into the box
        want = cv2.resize(np.ascontiguousarray(decoded), (c1 - c0, r1 - r0),
                          interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(pred[r0:r1, c0:c1], want, rtol=1e-6)


@pytest.mark.parametrize("protocol", [{"eval_crop": "()"},
                                      {"eval_crop_before_predict": "False"}])
def test_predict_route_sees_what_the_eval_route_sees_without_a_crop(protocol):
    """No crop before the prediction: the image alone (predict) and the labelled frame
    (eval) give the model the same input and the same meta (the whole frame)."""
    cfg = _cfg(**protocol)
    frame = _nyu_frame(4)
    ev = D.TASK.preprocess(cfg, frame, "eval")
    pr = D.TASK.preprocess(cfg, {"image": frame["image"]}, "predict")
    assert "labels" not in pr and ev["labels"].shape == (64, 64, 1)
    np.testing.assert_array_equal(pr["image"].numpy(), ev["image"].numpy())
    for key in ("size", "box", "flip"):
        np.testing.assert_array_equal(pr["meta"][key].numpy(), ev["meta"][key].numpy())
    assert pr["meta"]["box"].numpy().tolist() == [0, 480, 0, 640]
    assert not pr["meta"]["flip"].numpy()


def test_eval_route_meta_names_the_crop_the_model_saw():
    import tensorflow as tf
    cfg = _cfg()
    frame = _nyu_frame(5)
    ev = D.TASK.preprocess(cfg, frame, "eval")
    meta = _as_np(ev["meta"])
    assert meta["size"].tolist() == [480, 640] and not meta["flip"]
    assert meta["box"].tolist() == list(depth_eval.NYU_CROP)
    r0, r1, c0, c1 = meta["box"]
    want = tf.image.resize(frame["image"][r0:r1, c0:c1].astype(np.float32), (64, 64),
                           method="bilinear").numpy() / 127.5 - 1.0
    np.testing.assert_allclose(ev["image"].numpy(), want, atol=1e-5)
    # the labels: the crop's depth, resized nearest, binned
    depth = tf.image.resize(frame["depth"][r0:r1, c0:c1, None], (64, 64), method="nearest")
    np.testing.assert_array_equal(
        ev["labels"].numpy(), D.depth_to_bins(depth, LO, HI, D.num_bins(cfg)).numpy())
    with pytest.raises(ValueError, match="mode 'test'"):
        D.TASK.preprocess(cfg, frame, "test")


def test_train_route_meta_rebuilds_the_training_view():
    """The train route's meta says which part of the frame it took and whether it is
    mirrored: cutting that box from the raw frame (and mirroring) gives its input."""
    import tensorflow as tf
    cfg = load_config("configs/depth.py", ["data.crop_area_min=0.3"])
    frame = _frame(3)
    flips = set()
    for s in range(8):
        view = D.TASK.preprocess(cfg, frame, "train", seed=tf.constant([s, 1], tf.int64))
        meta = _as_np(view["meta"])
        r0, r1, c0, c1 = meta["box"]
        assert meta["size"].tolist() == [60, 80] and 0 <= r0 < r1 <= 60 and 0 <= c0 < c1 <= 80
        raw = frame["image"][r0:r1, c0:c1]
        raw = raw[:, ::-1] if meta["flip"] else raw
        want = tf.image.resize(raw.astype(np.float32), (64, 64), method="bilinear").numpy()
        np.testing.assert_allclose(view["image"].numpy(), want / 127.5 - 1.0, atol=1e-5)
        flips.add(bool(meta["flip"]))
    assert flips == {True, False}


def test_raw_fields_name_the_examples():
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices({
        "image": np.zeros((2, 4, 6, 3), np.uint8), "depth": np.ones((2, 4, 6), np.float16),
        "accel": np.zeros((2, 3), np.float32)})  # TFDS carries more than the task reads
    got = list(D.raw_fields(ds, "validation").as_numpy_iterator())
    assert [g["name"] for g in got] == [b"validation_000000", b"validation_000001"]
    assert set(got[0]) == {"image", "depth", "name"}


def test_baseline_predicts_the_mean_in_the_box(monkeypatch):
    monkeypatch.setattr(D, "mean_training_depth", lambda task, cfg, source: 2.5)
    cfg = _cfg()
    predict, extra = D.TASK.baseline(cfg, "embedded")
    assert extra["mean_depth_m"] == 2.5
    meta = _as_np(D.TASK.preprocess(cfg, _nyu_frame(6), "eval")["meta"])
    pred = predict(meta)
    r0, r1, c0, c1 = depth_eval.NYU_CROP
    assert pred.shape == (480, 640)
    assert (pred[r0:r1, c0:c1] == 2.5).all()
    assert np.isnan(pred).sum() == 480 * 640 - (r1 - r0) * (c1 - c0)


def test_metadata_declares_the_published_references():
    family = D.TASK.metadata.family("depth")
    assert family.order == depth_eval.METRIC_NAMES and family.primary == "RMSE"
    assert not family.higher_is_better and dict(family.units) == {"RMSE": "m"}
    refs = {(r.model, r.prediction): r.value for r in family.references}
    assert refs == {("VAE stage 1 (oracle)", "oracle"): 0.195,
                    ("GIVT stage 2", "sampled"): 0.474,
                    ("UViM (VQ-VAE, discrete)", "sampled"): 0.467}
    assert {r.data for r in family.references} == {"NYU Depth v2 val"}
    assert D.TASK.metadata.family("loss").primary is None


def _labelled(h: int, w: int, panels: int) -> tuple[int, int, int]:
    """The shape of evals.pictures.labelled_panels of ``panels`` h x w panels with the
    depth colour bar (30 px): enlarged by an integer factor, titled, gaps between."""
    from evals import pictures
    f = max(1, -(-pictures.MIN_SIDE // h))
    return (pictures.TITLE_H + h * f + 30, panels * w * f + (panels - 1) * pictures.GAP, 3)
