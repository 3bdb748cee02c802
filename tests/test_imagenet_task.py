"""ImageNet task (embedded digits): both GIVT styles train and sample, CFG w=0, the sample
command's PNG, the paper presets' published trees, bad input."""

import json
import os

import cv2
import flax
import jax
import numpy as np
import pytest

from tasks import imagenet as I  # noqa: E741
from tasks import imagenet_commands
from uvim_givt.config import load_config
from uvim_givt.data import catalog
from uvim_givt.errors import UserError
from uvim_givt.models.builders import abstract_params
from uvim_givt.sampling import sample_autoregressive, sample_maskgit
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training.runner import EMA_STAGE, check_config, load_run

TREES = json.load(open(os.path.join(os.path.dirname(__file__), "data",
                                    "big_vision_param_trees.json")))


def _sets(**extra):
    sets = {
        "vae.train.total_steps": 3, "vae.train.batch_size": 8, "vae.model.filters": 8,
        "vae.model.num_groups": 4, "vae.ema_decay": 0.9,
        "givt.train.total_steps": 3, "givt.train.batch_size": 8,
        "givt.model.emb_dim": 32, "givt.model.mlp_dim": 64, "givt.model.num_heads": 2,
        "givt.model.num_decoder_layers": 1, "givt.model.num_mixtures": 2,
        "data.shuffle_buffer": 16,
        "evals.sampled.samples_per_class": 2, "evals.sampled.max_classes": 3,
        "evals.oracle.num_examples": 40, "evals.sampled.num_examples": 40,
        "evals.oracle.batch_size": 8, "evals.sampled.batch_size": 8,
        "evals.vae_loss.num_examples": 40, "evals.givt_loss.num_examples": 40,
        "evals.sampled.grid_per_class": 2,
        **extra,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A causal run (VAE + GIVT) and a MaskGIT run on the same VAE (--vae-ckpt)."""
    root = tmp_path_factory.mktemp("imagenet")
    ar, masked = str(root / "ar"), str(root / "masked")
    assert I.main(["train", "--workdir", ar, *_sets()]) == 0
    assert I.main(["train", "--workdir", masked, "--stage", "givt", "--vae-ckpt", ar,
                   "--config", "configs/imagenet.py:style=masked",
                   *_sets(**{"givt.sampling.num_steps": 4})]) == 0
    return {"ar": ar, "masked": masked}


def _records(run, kind="generation"):
    """The records of the ``kind`` evaluators, by stage (the held-out losses are ``loss``)."""
    d = os.path.join(run, "eval")
    recs = (json.load(open(os.path.join(d, f))) for f in os.listdir(d))
    return {r["stage"]: r for r in recs if r["kind"] == kind}


def test_causal_run_trains_and_evaluates(runs):
    rec = _records(runs["ar"])
    assert set(rec) == {"vae", "givt"}
    assert rec["vae"]["step"] == 3 and rec["givt"]["step"] == 3
    m = rec["givt"]["metrics"]
    for key in ("FID", "class_accuracy", "FID_no_cfg", "FID_random_latents"):
        assert np.isfinite(m[key]), key
    assert 0.0 <= m["class_accuracy"] <= 1.0
    losses = _records(runs["ar"], "loss")
    vae = losses["vae"]["metrics"]  # L2 reconstruction + beta KL of the CNN VAE
    assert vae["loss"] > vae["rec"] > 0 and vae["kl"] > 0
    assert np.isfinite(losses["givt"]["metrics"]["nll_per_token"])
    assert rec["givt"]["extra"]["num_classes"] == 3
    assert os.path.isfile(os.path.join(runs["ar"], "samples", "random_latents.png"))
    # the EMA of the VAE is what stage 2 used (saved next to the raw VAE)
    assert os.listdir(os.path.join(runs["ar"], "checkpoints", EMA_STAGE)) == ["3"]


def test_masked_run_reuses_the_vae(runs):
    rec = _records(runs["masked"])
    assert rec["givt"]["extra"]["style"] == "masked" and rec["givt"]["extra"]["num_steps"] == 4
    for stage in ("vae", EMA_STAGE):  # copied in: the run is self-contained
        assert os.listdir(os.path.join(runs["masked"], "checkpoints", stage)) == ["3"]


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_sampled_shapes_and_labels_checked(runs, style):
    run = load_run(runs[style])
    cfg, vae, givt = run.cfg, run.vae_params, run.givt_params
    gen = Predictor(cfg, vae, givt, batch_size=cfg.evals.sampled.batch_size)
    assert gen.settings.cfg_weight == 0.4  # the tiny config's guidance
    z = gen.sample_latents([3, 7, 7], seed=1)
    assert z.shape == (3, 64, 4) and np.all(np.isfinite(z))
    images = gen.decode_images(z)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    with pytest.raises(UserError, match="0..9"):
        gen.sample_latents([10])


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_cfg_weight_zero_equals_unguided_sampling(runs, style):
    """The guided sampler with w=0 draws exactly what the plain conditional sampler draws."""
    run = load_run(runs[style])
    cfg, vae, givt = run.cfg, run.vae_params, run.givt_params
    gen = Predictor(cfg, vae, givt, batch_size=cfg.evals.sampled.batch_size)
    labels = jax.numpy.asarray([1, 2, 3, 4], np.int32)
    key = jax.random.PRNGKey(5)
    kw = dict(labels=labels, temperature=0.9, temperature_probs=1.0)
    if style == "ar":
        plain, _ = sample_autoregressive(gen.model, givt, key, **kw)
        guided, _ = sample_autoregressive(gen.model, givt, key, cfg_weight=0.0, **kw)
        other, _ = sample_autoregressive(gen.model, givt, key, cfg_weight=2.0, **kw)
    else:
        kw.update(num_steps=4, choice_temperature=2.0)
        plain = sample_maskgit(gen.model, givt, key, **kw)
        guided = sample_maskgit(gen.model, givt, key, cfg_weight=0.0, **kw)
        other = sample_maskgit(gen.model, givt, key, cfg_weight=2.0, **kw)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(plain), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(other), np.asarray(plain))  # guidance does act


@pytest.mark.parametrize("style", ["ar", "masked"])
def test_completion_keeps_the_given_codes_and_writes_the_grid(runs, style, tmp_path, capsys):
    """Inpainting (MaskGIT: fixed tokens) and continuation (causal: keep_gt): the codes
    outside the region are the images' own, the region's are drawn; ``complete`` writes a
    row per image: original, given, completions."""
    from uvim_givt.sampling import completion
    from uvim_givt.sampling.predictor import Predictor
    from uvim_givt.training.runner import load_run
    run = load_run(runs[style], I.TASK)
    rows, cols = completion.code_grid(run.cfg)
    assert (rows, cols) == (8, 8)
    generated = completion.region_mask(rows, cols, "centre", 0.5)
    assert generated.reshape(8, 8)[2:6, 2:6].all() and generated.sum() == 16
    gen = Predictor(run.cfg, run.vae_params, run.givt_params)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    codes = np.asarray(gen.encode(images))
    done = np.asarray(gen.sample_codes(0, labels=np.array([1, 2], np.int32), given=codes,
                                       keep=~generated))
    np.testing.assert_allclose(done[:, ~generated], codes[:, ~generated], atol=1e-5)
    assert np.abs(done[:, generated] - codes[:, generated]).max() > 1e-2
    out = str(tmp_path / f"complete_{style}.png")
    assert I.main(["complete", "--ckpt", runs[style], "--region", "centre", "--num", "2",
                   "--samples", "3", "--out", out]) == 0
    png = cv2.imread(out)
    assert png is not None and png.shape[1] >= 5 * 64 and png.shape[0] >= 2 * 64
    assert "completing the centre 0.5 of 2 validation image(s)" in capsys.readouterr().out
    assert I.main(["complete", "--ckpt", runs[style], "--fraction", "1.5", "--out", out]) == 2
    assert "--fraction 1.5" in capsys.readouterr().err


def test_sample_command_writes_labelled_grid_and_latents(runs, tmp_path, capsys):
    out = str(tmp_path / "grid.png")
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "3,7", "--num", "5",
                   "--temp", "0.95", "--cfg", "0.4", "--out", out]) == 0
    png = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert png is not None and png.dtype == np.uint8
    assert png.shape[0] >= 2 * 64 and png.shape[1] >= 5 * 64  # cells drawn >= 64 px
    z = np.load(str(tmp_path / "grid.npy"))
    assert z.shape == (2, 5, 64, 4)
    # causal decoding options, and the unconditional model
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--num", "2",
                   "--beam", "2", "--fan", "2", "--rand-top-k-temp", "1.0", "--cfg", "0",
                   "--out", str(tmp_path / "beam.png")]) == 0
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--num", "2",
                   "--cfg", "1", "--cfg-proposals", "16", "--out", str(tmp_path / "c.png")]) == 0
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--num", "2",
                   "--unconditional", "--out", str(tmp_path / "u.png")]) == 0
    assert os.path.isfile(tmp_path / "u.png")
    # MaskGIT flags on the masked run, with the decoding trajectory
    assert I.main(["sample", "--ckpt", runs["masked"], "--classes", "0,5", "--num", "3",
                   "--steps", "3", "--choice-temp", "1.5", "--schedule", "pow:2",
                   "--trajectory", "--out", str(tmp_path / "m")]) == 0
    assert cv2.imread(str(tmp_path / "m.png")) is not None
    strip = cv2.imread(str(tmp_path / "m_trajectory.png"))
    assert strip is not None and strip.shape[1] >= 3 * 64 and strip.shape[0] >= 2 * 64
    capsys.readouterr()
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--trajectory",
                   "--out", str(tmp_path / "t.png")]) == 2
    assert "--trajectory shows MaskGIT decoding steps" in capsys.readouterr().err
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--unconditional",
                   "--cfg", "0.4", "--out", str(tmp_path / "t.png")]) == 2
    assert "takes no --cfg" in capsys.readouterr().err
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "1", "--beam", "2",
                   "--out", str(tmp_path / "t.png")]) == 2
    assert "beam search (beam_size=2, fan_size=1) and DB-CFG (cfg_weight=0.4) do not combine" \
        in capsys.readouterr().err
    assert I.main(["sample", "--ckpt", runs["masked"], "--classes", "1", "--schedule",
                   "square", "--out", str(tmp_path / "t.png")]) == 2
    assert "givt.sampling.schedule='square': expected cosine, linear or pow:K" \
        in capsys.readouterr().err


def test_labelled_grid_has_its_row_labels_left_of_the_pixels(tmp_path):
    """The class names are drawn in a margin left of an unchanged image grid."""
    images = np.full((4, 32, 32, 3), (40, 160, 220), np.uint8)  # 2 rows x 2 columns
    out = imagenet_commands.write_labelled_grid(str(tmp_path / "g.png"), images,
                                                ["0: zero", "1: one"])
    png = cv2.cvtColor(cv2.imread(out), cv2.COLOR_BGR2RGB)
    is_cell = np.all(np.abs(png.astype(int) - (40, 160, 220)) <= 2, axis=-1)
    ys, xs = np.nonzero(is_cell)
    assert xs.min() > 20  # a label margin on the left
    margin = png[ys.min():ys.max(), :xs.min()]
    assert (margin.min(axis=-1) < 100).sum() > 50  # dark text pixels in it
    cell = is_cell[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert cell.mean() > 0.99  # the grid itself is drawn whole


def test_sweep_writes_json_and_plot(runs, tmp_path, capsys):
    assert I.main(["sweep", "--ckpt", runs["ar"], "--cfg", "0,1", "--temps", "1.0",
                   "--num-per-class", "2", "--max-eval", "30", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "sweep.json"))
    assert [(r["temperature"], r["cfg_weight"]) for r in res["results"]] == [(1.0, 0.0),
                                                                             (1.0, 1.0)]
    assert all(np.isfinite(r["FID"]) for r in res["results"])
    assert cv2.imread(str(tmp_path / "sweep.png")) is not None


def test_user_errors_are_one_line(runs, tmp_path, capsys):
    assert I.main(["sample", "--ckpt", runs["ar"], "--classes", "3,x", "--out",
                   str(tmp_path / "g.png")]) == 2
    assert "--classes '3,x'" in capsys.readouterr().err
    assert I.main(["sample", "--ckpt", str(tmp_path / "nope"), "--classes", "1", "--out",
                   str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    # a stage-2 run whose GIVT does not fit the VAE's latents fails at start
    assert I.main(["train", "--workdir", str(tmp_path / "bad"), "--stage", "givt",
                   "--vae-ckpt", runs["ar"], *_sets(**{"givt.model.out_dim": 8})]) == 2
    assert "givt.model.out_dim=8 but the VAE's codes have 4 channels" in capsys.readouterr().err


def _flat(params):
    return {k: list(v.shape) for k, v in
            flax.traverse_util.flatten_dict(params, sep="/").items()}


@pytest.mark.parametrize("style,key", [("ar", "givt_imagenet256_causal"),
                                       ("masked", "givt_imagenet256_maskgit")])
def test_paper_presets_build_the_published_trees(style, key):
    cfg = load_config(f"configs/imagenet.py:size=paper,style={style}")
    check_config(cfg)
    assert _flat(abstract_params("givt", cfg)) == TREES[key]["params"]
    assert _flat(abstract_params("vae", cfg)) == TREES["vae_imagenet256_cnn"]["params"]


def test_probe_command_reports_layers_and_baselines(runs, tmp_path, capsys):
    for style in ("ar", "masked"):
        out = tmp_path / style
        assert I.main(["probe", "--ckpt", runs[style], "--max-train", "120", "--max-eval", "60",
                       "--batch-size", "40", "--out", str(out)]) == 0
        res = json.load(open(out / "probe.json"))
        assert set(res["top1"]) == {"pixels", "vae", "layer_1"}
        assert res["num_train"] == 120 and res["num_eval"] == 60
        assert all(0.0 <= v <= 1.0 for v in res["top1"].values())
        assert res["top1"]["pixels"] > 0.5  # digits are linearly separable from pixels
        assert cv2.imread(str(out / "probe.png")) is not None
    assert I.main(["probe", "--ckpt", runs["ar"], "--layer", "5", "--out",
                   str(tmp_path / "bad")]) == 2
    assert "--layer 5: the GIVT decoder has blocks 1..1" in capsys.readouterr().err


# ------------------------------------------------------------------- readers and routes
def _class_folder(root, sizes=((40, 60), (50, 50), (70, 30))):
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(sizes):
        d = root / ("cat" if k % 2 else "ant")
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{k}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_class_folder_reads_through_the_catalog(tmp_path):
    _class_folder(tmp_path)
    cfg = load_config("configs/imagenet.py")
    ds = catalog.load(I.TASK.readers, cfg, f"folder:{tmp_path}", "train")
    got = list(ds.as_numpy_iterator())
    assert [int(g["label"]) for g in got] == [0, 0, 1]  # sorted folder names: ant, cat
    assert [g["image"].shape[:2] for g in got] == [(40, 60), (70, 30), (50, 50)]
    assert set(got[0]) == {"image", "label"}
    assert I.TASK.class_names(cfg, f"folder:{tmp_path}") == ["ant", "cat"]
    with pytest.raises(Exception, match="no class sub-folders"):
        catalog.load(I.TASK.readers, cfg, f"folder:{tmp_path / 'ant'}", "train")


def _bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """big_vision's resize (bicubic, antialiased), clipped to the uint8 range."""
    import tensorflow as tf
    out = tf.image.resize(image.astype(np.float32), size, "bicubic", antialias=True).numpy()
    return np.clip(out, 0, 255)


def test_routes_resize_the_short_side_and_cut_a_square():
    import tensorflow as tf
    cfg = load_config("configs/imagenet.py")  # 32 px, no crop or flip (digits)
    assert cfg.data.crop_area_min == 1.0 and not cfg.data.flip
    rng = np.random.default_rng(1)
    example = {"image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
               "label": np.int64(7)}
    ev = I.TASK.preprocess(cfg, example, "eval")
    pr = I.TASK.preprocess(cfg, {"image": example["image"]}, "predict")
    tr = I.TASK.preprocess(cfg, example, "train", seed=tf.constant([0, 1], tf.int64))
    want = _bicubic(example["image"], (32, 43))[:, 5:37] / 127.5 - 1.0  # the central square
    for out in (ev, pr, tr):
        np.testing.assert_allclose(out["image"].numpy(), want, atol=1e-5)
        assert out["meta"]["size"].numpy().tolist() == [48, 64]
    assert int(ev["label"]) == 7 and int(tr["label"]) == 7 and "label" not in pr
    with pytest.raises(ValueError, match="mode 'test'"):
        I.TASK.preprocess(cfg, example, "test")


def test_paper_training_view_is_the_published_inception_crop():
    """givt_imagenet2012.py: decode_jpeg_and_inception_crop(area 80-100%, aspect 1, bicubic,
    antialias) | flip_lr. Every view of a square image must be a square box of at least 80%
    of the area, resized (found by brute force over all such boxes), maybe mirrored; on a
    4:3 image no square box reaches 80%, so TensorFlow's op (and big_vision) falls back to
    the whole image, squashed to a square."""
    import tensorflow as tf
    cfg = load_config("configs/imagenet.py:size=paper")
    assert cfg.data.crop_area_min == 0.8 and cfg.data.flip
    with cfg.unlocked():
        cfg.data.image_size = 16
    rng = np.random.default_rng(2)
    square = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    boxes = {(s, r, c): _bicubic(square[r:r + s, c:c + s], (16, 16)) / 127.5 - 1.0
             for s in range(18, 21) for r in range(21 - s) for c in range(21 - s)}
    seen = set()
    for seed in range(12):
        view = I.TASK.preprocess(cfg, {"image": square, "label": np.int64(1)}, "train",
                                 seed=tf.constant([seed, 3], tf.int64))["image"].numpy()
        hits = [(box, flip) for box, want in boxes.items() for flip in (False, True)
                if np.allclose(view, want[:, ::-1] if flip else want, atol=1e-4)]
        assert hits, f"seed {seed}: the view is no square box of >= 80% of the area"
        seen.add(hits[0])
    assert len(seen) > 2  # the box and the mirror vary with the seed
    wide = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    view = I.TASK.preprocess(cfg, {"image": wide, "label": np.int64(1)}, "train",
                             seed=tf.constant([0, 3], tf.int64))["image"].numpy()
    whole = _bicubic(wide, (16, 16)) / 127.5 - 1.0
    assert np.allclose(view, whole, atol=1e-4) or np.allclose(view, whole[:, ::-1], atol=1e-4)
    ev = I.TASK.preprocess(cfg, {"image": wide, "label": np.int64(1)}, "eval")["image"]
    np.testing.assert_allclose(ev.numpy(), _bicubic(wide, (16, 21))[:, 2:18] / 127.5 - 1.0,
                               atol=1e-5)  # evaluation: resize_small + central_crop


def test_metadata_declares_the_published_fids():
    family = I.TASK.metadata.family("generation")
    assert family.order == ("FID", "FID_recon", "IS", "IS_std", "precision", "recall", "KID",
                            "class_accuracy")
    assert family.primary == "FID" and not family.higher_is_better
    assert {(r.model, r.data, r.value) for r in family.references} == {
        ("GIVT-Causal 256px, t=0.95, DB-CFG 0.4", "ImageNet 256", 3.35),
        ("GIVT-MaskGIT 256px, t_C=35, DB-CFG 0.1", "ImageNet 256", 4.53),
        ("GIVT-MaskGIT 512px, t_C=140", "ImageNet 512", 4.86),
        ("MaskGIT (VQ, Chang et al. 2022), 8 steps", "ImageNet 256", 6.18),
        ("VQGAN + transformer (Esser et al. 2021)", "ImageNet 256", 15.78),
        ("ViT-VQGAN + VIM-L (Yu et al. 2022)", "ImageNet 256", 4.17)}
    loss = I.TASK.metadata.family("loss")
    assert loss.primary is None and loss.order[0] == "loss"


@pytest.mark.parametrize("command,flag", [("sample", "--rand-top-k-temp"),
                                          ("sweep", "--num-per-class"),
                                          ("probe", "--max-train")])
def test_commands_keep_their_flags(command, flag, capsys):
    with pytest.raises(SystemExit) as e:
        I.main([command, "--help"])
    assert e.value.code == 0 and flag in capsys.readouterr().out


def test_entry_point_resolves_to_the_task():
    from importlib import metadata
    (ep,) = [e for e in metadata.entry_points(group="uvim_givt.tasks") if e.name == "imagenet"]
    assert ep.value == "tasks.imagenet:TASK" and ep.load() is I.TASK


def test_embedded_digits_read_through_the_catalog():
    cfg = load_config("configs/imagenet.py")
    ds = catalog.load(I.TASK.readers, cfg, "embedded", "validation")
    got = list(ds.take(20).as_numpy_iterator())
    assert set(got[0]) == {"image", "label"}
    assert all(g["image"].shape == (32, 32, 3) and 0 <= g["label"] < 10 for g in got)
    assert I.TASK.num_classes(cfg, "embedded") == 10
