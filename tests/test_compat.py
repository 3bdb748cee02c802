"""Loading released big_vision checkpoints: layout conversion, reference trees, errors, CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import serialization, traverse_util

from uvim_givt.compat import big_vision as bv
from uvim_givt.config import load_config
from uvim_givt.models import builders
from uvim_givt.training import param_files as pf
from uvim_givt.training.checkpoint import load_params
from uvim_givt.training.trainer import count_params
from uvim_givt.training.warm_start import load_vit_encoder, warm_start_fn

TREES = Path(__file__).parent / "data" / "big_vision_param_trees.json"
CONFIGS = Path(__file__).parent.parent / "configs"
SDS = jax.ShapeDtypeStruct


# The tiny encoder without its conv stem, the published plain patch embedding (a big_vision
# ViT .npz has none).
NO_STEM = ["givt.model.stem=()", "givt.model.stem_strides=()"]


def flat_of(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def random_params(abstract, seed: int = 0):
    """Random values for every parameter (init would zero LogitsDense / decoder_head)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: rng.normal(0.0, 0.5, s.shape).astype(s.dtype), abstract)


def write_npz(path, params) -> str:
    np.savez(path, **{k: np.asarray(v) for k, v in flat_of(params).items()})
    return str(path)


def cfg_of(**groups) -> ml_collections.ConfigDict:
    if "givt" in groups:  # every config names its stage-2 kind (configs/common.py)
        groups["givt"] = {"kind": "givt", **groups["givt"]}
    return ml_collections.ConfigDict(groups)


# ---------------------------------------------------------------- tiny models, both layouts
TINY_GIVT = dict(emb_dim=32, num_heads=2, mlp_dim=64, num_decoder_layers=2, seq_len=4,
                 out_dim=3, num_labels=5, num_mixtures=2, head_kind="diag",
                 drop_labels_probability=0.1)
TINY_ENCDEC = dict(TINY_GIVT, num_layers=2, num_labels=None, patches=(4, 4), input_size=(8, 8),
                   num_mixtures=1, head_kind="per_channel", drop_labels_probability=0.0)
TINY_VIT_VAE = dict(input_size=(16, 16), patch_size=(8, 8), width=32, depth=2, decoder_depth=2,
                    mlp_dim=64, num_heads=2, code_len=4, codeword_dim=4)
TINY_CHANNELS = {"semantics": (0, 5), "instances": (1, 3)}


NO_ADAPTOR = dict(enabled=False)  # every config names its adaptor group (configs/common.py)


def _givt_cfg(model: dict, scan: bool):
    return cfg_of(givt=dict(model=dict(model, scan=scan), adaptor=NO_ADAPTOR))


def _vae_cfg(scan: bool):
    return cfg_of(vae=dict(kind="vit", model=dict(TINY_VIT_VAE, scan=scan,
                                                  label_channels=TINY_CHANNELS)))


def _inputs():
    rng = np.random.default_rng(1)
    return dict(targets=jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32),
                labels=jnp.asarray([1, 3], jnp.int32),
                image=jnp.asarray(rng.uniform(-1, 1, size=(2, 8, 8, 3)), jnp.float32),
                label_map=jnp.asarray(np.stack([rng.integers(0, 5, (2, 16, 16)),
                                                rng.integers(0, 3, (2, 16, 16))], -1),
                                      jnp.int32))


def _forward(kind: str, cfg):
    """A jitted params -> outputs function of the model ``cfg`` describes."""
    x = _inputs()
    if kind == "vae":
        model = builders.build_model("vae", cfg)
        return jax.jit(lambda p: model.apply({"params": p}, x["label_map"]))
    model = builders.build_model("givt", cfg)
    if kind == "encdec":
        return jax.jit(lambda p: model.apply({"params": p}, x["targets"], image=x["image"]))
    return jax.jit(lambda p: model.apply({"params": p}, x["targets"], x["labels"]))


CASES = {
    "givt": ("givt", lambda scan: _givt_cfg(TINY_GIVT, scan)),
    "encdec": ("givt", lambda scan: _givt_cfg(TINY_ENCDEC, scan)),
    "vae": ("vae", _vae_cfg),
}
# (path of one stacked parameter, axis of its layer stack) per case
STACKED = {
    "givt": ("decoder/EncDecBlock/MLP/Dense_0/kernel", 1),
    "encdec": ("encoder/encoderblock/MlpBlock_0/Dense_0/kernel", 0),
    "vae": ("decoder/encoderblock/MultiHeadDotProductAttention_0/query/kernel", 0),
}


