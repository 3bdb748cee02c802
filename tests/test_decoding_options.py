"""Decoding options, each checked by its defining property: completion of given tokens
(keep_gt/gt), stochastic beam selection (rand_top_k), pow:k mask schedules, unconditional
sampling of a class-conditional model, and DB-CFG's proposal count from the settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_sampling_ar import (
    BATCH,
    DIM,
    LABELS,
    SEQ,
    TEMPS,
    TINY_AR,
    teacher_forced,
    tiny_givt,
)
from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError
from uvim_givt.models.givt import random_training_mask
from uvim_givt.models.mask_schedule import check_schedule, mask_ratio
from uvim_givt.sampling import (
    SamplingSettings,
    num_masked_after_step,
    sample_autoregressive,
    sample_by_style,
    sample_maskgit,
)

K = 3  # given prefix length


@pytest.fixture(scope="module")
def ar():
    return tiny_givt(TINY_AR)


@pytest.fixture(scope="module")
def single_gaussian():
    """One Gaussian per channel: at a vanishing temperature a sample is the mean."""
    return tiny_givt(TINY_AR, seed=3, head_kind="per_channel", num_mixtures=1)


@pytest.fixture(scope="module")
def masked():
    return tiny_givt(TINY_AR, seed=5, style="masked", mask_style="concat")


def _labels(seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.PRNGKey(seed), (BATCH,), 0, LABELS)


def _gt(seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, SEQ, DIM))


def _prefix(k: int = K) -> jax.Array:
    return jnp.arange(SEQ) < k


def _tf_logp_per_position(model, params, tokens, labels):
    logits, _ = teacher_forced(model, params, tokens, labels, None, TEMPS)
    return model.head.log_prob(logits, tokens, **TEMPS), logits


# ---------------------------------------------------------------- keep_gt / gt
def test_keep_gt_keeps_the_prefix_and_scores_only_the_sampled_rest(ar):
    model, params = ar
    labels, gt = _labels(), _gt()
    tok, logp = sample_autoregressive(model, params, jax.random.PRNGKey(2), labels=labels,
                                      keep_gt=_prefix(), gt=gt, **TEMPS)
    np.testing.assert_array_equal(tok[:, :K], gt[:, :K])
    assert not np.allclose(tok[:, K:], gt[:, K:])
    # The returned log-probability is that of the sampled positions given everything
    # before them, by an independent teacher-forced pass over the whole sequence.
    per_pos, _ = _tf_logp_per_position(model, params, tok, labels)
    np.testing.assert_allclose(logp, per_pos[:, K:].sum(-1), rtol=1e-4, atol=1e-3)


def test_keep_gt_edge_cases(ar):
    model, params = ar
    labels, gt, rng = _labels(), _gt(), jax.random.PRNGKey(4)
    plain = sample_autoregressive(model, params, rng, labels=labels, **TEMPS)
    none_kept = sample_autoregressive(model, params, rng, labels=labels,
                                      keep_gt=jnp.zeros(SEQ, bool), gt=gt, **TEMPS)
    for a, b in zip(plain, none_kept, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    tok, logp = sample_autoregressive(model, params, rng, labels=labels,
                                      keep_gt=jnp.ones(SEQ, bool), gt=gt, **TEMPS)
    np.testing.assert_array_equal(tok, gt)
    np.testing.assert_array_equal(logp, np.zeros(BATCH))
    with pytest.raises(ValueError, match="together"):
        sample_autoregressive(model, params, rng, labels=labels, keep_gt=_prefix(), **TEMPS)
    with pytest.raises(ValueError, match="keep_gt must be"):
        sample_autoregressive(model, params, rng, labels=labels, keep_gt=_prefix()[:-1],
                              gt=gt, **TEMPS)


def test_completion_samples_the_conditional_given_the_prefix(single_gaussian):
    """At a vanishing temperature each sampled token is the conditional mean given the
    true prefix and the tokens completed so far (checked by teacher forcing the output),
    and the completion changes when the prefix does."""
    model, params = single_gaussian
    labels, gt = _labels(), _gt()
    cold = dict(temperature=1e-6, temperature_probs=1.0)
    tok, _ = sample_autoregressive(model, params, jax.random.PRNGKey(0), labels=labels,
                                   keep_gt=_prefix(), gt=gt, **cold)
    logits = model.apply({"params": params}, tok, labels)
    np.testing.assert_allclose(tok[:, K:], model.head.mean(logits)[:, K:], atol=1e-4)
    other, _ = sample_autoregressive(model, params, jax.random.PRNGKey(0), labels=labels,
                                     keep_gt=_prefix(), gt=_gt(seed=9), **cold)
    assert np.abs(np.asarray(other[:, K:] - tok[:, K:])).max() > 1e-3


def test_keep_gt_with_beam_search(ar):
    model, params = ar
    labels, gt = _labels(), _gt()
    tok, logp = sample_autoregressive(model, params, jax.random.PRNGKey(6), labels=labels,
                                      beam_size=2, fan_size=3, keep_gt=_prefix(), gt=gt,
                                      **TEMPS)
    np.testing.assert_array_equal(tok[:, :K], gt[:, :K])
    per_pos, _ = _tf_logp_per_position(model, params, tok, labels)
    np.testing.assert_allclose(logp, per_pos[:, K:].sum(-1), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- rand_top_k
def _beam_and_rand_top_k(model, params, labels, temperature):
    """(tokens, log-probs) of beam search (beam 3, fan 4) and of the same search with
    rand_top_k at ``temperature``, from one key."""
    rng = jax.random.PRNGKey(7)
    beam = dict(labels=labels, beam_size=3, fan_size=4, **TEMPS)
    return (sample_autoregressive(model, params, rng, **beam),
            sample_autoregressive(model, params, rng, rand_top_k=True,
                                  rand_top_k_temperature=temperature, **beam))


def test_rand_top_k_at_vanishing_temperature_is_beam_search(ar):
    (tok, logp), (tok_r, logp_r) = _beam_and_rand_top_k(*ar, _labels(), 1e-6)
    np.testing.assert_allclose(tok_r, tok, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logp_r, logp, rtol=1e-6, atol=1e-6)


def test_rand_top_k_draws_other_beams_and_scores_them_right(ar):
    model, params = ar
    labels = _labels()
    (tok, logp), (tok_r, logp_r) = _beam_and_rand_top_k(model, params, labels, 100.0)
    assert np.abs(np.asarray(tok_r - tok)).max() > 1e-3
    per_pos, _ = _tf_logp_per_position(model, params, tok_r, labels)
    np.testing.assert_allclose(logp_r, per_pos.sum(-1), rtol=1e-4, atol=1e-3)
    # Beam search keeps the best-scoring beams; random survivors score lower on average.
    assert float(logp_r.mean()) < float(logp.mean())


# ---------------------------------------------------------------- mask schedules
def test_mask_schedules_match_their_formulas():
    r = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(mask_ratio(r, "pow:2"), np.clip(1 - r**2, 1e-6, 1), atol=1e-6)
    np.testing.assert_allclose(mask_ratio(r, "pow:0.5"), np.clip(1 - r**0.5, 1e-6, 1),
                               atol=1e-6)
    np.testing.assert_allclose(mask_ratio(r, "pow:1"), mask_ratio(r, "linear"), atol=1e-7)
    np.testing.assert_allclose(mask_ratio(r, "cosine"), np.clip(np.cos(np.pi / 2 * r), 1e-6, 1),
                               atol=1e-6)
    for bad in ("pow:0", "pow:-1", "pow:x", "pow", "quadratic"):
        with pytest.raises(ValueError, match="mask schedule"):
            check_schedule(bad)


@pytest.mark.parametrize("schedule", ["pow:3", "pow:0.5"])
def test_maskgit_decodes_with_a_pow_schedule(masked, schedule):
    model, params = masked
    steps = 4
    _, trace = sample_maskgit(model, params, jax.random.PRNGKey(0), labels=_labels(),
                              num_steps=steps, schedule=schedule, return_trace=True)
    k = float(schedule[4:])
    unknown, want = SEQ, []
    for s in range(steps):
        n = int(np.floor(SEQ * max(1 - ((s + 1) / steps) ** k, 1e-6)))
        n = max(min(n, unknown - 1), 0)
        want.append(n)
        unknown = n
    np.testing.assert_array_equal(np.asarray(trace["num_masked"])[:, 0], want)
    assert int(num_masked_after_step(jnp.float32(0), steps, SEQ, jnp.int32(SEQ),
                                     schedule)) == want[0]


@pytest.mark.parametrize("schedule", ["cosine", "pow:2", "pow:0.5"])
def test_training_masks_follow_the_schedule(schedule):
    """The masked fraction of training masks averages the schedule over progress
    r ~ U(0, 1 - min_mask_rate) (published get_input_mask_training), up to the count's
    rounding up."""
    seq, batch, min_rate = 100, 4000, 0.3
    masks = random_training_mask(jax.random.PRNGKey(0), batch, seq, min_rate, schedule)
    r = np.linspace(0, 1 - min_rate, 100_001)
    expected = float(np.mean(np.clip(
        np.cos(np.pi / 2 * r) if schedule == "cosine" else 1 - r ** float(schedule[4:]),
        1e-6, 1)))
    assert abs(float(masks.mean()) - expected - 0.005) < 0.01


# ---------------------------------------------------------------- unconditional
def _sample(model, params, **kw):
    if model.style == "ar":
        return sample_autoregressive(model, params, jax.random.PRNGKey(1), **kw, **TEMPS)[0]
    return sample_maskgit(model, params, jax.random.PRNGKey(1), num_steps=3, **kw)


@pytest.mark.parametrize("which", ["ar", "masked"])
def test_unconditional_sampling_uses_the_nolabel_embedding(which, request):
    model, params = request.getfixturevalue(which)
    nolabel = jnp.full((BATCH,), model.special_labels["nolabel"], jnp.int32)
    uncond = _sample(model, params, labels=_labels(), unconditional=True)
    np.testing.assert_allclose(uncond, _sample(model, params, labels=nolabel),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(uncond, _sample(model, params, labels=None, batch_size=BATCH,
                                               unconditional=True), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(uncond - _sample(model, params, labels=_labels()))).max() > 1e-3
    with pytest.raises(ValueError, match="no guidance"):
        _sample(model, params, labels=_labels(), unconditional=True, cfg_weight=0.5)


# ---------------------------------------------------------------- settings plumbing
def _settings(style: str, **values) -> SamplingSettings:
    """Sampling settings of a tiny config, with ``values`` over them."""
    cfg = config_lib.load_config("configs/imagenet.py", [f"givt.model.style='{style}'"])
    return SamplingSettings.from_config(cfg, values)


def test_sampling_settings_reach_the_samplers(ar, masked):
    """sample_by_style passes every setting of its style to the sampler."""
    model, params = ar
    labels, rng = _labels(), jax.random.PRNGKey(3)
    settings = _settings("ar", cfg_weight=2.0, cfg_max_samples=1, **TEMPS)
    got = sample_by_style(model, params, rng, settings, labels=labels)
    want, _ = sample_autoregressive(model, params, rng, labels=labels, cfg_weight=2.0,
                                    cfg_max_samples=1, **TEMPS)
    np.testing.assert_array_equal(got, want)
    more, _ = sample_autoregressive(model, params, rng, labels=labels, cfg_weight=2.0,
                                    cfg_max_samples=512, **TEMPS)
    assert np.abs(np.asarray(more - want)).max() > 1e-3  # a single proposal often fails
    beam = settings.replace(cfg_weight=0.0).replace(beam_size=2, fan_size=2, rand_top_k=True,
                                                    rand_top_k_temperature=1e-6)
    got = sample_by_style(model, params, rng, beam, labels=labels)
    want, _ = sample_autoregressive(model, params, rng, labels=labels, beam_size=2, fan_size=2,
                                    **TEMPS)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    model, params = masked
    settings = _settings("masked", num_steps=3, choice_temperature=1.0, schedule="pow:2",
                         unconditional=True, cfg_weight=0.0, **TEMPS)
    got = sample_by_style(model, params, rng, settings, labels=labels)
    want = sample_maskgit(model, params, rng, labels=labels, num_steps=3, schedule="pow:2",
                          choice_temperature=1.0, unconditional=True, **TEMPS)
    np.testing.assert_array_equal(got, want)


def test_sampling_settings_are_checked_once_by_key():
    """Ranges come from the schema (a command's override is checked like the config's
    value); combinations no sampler takes are refused naming their keys."""
    with pytest.raises(ConfigError, match=r"givt\.sampling\.temperature=0"):
        _settings("ar", temperature=0.0)
    with pytest.raises(ConfigError, match=r"givt\.sampling\.schedule='pow:0'"):
        _settings("masked", schedule="pow:0")
    with pytest.raises(ConfigError, match="beam search .* and DB-CFG"):
        _settings("ar", beam_size=2)  # the tiny imagenet config guides with 0.4
    with pytest.raises(ConfigError, match="unconditional drops every label"):
        _settings("ar", unconditional=True)
    with pytest.raises(ConfigError, match="no sampling setting 'temprature'"):
        _settings("ar", temprature=1.0)
    assert _settings("ar", temperature=None).temperature == 0.95  # None keeps the config's
