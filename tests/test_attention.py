"""Fused attention (jax.nn.dot_product_attention) against flax's hand-written attention.

The reference is ``flax.linen.dot_product_attention``, the attention every model used
before (``attention="reference"`` still selects it). In float32 the two agree to 1e-5:
they differ only in where the 1/sqrt(head_dim) scale is applied and in the masking
constant, both far below that.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvim_givt.models.common import attention_fn, fused_attention
from uvim_givt.models.givt import GIVT
from uvim_givt.models.vit_vae import ViTVAE
from uvim_givt.sampling import sample_autoregressive

TOL = dict(rtol=1e-5, atol=1e-5)
B, T, S, H, D = 3, 7, 5, 2, 8
ENCDEC = dict(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=2, num_layers=1,
              seq_len=4, out_dim=3, num_labels=None, style="ar", num_mixtures=2,
              head_kind="diag", input_size=(16, 16), patches=(8, 8))
MASKED = dict(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=2, seq_len=6, out_dim=3,
              num_labels=5, style="masked", mask_style="concat", num_mixtures=2,
              head_kind="diag")


def _qkv(t: int, s: int, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, t, H, D))
    k, v = rng.normal(size=(2, B, s, H, D))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def _random_params(model: nn.Module, *args, seed: int = 0, **kwargs):
    """Random parameters of the model's shapes: initialised ones have zero heads."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32),
                        shapes["params"])


def _jit_apply(model: nn.Module):
    """model.apply, jitted (traced once rather than run op by op: much faster)."""
    return jax.jit(lambda variables, *args, **kwargs: model.apply(variables, *args, **kwargs))


def _tree_layout(params) -> list[tuple[str, tuple[int, ...], str]]:
    return [(jax.tree_util.keystr(p), tuple(x.shape), str(x.dtype))
            for p, x in jax.tree_util.tree_leaves_with_path(params)]


# ------------------------------------------------------------------- the function
@pytest.mark.parametrize("case", ["causal", "cross", "none", "decode", "bool"])
def test_fused_equals_flax_attention(case):
    t, s = (T, T) if case in ("causal", "none", "bool") else (1 if case == "decode" else T, S)
    q, k, v = _qkv(t, s)
    mask = None
    if case in ("causal", "bool"):
        # flax's own causal mask is float 0/1 [B, 1, T, T]; a bool one must work as well.
        mask = nn.make_causal_mask(jnp.zeros((B, T)))
        mask = mask.astype(bool) if case == "bool" else mask
    elif case == "decode":
        # The KV-cache mask flax builds at step 2: [B, 1, 1, S], the first three keys valid.
        mask = jnp.broadcast_to(jnp.arange(s) <= 2, (B, 1, 1, s)).astype(jnp.float32)
    want = nn.dot_product_attention(q, k, v, mask=mask)
    got = fused_attention(q, k, v, mask=mask)
    assert got.shape == want.shape == (B, t, H, D) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, **TOL)
    if mask is not None:  # the mask matters: without it the result differs
        assert float(jnp.abs(fused_attention(q, k, v) - want).max()) > 1e-2


def test_active_attention_dropout_falls_back_to_flax():
    """jax.nn.dot_product_attention has no attention dropout: while it is active, the
    fused function is flax's (same random weights dropped); off, the fused path runs."""
    q, k, v = _qkv(T, T, seed=1)
    kw = dict(dropout_rate=0.3, dropout_rng=jax.random.PRNGKey(3), broadcast_dropout=False)
    want = nn.dot_product_attention(q, k, v, deterministic=False, **kw)
    np.testing.assert_array_equal(fused_attention(q, k, v, deterministic=False, **kw), want)
    assert float(jnp.abs(want - nn.dot_product_attention(q, k, v)).max()) > 1e-2
    np.testing.assert_allclose(fused_attention(q, k, v, deterministic=True, **kw),
                               nn.dot_product_attention(q, k, v), **TOL)
    with pytest.raises(ValueError, match="unknown attention"):
        attention_fn("flash")