def _unrolled(key: str, i: int) -> str:
    return key.replace("EncDecBlock/", f"EncDecBlock{i}/").replace(
        "encoderblock/", f"encoderblock_{i}/")


@pytest.mark.parametrize("case", list(CASES))
def test_layout_conversion_keeps_outputs(case, tmp_path):
    """Scanned -> unrolled and unrolled -> scanned give the same model outputs."""
    stage, make_cfg = CASES[case]
    cfgs = {scan: make_cfg(scan) for scan in (True, False)}
    forward = {scan: _forward(case, cfgs[scan]) for scan in (True, False)}
    stacked_key, axis = STACKED[case]
    for src_scan in (True, False):
        src = random_params(builders.abstract_params(stage, cfgs[src_scan]), seed=int(src_scan))
        flat = pf.load_npz(write_npz(tmp_path / f"{case}_{src_scan}.npz", src))
        dst = bv.load_into(stage, cfgs[not src_scan], flat)
        target = builders.abstract_params(stage, cfgs[not src_scan])
        assert jax.tree_util.tree_structure(dst) == jax.tree_util.tree_structure(target)
        # Layer i of the stacked parameter is the unrolled layer i.
        stacked_tree, unrolled_tree = (src, dst) if src_scan else (dst, src)
        stacked = flat_of(stacked_tree)[stacked_key]
        for i in range(stacked.shape[axis]):
            np.testing.assert_array_equal(np.take(stacked, i, axis),
                                          flat_of(unrolled_tree)[_unrolled(stacked_key, i)])
        out_src, out_dst = forward[src_scan](src), forward[not src_scan](dst)
        for a, b in zip(jax.tree_util.tree_leaves(out_src), jax.tree_util.tree_leaves(out_dst),
                        strict=True):
            assert np.abs(np.asarray(a)).max() > 0
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ paper-scale reference trees
def _paper_cfgs() -> dict[str, tuple[str, ml_collections.ConfigDict]]:
    """(stage, config) for each reference entry; only shapes are ever built."""
    pan = load_config("configs/panoptic.py:size=paper")
    depth = load_config("configs/depth.py:size=paper")
    imagenet = dict(emb_dim=1024, num_heads=16, mlp_dim=4096, num_decoder_layers=24,
                    seq_len=256, out_dim=16, num_labels=1000, num_mixtures=16, head_kind="diag",
                    drop_labels_probability=0.1, scan=True)
    maskgit = dict(imagenet, style="masked", mask_style="concat")
    return {
        "givt_uvim_panoptic_stage2": ("givt", pan),
        "vae_uvim_panoptic_stage1": ("vae", pan),
        "givt_uvim_depth_stage2": ("givt", depth),
        "vae_uvim_depth_stage1": ("vae", depth),
        "givt_imagenet256_causal": ("givt", cfg_of(givt=dict(model=imagenet,
                                                             adaptor=NO_ADAPTOR))),
        "givt_imagenet256_maskgit": ("givt", cfg_of(givt=dict(model=maskgit,
                                                              adaptor=NO_ADAPTOR))),
        "vae_imagenet256_cnn": ("vae", cfg_of(vae=dict(kind="cnn", model={}))),
    }


@pytest.mark.parametrize("name", list(_paper_cfgs()))
def test_reference_trees_map_onto_both_layouts(name):
    """Every published tree converts (shapes only) into our paper-scale model, scanned or not."""
    ref = json.loads(TREES.read_text())[name]
    source = {k: SDS(tuple(v), jnp.float32) for k, v in ref["params"].items()}
    stage, cfg = _paper_cfgs()[name]
    group = cfg.givt.model if stage == "givt" else cfg.vae.model
    layouts = (True, False) if "scan" in group else (None,)
    for scan in layouts:
        if scan is not None:
            group.scan = scan
        target = builders.abstract_params(stage, cfg)
        out = pf.convert_layout(source, target)
        shapes = {k: v.shape for k, v in flat_of(out).items()}
        assert shapes == {k: v.shape for k, v in flat_of(target).items()}
        assert all(isinstance(v, SDS) for v in flat_of(out).values())
        assert count_params(out) == ref["num_params"]
        if scan is None or bool(scan) == any("EncDecBlock/" in k or "encoderblock/" in k
                                             for k in ref["params"]):
            assert {k: list(v) for k, v in shapes.items()} == ref["params"]  # same layout


def test_infer_stage_from_reference_keys():
    trees = json.loads(TREES.read_text())
    for name, entry in trees.items():
        assert bv.infer_stage(list(entry["params"])) == name.split("_")[0]
    with pytest.raises(ValueError, match="pass --stage"):
        bv.infer_stage(["foo/bar"])


