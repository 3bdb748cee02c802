"""Stage-2 objective: teacher-forced GIVT NLL against scipy, and input-noise training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from uvim_givt.models.givt import GIVT
from uvim_givt.training.objectives import givt_nll_loss

D, L, B = 3, 6, 2


def _model() -> GIVT:
    return GIVT(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=1, seq_len=L,
                out_dim=D, num_labels=None, num_mixtures=1, head_kind="per_channel")


def _setup():
    model = _model()
    tokens = jax.random.normal(jax.random.PRNGKey(1), (B, L, D))
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    # The zero-initialised output layer would make every token N(0, ~1): perturb it.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    return model, params, tokens


def _scipy_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean over tokens of -sum_d log N(x_d; loc_d, squareplus(raw_d)), from the
    documented per_channel layout (rows: mix, loc, raw; one component)."""
    r = np.asarray(logits, np.float64).reshape(B, L, 3 * D)
    loc, raw = r[..., D:2 * D], r[..., 2 * D:]
    scale = np.maximum((raw + np.sqrt(raw * raw + 4.0)) / 2.0, 1e-6)
    logp = stats.norm.logpdf(np.asarray(targets, np.float64), loc, scale).sum(-1)
    return float(-logp.mean())


def test_teacher_forced_nll_equals_scipy():
    model, params, tokens = _setup()
    loss, aux = givt_nll_loss(model, params, tokens, jax.random.PRNGKey(3), train=False)
    logits = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(float(loss), _scipy_nll(logits, tokens), rtol=1e-5)
    np.testing.assert_allclose(float(aux["nll_per_dim"]), float(loss) / D, rtol=1e-6)


def test_input_noise_corrupts_inputs_not_targets():
    model, params, tokens = _setup()
    key, sigma = jax.random.PRNGKey(4), 0.7
    noisy_loss, _ = givt_nll_loss(model, params, tokens, key, train=True, input_noise=sigma)
    # The objective's documented key use: the fourth split draws the input noise.
    eps = jax.random.normal(jax.random.split(key, 4)[3], tokens.shape)
    logits = model.apply({"params": params}, tokens + sigma * eps)
    np.testing.assert_allclose(float(noisy_loss), _scipy_nll(logits, tokens), rtol=1e-5)
    clean_loss, _ = givt_nll_loss(model, params, tokens, key, train=True)
    assert abs(float(noisy_loss) - float(clean_loss)) > 1e-3


def test_input_noise_is_off_at_evaluation():
    model, params, tokens = _setup()
    key = jax.random.PRNGKey(5)
    a, _ = givt_nll_loss(model, params, tokens, key, train=False, input_noise=2.0)
    b, _ = givt_nll_loss(model, params, tokens, key, train=False)
    assert float(a) == float(b)
    assert jnp.isfinite(a)


def test_encoder_decoder_loss_equals_the_full_forward_pass():
    model = GIVT(emb_dim=16, num_heads=2, mlp_dim=32, num_layers=1, num_decoder_layers=1,
                 seq_len=L, out_dim=D, num_labels=None, num_mixtures=1,
                 head_kind="per_channel", input_size=(8, 8), patches=(4, 4))
    tokens = jax.random.normal(jax.random.PRNGKey(1), (B, L, D))
    image = jax.random.uniform(jax.random.PRNGKey(7), (B, 8, 8, 3), minval=-1, maxval=1)
    params = model.init(jax.random.PRNGKey(0), tokens, image=image)["params"]
    params = jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    loss, _ = givt_nll_loss(model, params, tokens, jax.random.PRNGKey(3), image=image,
                            train=False)
    logits = model.apply({"params": params}, tokens, image=image)
    np.testing.assert_allclose(float(loss), _scipy_nll(logits, tokens), rtol=1e-5)
