"""DB-CFG: w=0 is conditional sampling; for w>0 the samples follow p_c^(1+w) / p_u^w."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.test_sampling_ar import BATCH, TEMPS, TINY_AR, random_params
from uvim_givt.models.givt import GIVT
from uvim_givt.models.gmm import GMMHead
from uvim_givt.sampling import rejection_sample_guided, sample_autoregressive, sample_cfg

N = 20_000
P_MIN = 0.01


def guided_cdf(w, loc_c, s_c, loc_u, s_u):
    """CDF of the normalised p_c^(1+w) / p_u^w, integrated numerically on a fine grid."""
    width = 12 * max(s_c, s_u)
    grid = np.linspace(loc_c - width, loc_c + width, 200_001)
    logd = (1 + w) * stats.norm.logpdf(grid, loc_c, s_c) - w * stats.norm.logpdf(grid, loc_u, s_u)
    dens = np.exp(logd - logd.max())
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    return lambda x: np.interp(x, grid, cdf)


@functools.partial(jax.jit, static_argnames="max_samples")
def _rejection(key, loc_c, s_c, loc_u, s_u, w, max_samples=128):
    return rejection_sample_guided(key, loc_c, s_c, loc_u, s_u, w, max_samples)


def _draw(w, loc_c, s_c, loc_u, s_u, seed=0):
    full = lambda v: jnp.full((N,), v, jnp.float32)
    x, ok = _rejection(jax.random.PRNGKey(seed), full(loc_c), full(s_c), full(loc_u), full(s_u),
                       jnp.float32(w))
    return np.asarray(x, np.float64), np.asarray(ok)


def test_w0_rejection_is_conditional():
    x, ok = _draw(0.0, 0.7, 1.3, -2.0, 0.4)
    assert ok.mean() > 0.99
    assert stats.kstest(x, stats.norm(0.7, 1.3).cdf).pvalue > P_MIN


GUIDED_CASES = [  # (w, loc_c, s_c, loc_u, s_u), all with a proper, dominated guided density
    (0.5, 0.0, 1.0, 0.5, 1.0),  # same scales: the mean moves away from the unconditional
    (1.0, 1.0, 0.5, -0.5, 1.5),  # wider unconditional
    (3.0, -0.3, 0.8, 0.2, 0.9),  # strong guidance
    (0.4, 0.0, 1.0, 0.0, 0.8),  # narrower unconditional: the guided density is wider
    (0.1, 2.0, 0.3, 1.0, 2.0),  # the published ImageNet MaskGIT weight
]


@pytest.mark.parametrize("case", GUIDED_CASES, ids=[str(c) for c in GUIDED_CASES])
def test_guided_distribution(case):
    x, ok = _draw(*case, seed=1)
    assert ok.mean() > 0.99  # acceptance rate
    assert stats.kstest(x, guided_cdf(*case)).pvalue > P_MIN
    if case[0] > 0:  # guidance visibly changes the distribution
        assert stats.kstest(x, stats.norm(case[1], case[2]).cdf).pvalue < 1e-3


def test_improper_guided_density_falls_back_to_conditional():
    # (1 + w) / s_c^2 < w / s_u^2: p_c^(1+w) / p_u^w grows without bound.
    x, ok = _draw(1.0, 0.0, 1.0, 0.0, 0.5, seed=2)
    assert not ok.any()
    assert stats.kstest(x, stats.norm(0.0, 1.0).cdf).pvalue > P_MIN


def _raw_scale(s):
    """Inverse of the (fixed) squareplus: the logit whose scale is s."""
    return s - 1.0 / s


@functools.partial(jax.jit, static_argnums=(0,))
def _sample_cfg(head, key, logits_c, logits_u, w, temps):
    return sample_cfg(key, head, logits_c, logits_u, w, **temps)


def test_mixture_with_fixed_component_through_sample_cfg():
    """per_channel head (2 channels, 3 components); the conditional mixture logits pin
    component 1, so each channel follows the guided density of that component."""
    d, k, w, t = 2, 3, 0.8, 0.9
    head = GMMHead(d, k, "per_channel")
    loc_c = np.array([[3.0, 0.5, -2.0], [1.0, -1.0, 4.0]])
    s_c = np.array([[0.5, 0.7, 2.0], [1.0, 0.6, 0.3]])
    loc_u = np.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]])
    s_u = np.array([[1.0, 1.2, 1.0], [1.0, 0.9, 1.0]])
    mix_c = np.array([[-30.0, 30.0, -30.0]] * d)
    mix_u = np.zeros((d, k))  # ignored: the component comes from the conditional mixture

    def logits(mix, loc, s):  # per_channel layout: (3 * D, k) = mixture, means, scales
        return np.concatenate([mix, loc, _raw_scale(s)]).reshape(-1).astype(np.float32)

    lc = jnp.broadcast_to(logits(mix_c, loc_c, s_c), (N, head.num_logits))
    lu = jnp.broadcast_to(logits(mix_u, loc_u, s_u), (N, head.num_logits))
    x, logp, acc = _sample_cfg(head, jax.random.PRNGKey(3), lc, lu, jnp.float32(w),
                               dict(temperature=t))
    assert x.shape == (N, d) and logp.shape == (N,)
    assert float(acc) > 0.99
    for c in range(d):
        # The temperature multiplies both the conditional and the unconditional scales.
        cdf = guided_cdf(w, loc_c[c, 1], t * s_c[c, 1], loc_u[c, 1], t * s_u[c, 1])
        assert stats.kstest(np.asarray(x[:, c], np.float64), cdf).pvalue > P_MIN


def test_mixture_components_follow_conditional_weights():
    """diag head, two components drawn with the conditional weights; each component is
    guided separately, so the samples follow the weighted sum of normalised guided
    densities."""
    head = GMMHead(1, 2, "diag")
    w = 0.5
    pi = np.array([0.3, 0.7])
    loc_c, s_c = np.array([-2.0, 2.0]), np.array([0.6, 0.8])
    loc_u, s_u = np.array([-1.5, 1.0]), np.array([1.0, 1.0])

    def logits(mix, loc, s):  # diag layout: k mixture logits, then (k, 2, D)
        rest = np.stack([loc, _raw_scale(s)], axis=-1)  # (k, 2) with D = 1
        return np.concatenate([mix, rest.reshape(-1)]).astype(np.float32)

    lc = jnp.broadcast_to(logits(np.log(pi), loc_c, s_c), (N, head.num_logits))
    lu = jnp.broadcast_to(logits(np.zeros(2), loc_u, s_u), (N, head.num_logits))
    x, _, acc = _sample_cfg(head, jax.random.PRNGKey(4), lc, lu, jnp.float32(w), {})
    assert float(acc) > 0.99
    cdfs = [guided_cdf(w, loc_c[j], s_c[j], loc_u[j], s_u[j]) for j in range(2)]
    mixture_cdf = lambda v: pi[0] * cdfs[0](v) + pi[1] * cdfs[1](v)
    assert stats.kstest(np.asarray(x[:, 0], np.float64), mixture_cdf).pvalue > P_MIN


def test_full_covariance_head_rejected():
    head = GMMHead(2, 1, "full")
    z = jnp.zeros((1, head.num_logits))
    with pytest.raises(ValueError, match="full"):
        sample_cfg(jax.random.PRNGKey(0), head, z, z, 0.5)


@pytest.fixture(scope="module")
def ar_model():
    model = GIVT(**TINY_AR)  # the model of test_sampling_ar.py: compilations are shared
    return model, random_params(model)


def test_autoregressive_w0_is_conditional(ar_model):
    model, params = ar_model
    labels = jnp.arange(BATCH, dtype=jnp.int32) % model.num_labels
    rng = jax.random.PRNGKey(11)
    tok, logp = sample_autoregressive(model, params, rng, labels=labels, **TEMPS)
    tok0, logp0 = sample_autoregressive(model, params, rng, labels=labels, cfg_weight=0.0,
                                        **TEMPS)
    np.testing.assert_array_equal(tok0, tok)
    np.testing.assert_array_equal(logp0, logp)
    tok_g, logp_g = sample_autoregressive(model, params, rng, labels=labels, cfg_weight=0.5,
                                          **TEMPS)
    assert tok_g.shape == tok.shape and logp_g.shape == logp.shape
    assert bool(jnp.isfinite(tok_g).all()) and bool(jnp.isfinite(logp_g).all())
    assert not np.allclose(tok_g, tok)