# ------------------------------------------------------------------------- mismatch errors
def _target():
    return {"EmbedTargets": {"kernel": SDS((2, 4), jnp.float32)},
            "decoder": {"EncDecBlock": {"MLP": {"kernel": SDS((4, 3, 5), jnp.float32)}},
                        "LayerNorm": {"scale": SDS((4,), jnp.float32)}}}


def _source(**changes):
    flat = {"EmbedTargets/kernel": np.zeros((2, 4), np.float32),
            "decoder/LayerNorm/scale": np.ones((4,), np.float32)}
    flat.update({f"decoder/EncDecBlock{i}/MLP/kernel": np.full((4, 5), i, np.float32)
                 for i in range(3)})
    for k, v in changes.items():
        k = k.replace("__", "/")
        if v is None:
            flat.pop(k)
        else:
            flat[k] = v
    return flat


def test_convert_layout_ok_and_dtype():
    src = _source(EmbedTargets__kernel=np.ones((2, 4), np.float64))
    out = pf.convert_layout(src, _target())
    assert out["EmbedTargets"]["kernel"].dtype == np.float32
    k = out["decoder"]["EncDecBlock"]["MLP"]["kernel"]
    assert k.shape == (4, 3, 5)
    np.testing.assert_array_equal(k[0, :, 0], [0, 1, 2])  # layers on axis 1


def test_mismatch_lists_missing_unexpected_and_shapes():
    src = _source(EmbedTargets__kernel=np.zeros((3, 4), np.float32),
                  decoder__LayerNorm__scale=None, foo__bar=np.zeros(1),
                  decoder__EncDecBlock3__MLP__kernel=np.zeros((4, 5)),
                  decoder__EncDecBlock1__MLP__kernel=None)
    with pytest.raises(pf.CheckpointMismatch) as e:
        pf.convert_layout(src, _target(), context="unit")
    err = e.value
    assert err.missing == ["decoder/EncDecBlock1/MLP/kernel", "decoder/LayerNorm/scale"]
    assert err.unexpected == ["decoder/EncDecBlock3/MLP/kernel", "foo/bar"]
    assert len(err.shapes) == 1 and "EmbedTargets/kernel" in err.shapes[0]
    msg = str(err)
    assert "(unit): 2 missing, 2 unexpected, 1 with a different shape" in msg
    for s in ("decoder/LayerNorm/scale", "foo/bar", "(3, 4)", "(2, 4)"):
        assert s in msg
    assert isinstance(err, ValueError)


def test_mismatch_per_layer_shape_and_layer_count():
    src = _source(decoder__EncDecBlock2__MLP__kernel=np.zeros((4, 6)))
    with pytest.raises(pf.CheckpointMismatch, match=r"EncDecBlock2/MLP/kernel: checkpoint "
                                                    r"\(4, 6\), model \(4, 5\)"):
        pf.convert_layout(src, _target())
    # A stacked checkpoint with 3 layers cannot fill a 2-layer unrolled model.
    target = {f"EncDecBlock{i}": {"k": SDS((4, 5), jnp.float32)} for i in range(2)}
    with pytest.raises(pf.CheckpointMismatch, match=r"EncDecBlock/k: checkpoint \(4, 3, 5\), "
                                                    r"model \(4, 2, 5\)"):
        pf.convert_layout({"EncDecBlock/k": np.zeros((4, 3, 5))}, target)


def test_mismatch_message_is_capped():
    target = {f"p{i}": SDS((1,), jnp.float32) for i in range(25)}
    with pytest.raises(pf.CheckpointMismatch) as e:
        pf.convert_layout({}, target)
    assert len(e.value.missing) == 25
    assert "missing from the checkpoint (25)" in str(e.value)
    assert "... and 15 more" in str(e.value)


