"""Mixed precision (``dtype="bfloat16"``): bf16 matmuls, float32 parameters, heads and losses.

Tolerances: bfloat16 keeps 8 significant bits (7 stored + the implicit one), so one
rounding is off by up to 2^-9 ~ 0.2% and one matmul by about that much times the square
root of its depth. Through a few layers (each rounding its inputs, weights and outputs)
the logits of a bf16 model stay within a few percent of the float32 ones; the checks use
4% of the largest float32 output (about 10 roundings' worth), and an absolute 0.01 floor.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uvim_givt import schema
from uvim_givt.models import vae_losses
from uvim_givt.models.cnn_vae import CNNVAE
from uvim_givt.models.givt import GIVT
from uvim_givt.models.vit_vae import ViTVAE
from uvim_givt.training.objectives import givt_nll_loss

REL_TOL = 0.04  # of the largest float32 output; see the module docstring
ENCDEC = dict(emb_dim=32, num_heads=2, mlp_dim=64, num_decoder_layers=2, num_layers=2,
              seq_len=4, out_dim=3, num_labels=None, style="ar", num_mixtures=2,
              head_kind="diag", input_size=(16, 16), patches=(8, 8), stem=(8,))
AR = dict(emb_dim=32, num_heads=2, mlp_dim=64, num_decoder_layers=2, seq_len=8, out_dim=2,
          num_labels=4, style="ar", num_mixtures=2, head_kind="diag")
VIT_VAE = dict(label_channels={"a": (0, 5), "b": (1, 3)}, input_size=(16, 16),
               patch_size=(4, 4), width=32, depth=1, decoder_depth=2, mlp_dim=64, num_heads=2,
               code_len=4, codeword_dim=3, scan=True)
CNN_VAE = dict(filters=8, num_res_blocks=1, channel_multipliers=(1, 2), codeword_dim=3,
               input_size=(8, 8), num_groups=4)


def _random_params(model: nn.Module, *args, **kwargs):
    """Random parameters of the model's shapes (``eval_shape``: nothing compiled), with
    LayerNorm/GroupNorm scales near 1; initialised ones would have zero heads."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    rng = np.random.default_rng(1)

    def fill(path, leaf):
        base = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(base + 0.1 * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def _assert_close_bf16(got: jax.Array, want: jax.Array) -> None:
    assert got.dtype == want.dtype == jnp.float32
    scale = float(jnp.abs(want).max())
    assert scale > 0.1  # not vacuous
    err = float(jnp.abs(got - want).max())
    assert err <= max(REL_TOL * scale, 0.01), f"max error {err:.4g} vs scale {scale:.4g}"
    assert err > 0  # the bf16 model did compute in bf16


def _matmul_dtypes(fn, *args) -> list[tuple[str, str]]:
    """(operand dtypes, name scope) of every matmul and convolution ``fn`` traces."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                dtypes = "/".join(sorted({str(v.aval.dtype) for v in eqn.invars}))
                found.append((dtypes, str(eqn.source_info.name_stack)))
            for value in eqn.params.values():
                for sub in value if isinstance(value, list | tuple) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


# ------------------------------------------------------------------------------ GIVT
@pytest.fixture(scope="module")
def encdec():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    image = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    return _random_params(GIVT(**ENCDEC), tokens, image=image), tokens, image


def test_givt_bf16_logits_match_fp32(encdec):
    """Encoder-decoder GIVT (conv stem, ViT encoder, cross-attention): same parameters."""
    params, tokens, image = encdec
    out = {dt: jax.jit(lambda p, t, i, dt=dt: GIVT(**ENCDEC, dtype=dt).apply(
        {"params": p}, t, image=i))(params, tokens, image) for dt in ("float32", "bfloat16")}
    _assert_close_bf16(out["bfloat16"], out["float32"])
    # The NLL of the head, computed in float32 from either model's logits, agrees too.
    head = GIVT(**ENCDEC).head
    nll = {dt: head.log_prob(x, tokens) for dt, x in out.items()}
    np.testing.assert_allclose(nll["bfloat16"], nll["float32"], rtol=0.05, atol=0.05)


def test_givt_bf16_runs_matmuls_in_bf16_but_the_logits_in_fp32(encdec):
    params, tokens, image = encdec
    model = GIVT(**ENCDEC, dtype="bfloat16")
    found = _matmul_dtypes(lambda p: model.apply({"params": p}, tokens, image=image), params)
    fp32 = [scope for dtypes, scope in found if dtypes != "bfloat16"]
    assert len(found) > 20
    assert len(fp32) == 1 and "LogitsDense" in fp32[0], fp32
    assert {d for d, _ in _matmul_dtypes(
        lambda p: GIVT(**ENCDEC).apply({"params": p}, tokens, image=image), params)} == {
        "float32"}


def _ar_data(n: int = 64):
    """Class-conditional sequences with a dependence on the previous token."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, AR["num_labels"], n)
    centers = rng.normal(size=(AR["num_labels"], AR["out_dim"]))
    x, prev = np.zeros((n, AR["seq_len"], AR["out_dim"])), np.zeros((n, AR["out_dim"]))
    for i in range(AR["seq_len"]):
        prev = centers[labels] + 0.5 * prev + 0.2 * rng.normal(size=prev.shape)
        x[:, i] = prev
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)


