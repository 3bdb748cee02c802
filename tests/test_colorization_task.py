"""The colorization task (the original UViM's third): its views against NumPy, its PSNR
against TensorFlow's, its published presets value for value, and tiny runs of both token
kinds through the command line on the embedded data and on a photo folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tasks import colorization as C
from uvim_givt.config import load_config
from uvim_givt.errors import ConfigError

TREES = json.loads((Path(__file__).parent / "data" / "uvim_param_trees.json").read_text())


def _image(seed: int = 0, h: int = 30, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_routes_give_grayscale_input_and_colour_label():
    cfg = load_config("configs/colorization.py")
    image = _image()
    out = C.TASK.preprocess(cfg, {"image": tf.constant(image)}, "eval")
    colour = tf.image.resize(image.astype(np.float32), (64, 64)).numpy()
    np.testing.assert_allclose(out["labels"].numpy(), colour / 127.5 - 1, atol=1e-6)
    # ITU-R 601 luma, as tf.image.rgb_to_grayscale, replicated to three channels
    gray = colour @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    for c in range(3):
        np.testing.assert_allclose(out["image"].numpy()[..., c], gray / 127.5 - 1, atol=1e-4)
    predict = C.TASK.preprocess(cfg, {"image": tf.constant(image)}, "predict")
    assert "labels" not in predict
    np.testing.assert_array_equal(predict["image"].numpy(), out["image"].numpy())
    train = C.TASK.preprocess(cfg, {"image": tf.constant(image)}, "train",
                              seed=tf.constant([1, 2], tf.int64))
    flipped = bool(train["meta"]["flip"].numpy())
    want = out["labels"].numpy()[:, ::-1] if flipped else out["labels"].numpy()
    np.testing.assert_allclose(train["labels"].numpy(), want, atol=1e-6)


def test_psnr_is_tensorflows_and_postprocess_unflips_and_resizes():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(C.psnr(a, b), float(tf.image.psnr(a, b, max_val=2.0)),
                               rtol=1e-5)
    assert C.psnr(a, a) == math.inf
    cfg = load_config("configs/colorization.py")
    logits = {"color": rng.uniform(-1.5, 1.5, (64, 64, 3)).astype(np.float32)}
    meta = {"size": np.array([30, 40]), "box": np.array([0, 30, 0, 40]), "flip": np.True_}
    pred = C.TASK.postprocess(cfg, logits, meta)
    np.testing.assert_array_equal(pred.model, np.clip(logits["color"], -1, 1)[:, ::-1])
    assert pred.frame.shape == (30, 40, 3) and pred.frame.dtype == np.uint8
    want = cv2.resize(pred.model, (40, 30), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(pred.frame, C.to_uint8(want))
    metric = C.TASK.metric(cfg, "colorization")
    image = _image(4)
    metric.add({"image": image, "name": b"x"}, pred)
    label = tf.image.resize(image.astype(np.float32), (64, 64)).numpy() / 127.5 - 1
    result = metric.result()
    np.testing.assert_allclose(result["PSNR"], float(tf.image.psnr(pred.model, label, 2.0)),
                               rtol=1e-5)
    np.testing.assert_allclose(
        result["PSNR_full"], float(tf.image.psnr(pred.frame / 127.5 - 1, image / 127.5 - 1,
                                                 2.0)), rtol=1e-5)
    gray = label @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(
        result["PSNR_gray"], float(tf.image.psnr(np.repeat(gray[..., None], 3, -1), label,
                                                 2.0)), rtol=1e-4)
    assert result["num_images"] == 1


class _MeanColourFeatures:
    """A stand-in extractor: per-image channel means and standard deviations (6 dims)."""

    name = "mean_colour"

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float64)
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)

    def probs(self, images: np.ndarray) -> np.ndarray:
        raise AssertionError("FID needs features only")


def test_fid_of_colorized_against_true_colours_is_the_frechet_distance():
    """With an extractor, the metric adds the FID of the predicted colours against the true
    ones at the model's resolution: scipy's sqrtm on the stand-in's features; without one
    (an empty ``extractor`` option), no FID."""
    from scipy import linalg
    size, rng = 16, np.random.default_rng(3)
    frames = [_image(i, 24, 32) for i in range(12)]
    preds = [rng.uniform(-1, 1, (size, size, 3)).astype(np.float32) for _ in frames]
    metric, plain = C.ColorizationMetric(size, _MeanColourFeatures()), C.ColorizationMetric(size)
    plain.configure({"extractor": ""})
    for frame, pred in zip(frames, preds, strict=True):
        for m in (metric, plain):
            m.add({"image": frame}, C.Colorized(pred, frame))
    feats = _MeanColourFeatures().features
    a = feats(np.stack([C.to_uint8(p) for p in preds]))
    b = feats(np.stack([C.to_uint8(C.model_colour(f, size)) for f in frames]))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
                - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
    result = metric.result()
    assert result["FID"] == pytest.approx(expected, rel=1e-6) and result["FID"] > 0
    assert metric.record_extra()["extractor"] == "mean_colour"
    assert "FID" not in plain.result() and plain.result()["PSNR"] == result["PSNR"]


def test_config_must_have_the_colour_value_channel():
    cfg = load_config("configs/colorization.py")
    C.TASK.check_config(cfg)
    cfg.vae.model.value_channels = {"color": (0, 1)}
    with pytest.raises(ConfigError, match="value_channels"):
        C.TASK.check_config(cfg)


def test_paper_vq_presets_are_the_published_configs():
    """vqvae_imagenet2012_colorization.py (get_config() as it returns it: singlehost, batch
    128, 20 epochs) and train_imagenet2012_colorization_pretrained.py (batch 512, 50)."""
    cfg = load_config("configs/colorization.py:size=paper,tokens=vq")
    m = cfg.vae.model
    assert (m.input_size, m.patch_size, m.width, m.depth, m.decoder_depth, m.mlp_dim,
            m.num_heads, m.code_len, m.dict_size, m.codeword_dim, m.dict_momentum,
            m.with_encoder_ctx, m.with_decoder_ctx, m.code_dropout, m.bottleneck_resize) == (
        (512, 512), (16, 16), 768, 6, 12, 3072, 12, 256, 4096, 768, 0.995, True, True,
        "random", True)
    assert dict(m.value_channels) == {"color": (0, 3)} and not m.label_channels
    examples = 1_281_167 - 4_096  # train[4096:]
    t = cfg.vae.train
    assert (t.batch_size, t.total_steps, t.optim.lr, t.optim.wd, t.optim.warmup_steps,
            t.optim.grad_clip, t.optim.schedule, t.optim.optimizer,
            t.optim.big_vision_adafactor.beta2_cap) == (
        128, round(20 * examples / 128), 4e-4, 4e-5, 4000, 1.0, "cosine",
        "big_vision_adafactor", 0.95)
    assert cfg.vae.w_commitment == 0.0 and cfg.vae.freeze_dict is False
    g = cfg.givt.model
    assert (g.num_layers, g.num_heads, g.mlp_dim, g.emb_dim, g.vocab_size, g.seq_len,
            g.patches, g.input_size) == (24, 16, 4096, 1024, 4097, 256, (16, 16), (512, 512))
    t = cfg.givt.train
    assert (t.batch_size, t.total_steps, t.optim.lr, t.optim.wd, t.optim.warmup_steps,
            t.optim.grad_clip) == (512, round(50 * examples / 512), 1e-3, 1e-6, 4000, 0.0)
    assert list(t.optim.lr_mults) == [("^(encoder|EmbedPatches|pos_embedding_encoder)/", 0.1)]
    assert cfg.givt.init_encoder == "howto-i21k-L/16"
    assert (cfg.data.source, cfg.data.train_split, cfg.evals.vae_loss.split,
            cfg.evals.sampled.split) == ("tfds:imagenet2012", "train[4096:]", "train[:4096]",
                                         "validation")


def test_paper_vqvae_tree_is_the_panoptic_one_with_a_colour_channel():
    """The published colorization VQ-VAE differs from the panoptic one (reference tree)
    only in its inputs/outputs: one 3-value channel 'color' instead of semantics (134
    classes) and instances (100)."""
    from flax import traverse_util

    from uvim_givt.models import builders
    cfg = load_config("configs/colorization.py:size=paper,tokens=vq")
    tree = builders.abstract_params("vae", cfg)
    got = {k: list(v.shape) for k, v in traverse_util.flatten_dict(
        tree["params"], sep="/").items()}
    ref = dict(TREES["uvim_vqvae_coco_panoptic"]["params"])
    for ch in ("semantics", "instances"):
        for part in ("embedding", "head"):
            for leaf in ("kernel", "bias"):
                ref.pop(f"{part}_{ch}/{leaf}")
    ref.update({"embedding_color/kernel": [3, 256, 768], "embedding_color/bias": [768],
                "head_color/kernel": [768, 3, 256], "head_color/bias": [3, 256]})
    assert got == ref


def _png_folder(root: Path, n: int) -> None:
    for split in ("train", "val"):
        for i in range(n):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            rgb = _image(i + (100 if split == "val" else 0), 24, 32)
            cv2.imwrite(str(d / f"img{i}.png"), rgb[..., ::-1])


def test_folder_of_photos_is_a_source(tmp_path):
    _png_folder(tmp_path, 3)
    cfg = load_config("configs/colorization.py")
    from uvim_givt.data import catalog
    examples = list(catalog.load(C.TASK.readers, cfg, f"folder:{tmp_path}", "validation")
                    .as_numpy_iterator())
    assert [e["name"].decode() for e in examples] == ["class0_img0", "class0_img2",
                                                      "class1_img1"]
    np.testing.assert_array_equal(examples[0]["image"], _image(100, 24, 32))


TINY_VQ = ["--config", "configs/colorization.py:tokens=vq",
           "--set", "data.embedded_num_train=32", "--set", "data.embedded_num_validation=6",
           "--set", "vae.train.total_steps=3", "--set", "vae.train.batch_size=8",
           "--set", "vae.model.width=32", "--set", "vae.model.mlp_dim=64",
           "--set", "vae.model.depth=1", "--set", "vae.model.decoder_depth=1",
           "--set", "vae.model.code_len=16", "--set", "vae.model.dict_size=16",
           "--set", "vae.model.codeword_dim=8",
           "--set", "givt.model.seq_len=16", "--set", "givt.model.vocab_size=17",
           "--set", "givt.model.num_layers=1", "--set", "givt.model.emb_dim=16",
           "--set", "givt.model.mlp_dim=32", "--set", "givt.model.num_heads=2",
           "--set", "givt.train.total_steps=3", "--set", "givt.train.batch_size=8",
           "--set", "evals.sampled.overlays=1", "--set", "evals.oracle.overlays=1"]


TINY_GIVT = ["--set", "data.embedded_num_train=32", "--set", "data.embedded_num_validation=6",
             "--set", "vae.train.total_steps=3", "--set", "givt.train.total_steps=3",
             "--set", "vae.train.batch_size=8", "--set", "givt.train.batch_size=8",
             "--set", "vae.model.width=32", "--set", "vae.model.mlp_dim=64",
             "--set", "vae.model.depth=1", "--set", "vae.model.decoder_depth=1",
             "--set", "givt.model.emb_dim=32", "--set", "givt.model.mlp_dim=64",
             "--set", "givt.model.num_layers=1", "--set", "givt.model.num_decoder_layers=1",
             "--set", "vae.model.code_len=16", "--set", "givt.model.seq_len=16",
             "--set", "givt.model.patches=(16,16)",
             "--set", "givt.sampling.beam_size=1", "--set", "givt.sampling.fan_size=1"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny run of each token kind on the embedded colour frames."""
    root = tmp_path_factory.mktemp("colorization")
    old = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
    runs = {"vq": str(root / "vq"), "continuous": str(root / "continuous")}
    assert C.main(["train", "--workdir", runs["vq"], *TINY_VQ]) == 0
    assert C.main(["train", "--workdir", runs["continuous"], *TINY_GIVT]) == 0
    yield runs
    if old is None:
        os.environ.pop("TFDS_DATA_DIR")
    else:
        os.environ["TFDS_DATA_DIR"] = old


