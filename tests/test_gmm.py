"""GMM heads against scipy, computed here from the documented logit layouts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp, softmax

from uvim_givt.models.common import squareplus
from uvim_givt.models.gmm import GMMHead

D = 3
TOL = 1e-6


def _sp(x, fixed=True):
    return (x + np.sqrt(x * x + 4.0)) / 2.0 if fixed else x + np.sqrt(x * x + 4.0) / 2.0


def reference_params(kind, k, logits, t=1.0, tp=1.0, fixed=True):
    """Distribution parameters of one token's logits (1-d numpy, float64) from the
    layouts in PUBLISHED_MODELS.md ("Head layouts")."""
    logits = np.asarray(logits, np.float64)
    if kind == "full":
        raw = logits[: D * D].reshape(D, D)
        tril = np.tril(np.maximum(_sp(raw, fixed), TOL)) * t
        return {"loc": logits[D * D:], "cov": tril @ tril.T}
    if kind == "per_channel":
        r = logits.reshape(3 * D, k)
        mix, loc, raw = r[:D], r[D:2 * D], r[2 * D:]  # each (D, k)
    else:
        mix = logits[:k]
        r = logits[k:].reshape(k, 2, D)
        loc, raw = r[:, 0], r[:, 1]  # each (k, D)
    return {"weights": softmax(mix * tp, axis=-1), "loc": loc,
            "scale": np.maximum(_sp(raw, fixed), TOL) * t}


def reference_logpdf(kind, k, logits, x, **kw):
    """log p(x) for one token x [D] with scipy densities."""
    p = reference_params(kind, k, logits, **kw)
    if kind == "full":
        return stats.multivariate_normal(p["loc"], p["cov"]).logpdf(x)
    if kind == "per_channel":
        total = 0.0
        for c in range(D):
            pdfs = stats.norm.logpdf(x[c], p["loc"][c], p["scale"][c])
            total += logsumexp(np.log(p["weights"][c]) + pdfs)
        return total
    comps = [stats.norm.logpdf(x, p["loc"][j], p["scale"][j]).sum() for j in range(k)]
    return logsumexp(np.log(p["weights"]) + np.array(comps))


def reference_moments(kind, k, logits, **kw):
    """Analytic mean [D] and covariance [D, D] of the mixture."""
    p = reference_params(kind, k, logits, **kw)
    if kind == "full":
        return p["loc"], p["cov"]
    if kind == "per_channel":
        w, m, s = p["weights"], p["loc"], p["scale"]
        mean = (w * m).sum(-1)
        var = (w * (s * s + m * m)).sum(-1) - mean**2
        return mean, np.diag(var)
    w, m, s = p["weights"], p["loc"], p["scale"]
    mean = (w[:, None] * m).sum(0)
    second = sum(w[j] * (np.diag(s[j] ** 2) + np.outer(m[j], m[j])) for j in range(k))
    return mean, second - np.outer(mean, mean)


# Jitted entry points: one compilation each is far cheaper than op-by-op dispatch.
@functools.partial(jax.jit, static_argnums=0)
def _log_prob(head, logits, x, temps):
    return head.log_prob(logits, x, **temps)


@functools.partial(jax.jit, static_argnums=0)
def _log_prob_channels(head, logits, x, temps):
    return head.log_prob_channels(logits, x, **temps)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(head, key, logits, n, temps):
    return head.sample(key, jnp.broadcast_to(logits, (n, head.num_logits)), **temps)


@functools.partial(jax.jit, static_argnums=0)
def _parse(head, logits, temps):
    return head.parse(logits, **temps)


HEADS = [("per_channel", 1), ("per_channel", 3), ("diag", 4), ("full", 1)]
HEAD_IDS = [f"{kind}-k{k}" for kind, k in HEADS]


def _random_logits(kind, k, n, seed=0):
    head = GMMHead(D, k, kind, TOL)
    rng = np.random.default_rng(seed)
    return head, rng.normal(size=(n, head.num_logits)).astype(np.float32)


@pytest.mark.parametrize("kind,k", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("temps", [{}, {"t": 0.7, "tp": 2.5}], ids=["t1", "tempered"])
def test_log_prob_matches_scipy(kind, k, temps):
    head, logits = _random_logits(kind, k, 6)
    x = np.random.default_rng(1).normal(size=(6, D)).astype(np.float32) * 1.5
    jtemps = {}
    if temps:
        jtemps = dict(temperature=temps["t"], temperature_probs=temps["tp"])
    got = np.asarray(_log_prob(head, jnp.asarray(logits), jnp.asarray(x), jtemps))
    want = np.array([reference_logpdf(kind, k, lg, xi, **temps)
                     for lg, xi in zip(logits, x, strict=True)])
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if kind == "per_channel":
        per = np.asarray(_log_prob_channels(head, jnp.asarray(logits), jnp.asarray(x), jtemps))
        assert per.shape == (6, D)
        np.testing.assert_allclose(per.sum(-1), want, rtol=1e-4, atol=1e-4)


def test_temperature_scales_and_mixture_logits():
    head, logits = _random_logits("diag", 4, 2)
    base = _parse(head, jnp.asarray(logits), {})
    hot = _parse(head, jnp.asarray(logits), dict(temperature=0.5, temperature_probs=3.0))
    np.testing.assert_allclose(hot["scale"], 0.5 * base["scale"], rtol=1e-6)
    np.testing.assert_allclose(hot["mix_logits"], 3.0 * base["mix_logits"], rtol=1e-6)
    np.testing.assert_allclose(hot["loc"], base["loc"])
    full, flogits = _random_logits("full", 1, 2)
    fb = _parse(full, jnp.asarray(flogits), {})
    ft = _parse(full, jnp.asarray(flogits), dict(temperature=0.5))
    np.testing.assert_allclose(ft["scale_tril"], 0.5 * fb["scale_tril"], rtol=1e-6)


@pytest.mark.parametrize("kind,k", HEADS, ids=HEAD_IDS)
def test_sample_moments(kind, k):
    n = 20_000
    head, logits = _random_logits(kind, k, 1, seed=3)
    temps = dict(temperature=0.8, temperature_probs=1.5)
    x = np.asarray(_sample(head, jax.random.PRNGKey(7), jnp.asarray(logits), n, temps),
                   np.float64)
    assert x.shape == (n, D) and np.isfinite(x).all()
    mean, cov = reference_moments(kind, k, logits[0], t=0.8, tp=1.5)
    centred = x - mean
    # Standard errors of the sample mean and of each covariance entry, from the samples.
    se_mean = x.std(0) / np.sqrt(n)
    prods = centred[:, :, None] * centred[:, None, :]
    se_cov = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se_mean), (x.mean(0), mean)
    emp_cov = np.cov(x, rowvar=False)
    assert np.all(np.abs(emp_cov - cov) < 5 * se_cov + 1e-9), (emp_cov, cov)


def test_mean_matches_reference():
    for kind, k in HEADS:
        head, logits = _random_logits(kind, k, 2, seed=5)
        got = np.asarray(jax.jit(head.mean)(jnp.asarray(logits)))
        want = np.stack([reference_moments(kind, k, lg)[0] for lg in logits])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_squareplus_definitions():
    x = np.linspace(-5, 5, 11).astype(np.float32)
    np.testing.assert_allclose(squareplus(jnp.asarray(x)), (x + np.sqrt(x**2 + 4)) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(squareplus(jnp.asarray(x), fixed=False),
                               x + np.sqrt(x**2 + 4) / 2, rtol=1e-6)
    np.testing.assert_allclose(squareplus(jnp.zeros(())), 1.0)
    # The head uses the variant its flag names.
    logits = np.random.default_rng(2).normal(size=(1, 3 * D)).astype(np.float32)
    raw = logits.reshape(3 * D, 1)[2 * D:, 0]
    for fixed in (True, False):
        head = GMMHead(D, 1, "per_channel", TOL, fix_square_plus=fixed)
        scale = np.asarray(_parse(head, jnp.asarray(logits), {})["scale"])[0, :, 0]
        np.testing.assert_allclose(scale, np.maximum(_sp(raw, fixed), TOL), rtol=1e-6)
        x = np.zeros((1, D), np.float32)
        np.testing.assert_allclose(
            _log_prob(head, jnp.asarray(logits), jnp.asarray(x), {}),
            [reference_logpdf("per_channel", 1, logits[0], x[0], fixed=fixed)], rtol=1e-5)


def test_scale_floor():
    head = GMMHead(D, 1, "per_channel", scale_tol=0.5)
    logits = jnp.full((1, 3 * D), -50.0)
    assert np.all(np.asarray(_parse(head, logits, {})["scale"]) == pytest.approx(0.5))


@pytest.mark.parametrize("kind,k", HEADS, ids=HEAD_IDS)
def test_bad_logit_size_raises(kind, k):
    head = GMMHead(D, k, kind, TOL)
    bad = jnp.zeros((2, head.num_logits + 1))
    with pytest.raises(ValueError, match="logits"):
        head.log_prob(bad, jnp.zeros((2, D)))
    with pytest.raises(ValueError, match="logits"):
        head.sample(jax.random.PRNGKey(0), bad)


def test_bad_head_settings_raise():
    with pytest.raises(ValueError, match="kind"):
        GMMHead(D, 1, "spherical")
    with pytest.raises(ValueError, match="one component"):
        GMMHead(D, 2, "full")


def test_num_logits():
    assert GMMHead(16, 16, "diag").num_logits == 16 + 2 * 16 * 16  # published: 528
    assert GMMHead(32, 1, "per_channel").num_logits == 96
    assert GMMHead(4, 1, "full").num_logits == 20