# ------------------------------------------------------------------------------ files
def test_load_npz_errors_name_the_file(tmp_path):
    with pytest.raises(pf.CheckpointFileError, match="nope.npz does not exist"):
        pf.load_npz(str(tmp_path / "nope.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00garbage that is no checkpoint")
    with pytest.raises(pf.CheckpointFileError, match="bad.npz"):
        pf.load_npz(str(bad))
    truncated = tmp_path / "trunc.npz"
    write_npz(truncated, {"a": np.zeros((100,))})
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(pf.CheckpointFileError, match="trunc.npz"):
        pf.load_npz(str(truncated))
    with pytest.raises(pf.CheckpointFileError, match="is a directory"):
        pf.load_npz(str(tmp_path))


def test_load_npz_drops_train_state_prefix(tmp_path):
    path = write_npz(tmp_path / "train.npz", {"params": {"a": {"b": np.ones(2)}},
                                              "opt": {"mu": np.zeros(2)}})
    assert list(pf.load_npz(path)) == ["a/b"]


def test_msgpack_cnn_vae(tmp_path):
    """A MaskGIT-style flax checkpoint of a tiny CNN VAE: EMA by default, g_params on demand."""
    cfg = cfg_of(vae=dict(kind="cnn", model=dict(
        filters=32, num_res_blocks=1, channel_multipliers=(1, 2), codeword_dim=4,
        input_size=(16, 16))))
    target = builders.abstract_params("vae", cfg)
    ema, gen = random_params(target, 0), random_params(target, 1)
    strip = lambda p: {k[len("cnn_"):]: v for k, v in p.items()}
    state = {"ema_params": strip(ema), "g_params": strip(gen), "d_params": {"x": np.zeros(3)},
             "step": 7}
    path = tmp_path / "checkpoint_7"
    path.write_bytes(serialization.msgpack_serialize(state))
    flat = pf.load_npz(str(path))
    assert all(k.startswith(("cnn_encoder/", "cnn_decoder/")) for k in flat)
    assert bv.infer_stage(list(flat)) == "vae"
    for choice, want in ((None, ema), ("g_params", gen)):
        got = bv.load_into("vae", cfg, pf.load_npz(str(path), msgpack_params=choice))
        for k, v in flat_of(want).items():
            np.testing.assert_array_equal(flat_of(got)[k], v)
    path.write_bytes(serialization.msgpack_serialize({"params": strip(ema)}))
    with pytest.raises(pf.CheckpointFileError, match="without ema_params or g_params"):
        pf.load_npz(str(path))


def test_vae_kind_and_label_channels_come_from_the_config():
    """The builders read the VAE kind and label channels from the config (no task import):
    the published depth and panoptic channels, and clear errors naming the key."""
    assert builders.label_channels(load_config("configs/panoptic.py:size=paper")) == {
        "semantics": (0, 134), "instances": (1, 100)}
    assert builders.label_channels(load_config("configs/depth.py:size=paper")) == {
        "depth": (0, 256)}
    with pytest.raises(ValueError, match="vae.model.label_channels"):
        builders.label_channels(cfg_of(vae=dict(kind="vit", model={})))
    with pytest.raises(ValueError, match="vae.kind='gan'"):
        builders.build_model("vae", cfg_of(vae=dict(kind="gan", model={})))


# -------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(tmp_path, capsys):
    """Tiny panoptic config: a scanned .npz goes into the (unrolled) tiny model's run dir."""
    spec = "configs/panoptic.py:size=tiny"
    layers = ["givt.model.num_layers=3"]  # the tiny preset has 1: slice 2 of 3 is checked
    scanned = load_config(spec, ["givt.model.scan=True", "vae.model.scan=True", *layers])
    givt_src = random_params(builders.abstract_params("givt", scanned), 0)
    vae_src = random_params(builders.abstract_params("vae", scanned), 1)
    givt_npz = write_npz(tmp_path / "givt.npz", givt_src)
    vae_npz = write_npz(tmp_path / "vae.npz", vae_src)
    run = str(tmp_path / "run")

    sets = [a for s in layers for a in ("--set", s)]
    assert bv.main(["--npz", givt_npz, "--config", spec, "--out", run, *sets]) == 0
    assert bv.main(["--npz", vae_npz, "--config", spec, "--out", run, "--step", "5",
                    *sets]) == 0
    printed = capsys.readouterr().out
    assert "a givt checkpoint" in printed and "a vae checkpoint" in printed

    cfg = load_config(spec, layers)
    for stage, src, step in (("givt", givt_src, 0), ("vae", vae_src, 5)):
        params, got_step = load_params(run, stage)
        assert got_step == step
        want = bv.load_into(stage, cfg, flat_of(src))
        assert set(flat_of(params)) == set(flat_of(want))
        for k, v in flat_of(want).items():
            np.testing.assert_array_equal(np.asarray(flat_of(params)[k]), v)
    givt_params, _ = load_params(run, "givt")
    # Layer 2 of the unrolled encoder is slice 2 of the scanned stack (axis 0 for ViT
    # encoders, axis 1 for the GIVT decoder).
    np.testing.assert_array_equal(
        givt_params["encoder"]["encoderblock_2"]["MlpBlock_0"]["Dense_0"]["kernel"],
        givt_src["encoder"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"][2])
    info = json.loads(Path(run, "run_info.json").read_text())
    assert info["num_params"] == {"givt": count_params(givt_src),
                                  "vae": count_params(vae_src)}
    assert info["source"] == f"big_vision npz: {vae_npz}"
    assert json.loads(Path(run, "config.json").read_text())["task"] == "panoptic"


@pytest.mark.parametrize("args,expect", [
    (["--npz", "{tmp}/missing.npz"], "missing.npz does not exist"),
    (["--npz", "{tmp}/givt.npz", "--set", "givt.model.emb_dim=64"], "shape differs"),
    (["--npz", "{tmp}/givt.npz", "--set", "givt.model.nope=1"], "unknown config key"),
    (["--npz", "{tmp}/givt.npz", "--stage", "vae"], "missing from the checkpoint"),
    (["--npz", "{tmp}/givt.npz", "--out", "{tmp}/run"], "already has a checkpoint at step 0"),
])
def test_cli_errors_exit_2_without_traceback(tmp_path, capsys, args, expect):
    spec = "configs/panoptic.py:size=tiny"
    cfg = load_config(spec)
    write_npz(tmp_path / "givt.npz", random_params(builders.abstract_params("givt", cfg)))
    if "{tmp}/run" in args:
        assert bv.main(["--npz", str(tmp_path / "givt.npz"), "--config", spec,
                        "--out", str(tmp_path / "run")]) == 0
    args = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "other")]
    capsys.readouterr()
    assert bv.main(args + ["--config", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "other" / "checkpoints")


def _fake_vit_npz(path, enc_params, side: int, width: int) -> dict[str, np.ndarray]:
    """A big_vision ViT classifier .npz (scanned layers, cls token, head) of random values,
    with the shapes of a GIVT encoder (`enc_params`, its encoder subtree) but a `side`^2
    position grid."""
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(enc_params, sep="/")
    blocks = sorted({k.split("/")[0] for k in flat if k.startswith("encoderblock_")})
    out = {"cls": rng.normal(size=(1, 1, width)),
           "head/kernel": rng.normal(size=(width, 10)), "head/bias": np.zeros(10),
           "embedding/kernel": rng.normal(size=(8, 8, 3, width)),
           "embedding/bias": rng.normal(size=(width,)),
           # pos_embedding[0, r*side + c, :] = r: a ramp, which bilinear resampling keeps linear
           "pos_embedding": np.repeat(np.arange(side, dtype=np.float32), side)[None, :, None]
           * np.ones((1, 1, width), np.float32)}
    for k, v in flat.items():
        if k.startswith("encoder_norm/"):
            out[f"Transformer/{k}"] = rng.normal(size=v.shape)
        elif k.startswith("encoderblock_0/"):
            rest = k.split("/", 1)[1]
            out[f"Transformer/encoderblock/{rest}"] = rng.normal(size=(len(blocks), *v.shape))
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in out.items()})
    return out


