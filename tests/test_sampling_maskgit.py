"""MaskGIT decoding of masked GIVT: schedule, invariants of the trace, CFG, both mask styles."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_sampling_ar import TINY_AR, random_params
from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError
from uvim_givt.models.givt import GIVT
from uvim_givt.sampling import (
    SamplingSettings,
    num_masked_after_step,
    sample_autoregressive,
    sample_by_style,
    sample_maskgit,
)

SEQ, DIM, BATCH = 8, 3, 4
TINY_MASKED = dict(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=1, seq_len=SEQ,
                   out_dim=DIM, num_labels=5, style="masked", drop_labels_probability=0.1)
STYLES = {  # mask style -> (head settings, number of steps)
    "replace": (dict(mask_style="replace", head_kind="per_channel", num_mixtures=1), 4),
    "concat": (dict(mask_style="concat", head_kind="diag", num_mixtures=2), 5),
}
TEMPS = dict(temperature=0.9, temperature_probs=1.0)
LABELS = jnp.array([0, 1, 2, 4], jnp.int32)


def expected_num_masked(seq_len: int, num_steps: int) -> list[int]:
    """The cosine schedule, written out: floor(L * cos(pi/2 * (s+1)/S)), at most one
    fewer than the tokens still masked, never negative."""
    out, masked = [], seq_len
    for s in range(num_steps):
        ratio = max(np.cos(np.pi / 2 * (s + 1) / num_steps), 1e-6)
        masked = max(min(int(np.floor(seq_len * ratio)), masked - 1), 0)
        out.append(masked)
    return out


@functools.cache
def _model(style: str) -> tuple[GIVT, dict, int]:
    settings, steps = STYLES[style]
    model = GIVT(**TINY_MASKED, **settings)
    return model, random_params(model, seed=len(style)), steps


def _sample(style, seed=0, **kw):
    model, params, steps = _model(style)
    return sample_maskgit(model, params, jax.random.PRNGKey(seed), labels=LABELS,
                          num_steps=steps, return_trace=True, **TEMPS, **kw)


@pytest.fixture(scope="module", params=list(STYLES))
def decoded(request):
    style = request.param
    tokens, trace = _sample(style, choice_temperature=2.0)
    return style, tokens, jax.tree_util.tree_map(np.asarray, trace)


def test_shapes(decoded):
    style, tokens, trace = decoded
    steps = STYLES[style][1]
    assert tokens.shape == (BATCH, SEQ, DIM)
    assert trace["uncovered"].shape == (steps, BATCH, SEQ)
    assert trace["inputs"].shape == (steps, BATCH, SEQ, DIM)
    assert trace["num_masked"].shape == (steps, BATCH)
    assert np.isfinite(np.asarray(tokens)).all()


def test_every_token_uncovered_at_the_end(decoded):
    _, tokens, trace = decoded
    assert trace["uncovered"][-1].all()
    np.testing.assert_array_equal(tokens, trace["inputs"][-1])


def test_uncovered_tokens_never_change(decoded):
    _, _, trace = decoded
    unc, inp = trace["uncovered"], trace["inputs"]
    for s in range(1, len(unc)):
        assert np.all(unc[s] >= unc[s - 1])  # never masked again
        kept = unc[s - 1]
        np.testing.assert_array_equal(inp[s][kept], inp[s - 1][kept])
    # Masked positions are fed as zeros.
    assert np.all(inp[~unc] == 0)


def test_uncovered_count_follows_schedule(decoded):
    style, _, trace = decoded
    steps = STYLES[style][1]
    want = np.array(expected_num_masked(SEQ, steps))
    num_masked = SEQ - trace["uncovered"].sum(-1)  # [S, B]
    np.testing.assert_array_equal(num_masked, np.broadcast_to(want[:, None], num_masked.shape))
    np.testing.assert_array_equal(trace["num_masked"], num_masked)
    # At least one token is uncovered per step.
    assert np.all(np.diff(np.concatenate([[SEQ], want])) <= -1)


def test_schedule_helper():
    got = [int(num_masked_after_step(jnp.float32(s), 5, SEQ, jnp.int32(m)))
           for s, m in enumerate([8, 7, 6, 4, 2])]
    assert got == expected_num_masked(SEQ, 5) == [7, 6, 4, 2, 0]
    assert int(num_masked_after_step(jnp.float32(0), 16, 4, jnp.int32(0))) == 0


@functools.partial(jax.jit, static_argnums=0)
def _first_step_log_prob(model, params, tokens, labels):
    masked = jnp.ones(tokens.shape[:2], bool)
    logits = model.apply({"params": params}, jnp.zeros_like(tokens), labels, input_mask=masked)
    return model.head.log_prob(logits, tokens, **TEMPS)


def test_confidence_is_log_prob_and_least_confident_stay_masked():
    """Without choice noise the tokens kept masked are the least confident ones, and the
    confidence of a first-step sample is its tempered log-density under the head."""
    model, params, _ = _model("replace")
    _, trace = _sample("replace", seed=1, choice_temperature=0.0)
    trace = jax.tree_util.tree_map(np.asarray, trace)
    unc, conf = trace["uncovered"], trace["log_confidence"]
    prev = np.zeros_like(unc[0])
    for s in range(len(unc)):
        new = unc[s] & ~prev
        still = ~unc[s]
        for b in range(BATCH):
            if still[b].any():
                assert conf[s, b][new[b]].min() >= conf[s, b][still[b]].max()
        assert np.all(np.isposinf(conf[s][prev]))
        prev = unc[s]
    want = np.asarray(_first_step_log_prob(model, params, jnp.asarray(trace["inputs"][0]),
                                           LABELS))
    np.testing.assert_allclose(conf[0][unc[0]], want[unc[0]], rtol=1e-4, atol=1e-4)


def test_cfg_weight_zero_is_plain(decoded):
    style, tokens, trace = decoded
    tokens0, trace0 = _sample(style, choice_temperature=2.0, cfg_weight=0.0)
    np.testing.assert_array_equal(tokens0, tokens)
    np.testing.assert_array_equal(trace0["uncovered"], trace["uncovered"])


def test_cfg_guided_decoding():
    _, plain_trace = _sample("concat", seed=2)
    tokens, trace = _sample("concat", seed=2, cfg_weight=0.5)
    trace = jax.tree_util.tree_map(np.asarray, trace)
    assert tokens.shape == (BATCH, SEQ, DIM) and np.isfinite(np.asarray(tokens)).all()
    assert trace["uncovered"][-1].all()
    want = np.array(expected_num_masked(SEQ, STYLES["concat"][1]))
    np.testing.assert_array_equal(SEQ - trace["uncovered"].sum(-1),
                                  np.broadcast_to(want[:, None], (len(want), BATCH)))
    assert not np.allclose(tokens, plain_trace["inputs"][-1])


def test_errors():
    model, params, _ = _model("replace")
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="schedule"):
        sample_maskgit(model, params, key, labels=LABELS, schedule="bogus")
    with pytest.raises(ValueError, match="labels or batch_size"):
        sample_maskgit(model, params, key, labels=None)
    no_dropout = GIVT(**{**TINY_MASKED, "drop_labels_probability": 0.0})
    with pytest.raises(ValueError, match="label dropout"):
        sample_maskgit(no_dropout, params, key, labels=LABELS, cfg_weight=0.5)
    with pytest.raises(ValueError, match="masked"):
        sample_maskgit(GIVT(**TINY_AR), params, key, labels=LABELS)


def test_sample_by_style_picks_the_sampler_and_its_settings():
    """Each style gets its own sampler with the settings of that style (the other style's
    are not passed); settings of another style than the model's are refused."""
    cfg = config_lib.load_config("configs/imagenet.py", ["givt.model.style='masked'"])
    settings = SamplingSettings.from_config(cfg, dict(num_steps=3, choice_temperature=2.0,
                                                      beam_size=2, fan_size=3,
                                                      cfg_weight=0.0, **TEMPS))
    key = jax.random.PRNGKey(3)
    model, params, _ = _model("replace")
    got = sample_by_style(model, params, key, settings, labels=LABELS)
    want = sample_maskgit(model, params, key, labels=LABELS, num_steps=3,
                          choice_temperature=2.0, cfg_max_samples=128, **TEMPS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = sample_maskgit(model, params, key, labels=LABELS, num_steps=5,
                           choice_temperature=2.0, **TEMPS)
    assert not np.allclose(np.asarray(got), np.asarray(other))  # num_steps was used

    ar = GIVT(**TINY_AR)
    ar_params = random_params(ar, seed=1)
    labels = jnp.array([0, 1], jnp.int32)
    ar_settings = dataclasses.replace(settings, style="ar")
    got = sample_by_style(ar, ar_params, key, ar_settings, labels=labels)
    want, _ = sample_autoregressive(ar, ar_params, key, labels=labels, beam_size=2,
                                    fan_size=3, **TEMPS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="settings for a 'masked' GIVT, the model is 'ar'"):
        sample_by_style(ar, ar_params, key, settings, labels=labels)
    with pytest.raises(ConfigError, match=r"givt\.model\.style='bogus'"):
        dataclasses.replace(settings, style="bogus").check()