def _records(run: str) -> dict[str, dict]:
    return {r.split("_validation")[0]: json.load(open(os.path.join(run, "eval", r)))
            for r in os.listdir(os.path.join(run, "eval")) if r.endswith("_train.json")}


def test_tiny_vq_run_scores_reloads_and_predicts(tiny_runs, tmp_path):
    """tokens=vq end to end: VQ-VAE and VTT train on the embedded colour frames, their
    PSNR records are written, eval reloads the run and scores the same, predict colours a
    folder of photos at their size."""
    run = tiny_runs["vq"]
    records = _records(run)
    assert set(records) == {"vae_oracle", "vae_vae_loss", "givt_givt_loss", "givt_sampled",
                            "givt_teacher_forced"}
    for name in ("vae_oracle", "givt_sampled"):
        m = records[name]["metrics"]
        assert m["num_images"] == 6 and 0 < m["PSNR"] < 60 and 0 < m["PSNR_full"] < 60
    assert records["vae_vae_loss"]["metrics"]["mse"] > 0
    assert os.path.isfile(os.path.join(run, "predictions", "sampled_000.png"))
    assert C.main(["eval", "--ckpt", run, "--oracle"]) == 0
    (again,) = [json.load(open(os.path.join(run, "eval", r)))
                for r in os.listdir(os.path.join(run, "eval"))
                if r.startswith("vae_oracle") and r.endswith("_eval.json")]
    assert again["metrics"] == records["vae_oracle"]["metrics"]
    _png_folder(tmp_path / "photos", 2)
    out = tmp_path / "out"
    photos = str(tmp_path / "photos" / "val" / "class0")
    assert C.main(["predict", "--ckpt", run, "--images", photos, "--out", str(out)]) == 0
    (png,) = [f for f in os.listdir(out) if f.endswith(".png")]
    written = cv2.imread(str(out / png))
    assert written is not None and written.shape == (24, 32, 3)  # the photo's size
    assert os.path.isfile(out / "previews" / png)