def _stage2_params(cfg):
    model, adaptor = builders.build_model("givt", cfg), builders.build_adaptor(cfg)
    return jax.jit(lambda k: builders.init_givt_stage(model, adaptor, k))(jax.random.PRNGKey(0))


def test_init_encoder_loads_a_big_vision_vit(tmp_path, capsys):
    from uvim_givt.errors import UserError
    # 3 encoder layers (the tiny preset has 1), so that slice 2 of the stack is checked
    cfg = load_config("configs/depth.py", [*NO_STEM, "givt.model.num_layers=3"])
    stage_cfg = ml_collections.ConfigDict(cfg.to_dict())
    params = _stage2_params(cfg)
    npz = str(tmp_path / "vit.npz")
    src = _fake_vit_npz(npz, params["encoder"], side=4, width=96)

    assert warm_start_fn(stage_cfg, "givt") is None and warm_start_fn(stage_cfg, "vae") is None
    stage_cfg.givt.init_encoder = npz
    out = warm_start_fn(stage_cfg, "givt")(params)
    assert f"stage-2 image encoder initialised from {npz}" in capsys.readouterr().out
    np.testing.assert_allclose(out["EmbedPatches"]["kernel"], src["embedding/kernel"], rtol=1e-6)
    np.testing.assert_allclose(out["encoder"]["encoderblock_2"]["MlpBlock_0"]["Dense_0"]["kernel"],
                               src["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][2],
                               rtol=1e-6)
    np.testing.assert_allclose(out["encoder"]["encoder_norm"]["scale"],
                               src["Transformer/encoder_norm/scale"], rtol=1e-6)
    # 4x4 -> 8x8 bilinear: the row ramp 0..3 becomes 8 evenly spaced rows from 0 to 3.
    pos = np.asarray(out["pos_embedding_encoder"]).reshape(8, 8, 96)
    np.testing.assert_allclose(pos[:, :, 0], np.linspace(0, 3, 8)[:, None] * np.ones((1, 8)),
                               atol=1e-5)
    # The decoder and target embedding keep their initial values.
    np.testing.assert_array_equal(out["EmbedTargets"]["kernel"], params["EmbedTargets"]["kernel"])
    # An explicit encoder grid is used as given (here the model's own).
    out2 = warm_start_fn(stage_cfg, "givt", encoder_grid=(8, 8))(params)
    np.testing.assert_array_equal(out2["pos_embedding_encoder"], out["pos_embedding_encoder"])

    # A ViT of another width: the error names the parameter and both shapes.
    bad = str(tmp_path / "vit64.npz")
    small = load_config("configs/depth.py", [*NO_STEM, "givt.model.emb_dim=64",
                                             "givt.model.mlp_dim=128"])
    _fake_vit_npz(bad, _stage2_params(small)["encoder"], side=8, width=64)
    stage_cfg.givt.init_encoder = bad
    with pytest.raises(UserError, match=r"(?s)givt\.init_encoder='.*vit64\.npz'.*shape differs"
                                        r".*EmbedPatches/kernel"):
        warm_start_fn(stage_cfg, "givt")(params)


def test_givt_init_then_init_encoder_in_that_order(tmp_path, capsys):
    """``givt.init.path`` loads the whole tree first, then ``init_encoder`` the encoder."""
    cfg = load_config("configs/depth.py", NO_STEM)
    params = _stage2_params(cfg)
    whole = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1.0, params)
    run_npz = pf.save_npz(str(tmp_path / "whole.npz"), whole)
    vit = str(tmp_path / "vit.npz")
    src = _fake_vit_npz(vit, params["encoder"], side=8, width=96)
    cfg.givt.init.path, cfg.givt.init.dont_load = run_npz, ("EmbedTargets/bias",)
    cfg.givt.init_encoder = vit
    out = warm_start_fn(cfg, "givt")(params)
    printed = capsys.readouterr().out
    assert printed.index(f"givt: initialised from {run_npz} (not loaded: EmbedTargets/bias)") \
        < printed.index("stage-2 image encoder initialised from")
    np.testing.assert_array_equal(out["EmbedTargets"]["kernel"], whole["EmbedTargets"]["kernel"])
    np.testing.assert_array_equal(out["EmbedTargets"]["bias"], params["EmbedTargets"]["bias"])
    np.testing.assert_allclose(out["EmbedPatches"]["kernel"], src["embedding/kernel"], rtol=1e-6)