def test_tiny_givt_trained_in_bf16_reaches_the_fp32_loss():
    """Same initialisation, data, dropout keys and optimiser; 100 full-batch Adam steps take
    the NLL from 3.4 to about -0.6 nats per token. bf16 must end within 0.05 nats of fp32
    (about 1% of the way travelled; measured: 3e-4 after 100 steps, 0.013 after 150).
    Parameters and Adam's moments stay float32 in the bf16 run. (Compiling the two runs
    is most of this test's time; the steps themselves take well under a second.)"""
    tokens, labels = _ar_data()
    params = jax.jit(GIVT(**AR).init)(jax.random.PRNGKey(0), tokens[:1], labels[:1])["params"]
    opt = optax.adam(3e-3)

    def train(dtype: str):
        model = GIVT(**AR, dtype=dtype)

        def loss_fn(p, key):
            return givt_nll_loss(model, p, tokens, key, labels=labels)[0]

        @jax.jit
        def run(params):
            def step(carry, key):
                p, s = carry
                loss, grads = jax.value_and_grad(loss_fn)(p, key)
                updates, s = opt.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), loss

            keys = jax.random.split(jax.random.PRNGKey(1), 100)
            return jax.lax.scan(step, (params, opt.init(params)), keys)

        state, losses = run(params)
        return np.asarray(losses), state

    (fp32, _), (bf16, bf16_state) = train("float32"), train("bfloat16")
    assert fp32[0] - fp32[-5:].mean() > 3.5  # it learned something
    assert abs(bf16[-5:].mean() - fp32[-5:].mean()) < 0.05, (bf16[-5:], fp32[-5:])
    assert {x.dtype for x in jax.tree.leaves(bf16_state)
            if x.ndim} == {jnp.dtype(jnp.float32)}


# ------------------------------------------------------------------------------ VAEs
def _vae_outputs(model: nn.Module, params, x: jax.Array, loss_fn):
    """(decoded output, mu, logvar, stage-1 loss) of a VAE's forward pass (z = mu)."""
    def forward(params, x):
        out, aux = model.apply({"params": params}, x)
        return out, aux["mu"], aux["logvar"], loss_fn(out, x, aux["mu"], aux["logvar"])

    return jax.jit(forward)(params, x)


def _compare_vae(models, params, x, loss_fn, flat=lambda out: out) -> None:
    got, want = (_vae_outputs(models[dt], params, x, loss_fn) for dt in ("bfloat16", "float32"))
    for g, w in zip(got[:3], want[:3], strict=True):  # decoded, mu, logvar
        _assert_close_bf16(flat(g), flat(w))
    # The loss (float32 in both) agrees to a fraction of a percent.
    np.testing.assert_allclose(got[3], want[3], rtol=0.01)


def test_vit_vae_bf16_matches_fp32():
    labels = jnp.asarray(np.random.default_rng(2).integers(0, 3, (2, 16, 16, 2)), jnp.int32)
    params = _random_params(ViTVAE(**VIT_VAE), labels)
    models = {dt: ViTVAE(**VIT_VAE, dtype=dt) for dt in ("float32", "bfloat16")}

    def loss_fn(logits, labels, mu, logvar):
        return vae_losses.label_vae_loss(logits, labels, mu, logvar, beta=0.1,
                                         label_channels=models["float32"].label_channels)[0]

    _compare_vae(models, params, labels, loss_fn,
                 flat=lambda out: jnp.concatenate(list(out.values()), -1)
                 if isinstance(out, dict) else out)


def test_cnn_vae_bf16_matches_fp32():
    images = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    params = _random_params(CNNVAE(**CNN_VAE), images)
    models = {dt: CNNVAE(**CNN_VAE, dtype=dt, clip_output=False)
              for dt in ("float32", "bfloat16")}

    def loss_fn(out, images, mu, logvar):
        return vae_losses.vae_loss(out, images, mu, logvar, beta=0.1)[0]

    _compare_vae(models, params, images, loss_fn)
    found = _matmul_dtypes(lambda p: models["bfloat16"].apply({"params": p}, images), params)
    # Only the encoder's last 1x1 conv (mu, logvar) runs in float32.
    assert [d for d, _ in found].count("float32") == 1 and len(found) > 8


def test_dtype_and_attention_config_rules():
    for key in ("givt.model.dtype", "vae.model.dtype"):
        rule = schema.rule_for(key, schema.LIBRARY_RULES)
        assert rule.check(key, "bfloat16") is None and rule.check(key, "float32") is None
        assert rule.check(key, "float16") is not None
    rule = schema.rule_for("givt.model.attention", schema.LIBRARY_RULES)
    assert rule.check("k", "fused") is None and rule.check("k", "flash") is not None
    with pytest.raises(ValueError, match="unknown compute dtype"):
        GIVT(**AR, dtype="float16").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 2)),
                                         jnp.zeros((1,), jnp.int32))