def test_eval_with_an_extractor_records_the_fid(tiny_runs):
    """--set evals.oracle.extractor=digits reaches the metric (the FID and the network in
    the record); a bad extractor is refused by the schema before anything runs."""
    run = tiny_runs["vq"]
    assert C.main(["eval", "--ckpt", run, "--oracle", "--evaluator", "oracle",
                   "--set", "evals.oracle.extractor=digits"]) == 0
    (rec,) = [r for r in (json.load(open(os.path.join(run, "eval", f)))
                          for f in os.listdir(os.path.join(run, "eval")))
              if "FID" in r["metrics"]]
    assert rec["metrics"]["FID"] > 0 and rec["extra"]["extractor"] == "digits"
    assert rec["metrics"]["PSNR"] == _records(run)["vae_oracle"]["metrics"]["PSNR"]
    assert C.main(["eval", "--ckpt", run, "--oracle",
                   "--set", "evals.oracle.extractor=inception"]) == 2


def test_compare_tables_both_token_kinds(tiny_runs, tmp_path, capsys):
    """evals.compare: one row per run, its values those of the run's records and config
    (code bits: 16 ids of a 16-word dictionary = 64 bits; 16 float32 codes of 8 dims)."""
    from evals import compare
    out = tmp_path / "cmp"
    assert compare.main(["--runs", tiny_runs["continuous"], tiny_runs["vq"], "--out", str(out),
                         "--batch", "2", "--repeats", "1"]) == 0
    written = json.load(open(out / "compare.json"))
    assert written["task"] == "colorization"  # the leaderboard's section for it
    rows = {os.path.basename(r["run"]): r for r in written["rows"]}
    for kind, bits in (("continuous", 16 * 8 * 32), ("vq", 16 * math.log2(16))):
        r, recs = rows[kind], _records(tiny_runs[kind])
        info = json.load(open(os.path.join(tiny_runs[kind], "run_info.json")))["num_params"]
        assert r["code_bits"] == bits and r["metric"] == "PSNR"
        assert r["sampled"] == recs["givt_sampled"]["metrics"]["PSNR"]
        assert r["oracle"] == recs["vae_oracle"]["metrics"]["PSNR"]
        assert r["teacher_forced"] == recs["givt_teacher_forced"]["metrics"]["PSNR"]
        assert r["nll_per_image"] == pytest.approx(
            16 * recs["givt_givt_loss"]["metrics"]["nll_per_token"])
        assert (r["params_stage1"], r["params_stage2"]) == (info["vae"], info["givt"])
        assert r["sample_s_per_image"] > 0
    assert rows["vq"]["tokens"].startswith("discrete")
    table = (out / "compare.md").read_text()
    assert "| vq | discrete (VQ-VAE + VTT) | PSNR |" in table
    assert compare.main(["--runs", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit):  # --runs names no default folder
        compare.main(["--runs", tiny_runs["vq"]])
    assert "--runs needs --out" in capsys.readouterr().err