# ------------------------------------------------------ non-finite or non-float values
BAD_VALUES = {
    "nan": (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 1, np.nan, x)
            .astype(np.float32), "non-finite values (NaN"),
    "inf": (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 0, -np.inf, x)
            .astype(np.float32), "non-finite values (inf"),
    "int32": (lambda x: np.round(x).astype(np.int32), "is int32, expected floats"),
}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_convert_refuses_bad_values_naming_file_and_key(tmp_path, capsys, bad):
    spoil, expect = BAD_VALUES[bad]
    spec = "configs/panoptic.py:size=tiny"
    flat = flat_of(random_params(builders.abstract_params("givt", load_config(spec))))
    key = "EmbedTargets/kernel"
    flat[key] = spoil(flat[key])
    npz = write_npz(tmp_path / "givt.npz", flat)
    with pytest.raises(pf.CheckpointValueError) as e:
        bv.load_into("givt", load_config(spec), pf.load_npz(npz), file=npz)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{npz}: parameter {key!r}") and expect in msg
    assert isinstance(e.value, bv.CheckpointFileError)
    # The command line: one error line, exit 2, nothing written.
    assert bv.main(["--npz", npz, "--config", spec, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"parameter {key!r}" in err and expect in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_layout_conversion_refuses_bad_values_in_stacked_and_sliced_layers(bad):
    spoil, expect = BAD_VALUES[bad]
    # unrolled checkpoint -> scanned model: the bad layer is named
    src = _source(decoder__EncDecBlock1__MLP__kernel=spoil(np.ones((4, 5))))
    with pytest.raises(pf.CheckpointValueError,
                       match=rf"^ckpt\.npz: parameter 'decoder/EncDecBlock1/MLP/kernel' "
                             rf".*{re.escape(expect)}"):
        pf.convert_layout(src, _target(), file="ckpt.npz")
    # a value with no float parameter to go to is not checked; a shape-only dry run is
    pf.convert_layout(_source(), _target())
    dry = {k: SDS(v.shape, spoil(np.ones(1)).dtype) for k, v in _source().items()}
    if bad == "int32":
        with pytest.raises(pf.CheckpointValueError, match="checkpoint: parameter"):
            pf.convert_layout(dry, _target())
    else:
        pf.convert_layout(dry, _target())


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_init_encoder_refuses_bad_values(tmp_path, bad):
    from uvim_givt.errors import UserError
    spoil, expect = BAD_VALUES[bad]
    cfg = load_config("configs/depth.py", NO_STEM)
    params = _stage2_params(cfg)
    for key in ("embedding/kernel", "pos_embedding"):  # the latter is resampled (4x4 -> 8x8)
        npz = str(tmp_path / "vit.npz")
        src = _fake_vit_npz(npz, params["encoder"], side=4, width=96)
        np.savez(npz, **{k: spoil(v) if k == key else np.asarray(v, np.float32)
                         for k, v in src.items()})
        with pytest.raises(pf.CheckpointValueError,
                           match=rf"^{re.escape(npz)}: parameter '{key}' "):
            load_vit_encoder(npz, params, (8, 8))
        cfg.givt.init_encoder = npz
        with pytest.raises(UserError, match=rf"givt\.init_encoder=.*parameter '{key}'"
                                            rf".*{re.escape(expect)}"):
            warm_start_fn(cfg, "givt")(params)


def test_converter_msgpack_choices_are_the_loaders_groups():
    # The converter spells the groups so that its --help needs no JAX; they must stay the
    # loader's.
    assert bv._MSGPACK_CHOICES == pf.MSGPACK_PARAM_GROUPS


# ------------------------------------------------------ the original UViM's checkpoints
UVIM_TREES = json.loads((Path(__file__).parent / "data" / "uvim_param_trees.json").read_text())
UVIM_CASES = {  # reference entry -> (stage, config of its tokens=vq preset)
    "uvim_vqvae_coco_panoptic": ("vae", "configs/panoptic.py:size=paper,tokens=vq"),
    "uvim_vqvae_nyu_depth": ("vae", "configs/depth.py:size=paper,tokens=vq"),
    "uvim_vtt_large_stage2": ("givt", "configs/panoptic.py:size=paper,tokens=vq"),
}


@pytest.mark.parametrize("name", list(UVIM_CASES))
def test_uvim_reference_trees_load_name_for_name(name):
    """The published VQ-VAE (params + dictionary state) and VTT trees convert (shapes only)
    into our paper presets, every key to the same key."""
    ref = UVIM_TREES[name]
    stage, spec = UVIM_CASES[name]
    source = {k: SDS(tuple(v), jnp.float32) for k, v in ref["params"].items()}
    state = {k: SDS(tuple(v), jnp.float32) for k, v in ref.get("state", {}).items()}
    assert bv.infer_stage(list(source)) == stage
    out = bv.load_into(stage, load_config(spec), source, state=state)
    params = out["params"] if state else out
    assert {k: list(v.shape) for k, v in flat_of(params).items()} == ref["params"]
    assert count_params(params) == ref["num_params"]
    if state:
        assert {k: list(v.shape) for k, v in out["state"].items()} == ref["state"]


# A ViT block's modules in the order they are called (a pre-linen counter's order).
_CALL_ORDER = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")


def _pre_linen(flat: dict) -> dict:
    """The same tree under pre-linen names: one counter over each module's numbered children
    (in call order for a ViT block, else by class name and number), and
    ``Encoder``/``Decoder`` on top."""
    children: dict[str, set[str]] = {}
    for key in flat:
        parts = key.split("/")
        for i in range(len(parts) - 1):
            children.setdefault("/".join(parts[:i]), set()).add(parts[i])
    rename = {}
    for parent, names in children.items():
        numbered = sorted(
            ((n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1]), n) for n in names
             if re.fullmatch(r".*_\d+", n)),
            key=lambda t: (_CALL_ORDER.index(t[2]) if t[2] in _CALL_ORDER else 9, t))
        if len({c for c, _, _ in numbered}) > 1:  # several classes: one shared counter
            rename.update({(parent, n): f"{c}_{i}" for i, (c, _, n) in enumerate(numbered)})
    out = {}
    for key, v in flat.items():
        parts = key.split("/")
        new = [rename.get(("/".join(parts[:i]), p), p) for i, p in enumerate(parts)]
        new[0] = {"encoder": "Encoder", "decoder": "Decoder"}.get(new[0], new[0])
        out["/".join(new)] = v
    return out


