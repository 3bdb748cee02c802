"""Paper-scale GIVT models build exactly the published big_vision parameter trees."""

import json
import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvim_givt.config import load_config
from uvim_givt.models.builders import build_model
from uvim_givt.models.givt import GIVT

REF = json.load(open(os.path.join(os.path.dirname(__file__), "data",
                                  "big_vision_param_trees.json")))


def _tree(model, *args, **kwargs):
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    flat = flax.traverse_util.flatten_dict(shapes["params"], sep="/")
    return {k: list(v.shape) for k, v in flat.items()}


def _assert_same(name, tree):
    ref = REF[name]["params"]
    assert sorted(set(ref) - set(tree)) == [], "missing"
    assert sorted(set(tree) - set(ref)) == [], "unexpected"
    assert {k: tree[k] for k in ref if tree[k] != ref[k]} == {}, "shapes differ"
    assert sum(math.prod(s) for s in tree.values()) == REF[name]["num_params"]


IMAGENET = dict(emb_dim=1024, num_heads=16, mlp_dim=4096, num_decoder_layers=24, seq_len=256,
                out_dim=16, num_labels=1000, num_mixtures=16, head_kind="diag",
                drop_labels_probability=0.1, scan=True)


def test_givt_causal_imagenet256_tree():
    _assert_same("givt_imagenet256_causal",
                 _tree(GIVT(**IMAGENET), jnp.zeros((1, 256, 16)), jnp.zeros((1,), jnp.int32)))


def test_givt_maskgit_imagenet256_tree():
    model = GIVT(**IMAGENET, style="masked", mask_style="concat")
    _assert_same("givt_imagenet256_maskgit",
                 _tree(model, jnp.zeros((1, 256, 16)), jnp.zeros((1,), jnp.int32),
                       input_mask=jnp.zeros((1, 256), bool)))


@pytest.mark.parametrize("task", ["panoptic", "depth"])
def test_uvim_stage2_tree_from_paper_config(task):
    if not os.path.exists(os.path.join("configs", f"{task}.py")) and task == "depth":
        pytest.skip("depth config not present")
    cfg = load_config(f"configs/{task}.py:size=paper")
    model = build_model("givt", cfg)
    _assert_same(f"givt_uvim_{task}_stage2",
                 _tree(model, jnp.zeros((1, model.seq_len, model.out_dim)),
                       image=jnp.zeros((1, 512, 512, 3))))



def _conv_same_np(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int = 2
                  ) -> np.ndarray:
    """Brute-force 3x3 SAME convolution in numpy at ``stride`` (NHWC, HWIO; TF/XLA padding)."""
    b, h, w, _ = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    pad_h, pad_w = max((oh - 1) * stride + 3 - h, 0), max((ow - 1) * stride + 3 - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2),
                    (0, 0)))
    out = np.zeros((b, oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, stride * i:stride * i + 3, stride * j:stride * j + 3]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", window, kernel)
    return out + bias


def _gelu_tanh(v: np.ndarray) -> np.ndarray:
    """flax's default nn.gelu (the tanh approximation)."""
    return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))


def _embed_image_np(params: dict, img: jax.Array, strides: tuple[int, ...]) -> np.ndarray:
    """GIVT.embed_image in numpy: the stem's convs (GELU after each) at ``strides``, then
    the 2x2 patch embedding of an 8x8 grid of 16-channel stem features -> [B, 16, 32]."""
    x = np.asarray(img, np.float64)
    for i, stride in enumerate(strides):
        layer = params[f"Stem_{i}"]
        x = _gelu_tanh(_conv_same_np(x, np.asarray(layer["kernel"], np.float64),
                                     np.asarray(layer["bias"], np.float64), stride))
    assert x.shape == (2, 8, 8, 16)
    e = params["EmbedPatches"]
    tokens = np.einsum("bhpwqc,pqco->bhwo", x.reshape(2, 4, 2, 4, 2, 16),
                       np.asarray(e["kernel"], np.float64)) + np.asarray(e["bias"])
    return tokens.reshape(2, 16, 32)


def test_encoder_conv_stem_matches_numpy_and_keeps_token_grid():
    kw = dict(num_labels=None, emb_dim=32, num_heads=2, mlp_dim=64, num_layers=1,
              num_decoder_layers=1, seq_len=16, out_dim=4, num_mixtures=1,
              input_size=(32, 32), patches=(8, 8))
    plain, stem = GIVT(**kw), GIVT(**kw, stem=(8, 16))
    img = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    z = jnp.zeros((2, 16, 4))
    p_plain = plain.init(jax.random.PRNGKey(0), z, None, image=img)["params"]
    p_stem = stem.init(jax.random.PRNGKey(0), z, None, image=img)["params"]
    # The published tree has no stem; the stem adds exactly Stem_0/1, and the patch
    # embedding then covers 8 / 2**2 = 2x2 pixels of the 16-channel stem output.
    assert not any(k.startswith("Stem") for k in p_plain)
    assert set(p_stem) - set(p_plain) == {"Stem_0", "Stem_1"}
    assert p_stem["EmbedPatches"]["kernel"].shape == (2, 2, 16, 32)
    assert stem.apply({"params": p_stem}, img, method=GIVT.encode).shape == (2, 16, 32)

    got = stem.apply({"params": p_stem}, img, method=GIVT.embed_image)
    np.testing.assert_allclose(np.asarray(got), _embed_image_np(p_stem, img, (2, 2)),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not divisible"):
        GIVT(**kw, stem=(8, 8, 8, 8)).init(jax.random.PRNGKey(0), z, None, image=img)


def test_encoder_stem_strides_match_numpy():
    # stem_strides=(1, 2, 2): a full-resolution first layer, then the two stride-2 layers;
    # the downsampling (4) and so the 2x2 patch embedding and token grid are unchanged.
    kw = dict(num_labels=None, emb_dim=32, num_heads=2, mlp_dim=64, num_layers=1,
              num_decoder_layers=1, seq_len=16, out_dim=4, num_mixtures=1,
              input_size=(32, 32), patches=(8, 8))
    model = GIVT(**kw, stem=(4, 8, 16), stem_strides=(1, 2, 2))
    img = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    z = jnp.zeros((2, 16, 4))
    p = model.init(jax.random.PRNGKey(0), z, None, image=img)["params"]
    assert p["Stem_0"]["kernel"].shape == (3, 3, 3, 4)
    assert p["EmbedPatches"]["kernel"].shape == (2, 2, 16, 32)
    got = model.apply({"params": p}, img, method=GIVT.embed_image)
    np.testing.assert_allclose(np.asarray(got), _embed_image_np(p, img, (1, 2, 2)),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="differ in length"):
        GIVT(**kw, stem=(4, 8), stem_strides=(1, 2, 2)).init(
            jax.random.PRNGKey(0), z, None, image=img)
    # Without a stem the strides mean nothing: stem=() alone turns a preset's stem off.
    plain = GIVT(**kw, stem_strides=(1, 2, 2))
    assert "Stem_0" not in plain.init(jax.random.PRNGKey(0), z, None, image=img)["params"]
    with pytest.raises(ValueError, match="not divisible"):  # 8 / (1 * 2 * 2 * 2 * 2)
        GIVT(**kw, stem=(4, 4, 4, 4, 4), stem_strides=(1, 2, 2, 2, 2)).init(
            jax.random.PRNGKey(0), z, None, image=img)