# ---------------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def encdec():
    image = jnp.asarray(np.random.default_rng(1).normal(size=(B, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(np.random.default_rng(2).normal(size=(B, 4, 3)), jnp.float32)
    params = _random_params(GIVT(**ENCDEC), tokens, image=image)
    return params, tokens, image


@pytest.mark.parametrize("scan", [False, True])
def test_givt_encdec_fused_equals_reference(encdec, scan):
    """Causal self-attention, cross-attention and the ViT encoder, unrolled or scanned
    (parameters restacked for the scanned layout)."""
    params, tokens, image = encdec
    if scan:
        def stack(prefix, axis):
            blocks = sorted(k for k in params[prefix] if k[-1].isdigit())
            return jax.tree.map(lambda *xs: jnp.stack(xs, axis),
                                *(params[prefix][b] for b in blocks))
        params = {**params,
                  "decoder": {"EncDecBlock": stack("decoder", 1),
                              **{k: v for k, v in params["decoder"].items()
                                 if not k.startswith("EncDecBlock")}},
                  "encoder": {"encoderblock": stack("encoder", 0),
                              "encoder_norm": params["encoder"]["encoder_norm"]}}
    out = {a: _jit_apply(GIVT(**ENCDEC, scan=scan, attention=a))({"params": params}, tokens,
                                                                 image=image)
           for a in ("fused", "reference")}
    assert float(jnp.abs(out["reference"]).max()) > 0.1
    np.testing.assert_allclose(out["fused"], out["reference"], **TOL)


def test_givt_masked_fused_equals_reference():
    """MaskGIT: bidirectional self-attention without a mask."""
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.normal(size=(B, 6, 3)), jnp.float32)
    labels = jnp.asarray([0, 3, 4], jnp.int32)
    input_mask = jnp.asarray(rng.random((B, 6)) < 0.5)
    params = _random_params(GIVT(**MASKED), tokens, labels, input_mask=input_mask)
    out = {a: _jit_apply(GIVT(**MASKED, attention=a))({"params": params}, tokens, labels,
                                                      input_mask=input_mask)
           for a in ("fused", "reference")}
    np.testing.assert_allclose(out["fused"], out["reference"], **TOL)


def test_kv_cache_decoding_fused_equals_reference(encdec):
    """The cached path (prefill, then one token per step against the KV cache, with its
    decode mask): whole samples from the same key, and their log-probabilities, which
    depend on the logits of every step."""
    params, _, image = encdec
    samples = {a: sample_autoregressive(GIVT(**ENCDEC, attention=a), params,
                                        jax.random.PRNGKey(7), batch_size=B, image=image)
               for a in ("fused", "reference")}
    np.testing.assert_allclose(samples["fused"][0], samples["reference"][0], **TOL)
    np.testing.assert_allclose(samples["fused"][1], samples["reference"][1], rtol=1e-5,
                               atol=1e-4)


def test_vit_vae_fused_equals_reference():
    kw = dict(label_channels={"a": (0, 3)}, input_size=(16, 16), patch_size=(4, 4), width=16,
              depth=1, decoder_depth=1, mlp_dim=32, num_heads=2, code_len=4, codeword_dim=2,
              scan=True)
    labels = jnp.asarray(np.random.default_rng(5).integers(0, 3, (2, 16, 16, 1)), jnp.int32)
    params = _random_params(ViTVAE(**kw), labels)
    out = {a: _jit_apply(ViTVAE(**kw, attention=a))({"params": params}, labels)[0]["a"]
           for a in ("fused", "reference")}
    np.testing.assert_allclose(out["fused"], out["reference"], **TOL)


def test_parameter_trees_do_not_depend_on_attention_or_dtype(encdec):
    """Same paths, shapes and dtypes (float32) for every attention kind and compute dtype."""
    _, tokens, image = encdec
    layouts = {
        (a, dt): _tree_layout(jax.eval_shape(lambda a=a, dt=dt: GIVT(
            **ENCDEC, attention=a, dtype=dt).init(jax.random.PRNGKey(0), tokens,
                                                  image=image))["params"])
        for a in ("fused", "reference") for dt in ("float32", "bfloat16")}
    first = layouts["reference", "float32"]
    assert all(dtype == "float32" for _, _, dtype in first)
    assert all(layout == first for layout in layouts.values())