def test_cli_converts_uvim_checkpoints_into_a_run(tmp_path, capsys):
    """Tiny tokens=vq panoptic: a VQ-VAE training checkpoint (params/ and state/, as
    big_vision saves it) in older module names (pre-linen numbering, ``Encoder``) and a VTT
    parameter file in linen names go into one run directory, which the runner's loaders
    read back value for value."""
    from uvim_givt.training import runner

    spec = "configs/panoptic.py:size=tiny,tokens=vq"
    cfg = load_config(spec)
    variables = builders.abstract_params("vae", cfg)
    vq_params = random_params(variables["params"], 0)
    rng = np.random.default_rng(2)
    state = {"dictionary": rng.normal(size=variables["state"]["dictionary"].shape),
             "counts": rng.uniform(0.5, 3.0, size=variables["state"]["counts"].shape)}
    vtt_params = random_params(builders.abstract_params("givt", cfg), 1)
    vq_flat = {f"params/{k}": v for k, v in flat_of(vq_params).items()}
    vtt_flat = flat_of(vtt_params)
    vq_flat = {"params/" + k: v for k, v in
               _pre_linen({k[7:]: v for k, v in vq_flat.items()}).items()}
    assert "params/Encoder/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel" \
        in vq_flat  # the renaming is real
    vq_flat.update({f"state/{k}": np.asarray(v, np.float32) for k, v in state.items()})
    np.savez(tmp_path / "stageI.npz", **vq_flat)
    np.savez(tmp_path / "stageII.npz", **vtt_flat)
    run = str(tmp_path / "run")

    assert bv.main(["--npz", str(tmp_path / "stageI.npz"), "--config", spec, "--out", run]) == 0
    assert bv.main(["--npz", str(tmp_path / "stageII.npz"), "--config", spec,
                    "--out", run]) == 0
    printed = capsys.readouterr().out
    assert "a state (counts, dictionary)" in printed and "a vae checkpoint" in printed
    assert "a givt checkpoint" in printed

    got, _, _ = runner.load_vae_params(run, cfg)
    for k, v in flat_of(vq_params).items():
        np.testing.assert_array_equal(np.asarray(flat_of(got["params"])[k]), v)
    for k, v in state.items():
        np.testing.assert_array_equal(np.asarray(got["state"][k]), v.astype(np.float32))
    got_vtt, _ = runner.load_givt_params(run, cfg)
    assert set(flat_of(got_vtt)) == set(vtt_flat)
    for k, v in flat_of(vtt_params).items():
        np.testing.assert_array_equal(np.asarray(flat_of(got_vtt)[k]), v)


def test_vq_checkpoint_and_continuous_config_disagree_in_one_line(tmp_path, capsys):
    spec = "configs/panoptic.py:size=tiny"
    vq = builders.abstract_params("vae", load_config(spec + ",tokens=vq"))
    flat = {f"params/{k}": v for k, v in flat_of(random_params(vq["params"])).items()}
    flat.update({f"state/{k}": np.ones(v.shape, np.float32) for k, v in vq["state"].items()})
    np.savez(tmp_path / "vq.npz", **flat)
    vae = flat_of(random_params(builders.abstract_params("vae", load_config(spec))))
    np.savez(tmp_path / "vae.npz", **vae)
    for npz, config, expect in (("vq.npz", spec, "use the config's tokens=vq variant"),
                                ("vae.npz", spec + ",tokens=vq", "has no dictionary")):
        assert bv.main(["--npz", str(tmp_path / npz), "--config", config,
                        "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expect in err and "Traceback" not in err


def test_linen_names_keep_linen_and_ambiguous_trees():
    linen = {"b/LayerNorm_0/scale": 1, "b/LayerNorm_1/scale": 2, "b/MlpBlock_0/Dense_0/k": 3,
             "b/MlpBlock_0/Dense_1/k": 4, "encoder/encoderblock_0/x": 5}
    assert pf.linen_names(linen) == linen
    gap = {"encoder/encoderblock_0/x": 1, "encoder/encoderblock_2/x": 2}  # a missing layer
    assert pf.linen_names(gap) == gap
    assert pf.linen_names({"Encoder/LayerNorm_0/s": 1, "Encoder/Dense_1/k": 2}) == {
        "encoder/LayerNorm_0/s": 1, "encoder/Dense_0/k": 2}
