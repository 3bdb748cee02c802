"""Autoregressive sampling: KV cache vs teacher forcing, beam search, shapes, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvim_givt.models.givt import GIVT
from uvim_givt.sampling import sample_autoregressive
from uvim_givt.sampling.autoregressive import _sample_beam, _start, _step

SEQ, DIM, LABELS, BATCH = 6, 3, 5, 8
TEMPS = dict(temperature=0.9, temperature_probs=1.0)
# test_cfg.py builds the same decoder-only model, so compilations are shared.
TINY_AR = dict(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=1, seq_len=SEQ,
               out_dim=DIM, num_labels=LABELS, style="ar", drop_labels_probability=0.1,
               num_mixtures=2, head_kind="diag")
TINY_ENCDEC = dict(emb_dim=16, num_heads=2, mlp_dim=32, num_decoder_layers=1, num_layers=1,
                   seq_len=4, out_dim=DIM, num_labels=None, style="ar", num_mixtures=1,
                   head_kind="per_channel", input_size=(16, 16), patches=(8, 8))


def random_params(model: GIVT, seed: int = 0):
    """Random parameters of the model's shapes (no compilation: shapes come from
    ``eval_shape``). Random rather than initialised weights, because LogitsDense
    starts at zero and the logits would not depend on the inputs."""
    x = jnp.zeros((1, model.seq_len, model.out_dim))
    labels = None if model.num_labels is None else jnp.zeros((1,), jnp.int32)
    image = jnp.zeros((1, *model.input_size, 3)) if model.has_encoder else None
    kw = dict(image=image)
    if model.style == "masked":
        kw["input_mask"] = jnp.ones((1, model.seq_len), bool)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), x, labels, **kw))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "scale":  # LayerNorm scales near 1
            return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape), jnp.float32)
        return jnp.asarray(0.3 * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.partial(jax.jit, static_argnums=0)
def teacher_forced(model, params, tokens, labels, image, temps):
    """Full-pass logits [B, L, N] and the tempered log-probability [B] of ``tokens``."""
    logits = model.apply({"params": params}, tokens, labels, image=image)
    return logits, model.head.log_prob(logits, tokens, **temps).sum(-1)


@functools.partial(jax.jit, static_argnums=0)
def cached_logits(model, params, tokens, labels, image):
    """Logits of every position from the KV cache, feeding the given tokens."""
    batch = tokens.shape[0]
    encoded = None
    if image is not None:
        encoded = model.apply({"params": params}, image, method=GIVT.encode)
    first, cache = _start(model, params, labels, batch, encoded, drop=False)

    def body(cache, token):
        logits, cache = _step(model, params, cache, token, encoded)
        return cache, logits

    _, rest = jax.lax.scan(body, cache, jnp.swapaxes(tokens[:, :-1], 0, 1))
    return jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def tiny_givt(shape: dict, seed: int = 0, **changes) -> tuple[GIVT, dict]:
    """A GIVT of ``shape`` (TINY_AR, TINY_ENCDEC) with ``changes``, and random parameters
    drawn with ``seed``."""
    model = GIVT(**{**shape, **changes})
    return model, random_params(model, seed=seed)


@pytest.fixture(scope="module")
def ar_model():
    return tiny_givt(TINY_AR)


@pytest.fixture(scope="module")
def ar_model_scanned():
    return tiny_givt(TINY_AR, seed=1, num_decoder_layers=2, scan=True)


@pytest.fixture(scope="module")
def encdec_model():
    return tiny_givt(TINY_ENCDEC, seed=2)


@pytest.fixture(scope="module")
def encdec_skip_model(encdec_model):
    """encoder_skip adds no parameters: the same weights as encdec_model."""
    return GIVT(**TINY_ENCDEC, encoder_skip=True), encdec_model[1]


def _inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.normal(size=(BATCH, model.seq_len, model.out_dim)), jnp.float32)
    labels = None
    if model.num_labels is not None:
        labels = jnp.asarray(rng.integers(0, model.num_labels, BATCH), jnp.int32)
    image = None
    if model.has_encoder:
        image = jnp.asarray(rng.normal(size=(BATCH, *model.input_size, 3)), jnp.float32)
    return tokens, labels, image


@pytest.mark.parametrize("which", ["ar_model", "ar_model_scanned", "encdec_model",
                                   "encdec_skip_model"])
def test_kv_cache_matches_teacher_forcing(which, request):
    model, params = request.getfixturevalue(which)
    tokens, labels, image = _inputs(model)
    full, _ = teacher_forced(model, params, tokens, labels, image, TEMPS)
    cached = cached_logits(model, params, tokens, labels, image)
    assert full.shape == cached.shape == (BATCH, model.seq_len, model.head.num_logits)
    assert float(jnp.abs(full).max()) > 0.1  # the check is not vacuous
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4)


def test_encoder_skip_feeds_each_encoded_token_to_its_position(encdec_model,
                                                               encdec_skip_model):
    """With encoder_skip, position i's input is the published input plus encoded token i."""
    plain, params = encdec_model
    skip, _ = encdec_skip_model
    tokens, _, image = _inputs(plain, seed=5)
    got = skip.apply({"params": params}, tokens, image=image)

    def published_plus_encoded(m):
        enc = m.encode(image)
        x = jnp.concatenate([m.EmbedLabels(m.label_ids(None, BATCH))[:, None],
                             m.EmbedTargets(tokens)[:, :-1]], axis=1)
        causal = jnp.tril(jnp.ones((m.seq_len, m.seq_len), bool))[None, None]
        return m.decoder(x + enc, enc, causal)

    want = plain.apply({"params": params}, method=published_plus_encoded)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got - plain.apply({"params": params}, tokens, image=image)).max()) > 1e-2
    with pytest.raises(ValueError, match="encoder_skip needs an encoder"):
        GIVT(**{**TINY_ENCDEC, "seq_len": 5}, encoder_skip=True).init(
            jax.random.PRNGKey(0), tokens[:, :1].repeat(5, 1), image=image)


@pytest.fixture(scope="module")
def plain_samples(ar_model):
    model, params = ar_model
    _, labels, _ = _inputs(model, seed=4)
    rng = jax.random.PRNGKey(3)
    tok, logp = sample_autoregressive(model, params, rng, labels=labels, **TEMPS)
    return rng, labels, tok, logp


def test_plain_sampling_shapes_and_log_prob(ar_model, plain_samples):
    model, params = ar_model
    _, labels, tok, logp = plain_samples
    assert tok.shape == (BATCH, SEQ, DIM) and logp.shape == (BATCH,)
    assert bool(jnp.isfinite(tok).all())
    _, want = teacher_forced(model, params, tok, labels, None, TEMPS)
    np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-3)


def test_beam1_fan1_equals_plain_sampling(ar_model, plain_samples):
    model, params = ar_model
    rng, labels, tok, logp = plain_samples
    beam = jax.jit(_sample_beam, static_argnums=(0, 4, 7, 8))
    tok_b, logp_b = beam(model, params, rng, labels, BATCH, None, TEMPS, 1, 1, None, None, None)
    np.testing.assert_allclose(tok_b, tok, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logp_b, logp, rtol=1e-5, atol=1e-5)


def test_beam_search_log_prob_and_quality(ar_model, plain_samples):
    model, params = ar_model
    _, labels, _, logp_plain = plain_samples
    tok, logp = sample_autoregressive(model, params, jax.random.PRNGKey(5), labels=labels,
                                      beam_size=4, fan_size=4, **TEMPS)
    assert tok.shape == (BATCH, SEQ, DIM) and logp.shape == (BATCH,)
    _, want = teacher_forced(model, params, tok, labels, None, TEMPS)
    np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-3)
    # The best of 16 candidates per step beats a single sample on average.
    assert float(logp.mean()) >= float(logp_plain.mean())


@pytest.mark.parametrize("which", ["ar_model_scanned", "encdec_model"])
def test_beam_search_reorders_cache(which, request):
    """Scanned caches (batch on axis 1) and cross-attention survive beam reordering."""
    model, params = request.getfixturevalue(which)
    _, labels, image = _inputs(model, seed=7)
    kw = dict(labels=labels) if labels is not None else dict(batch_size=BATCH)
    tok, logp = sample_autoregressive(model, params, jax.random.PRNGKey(8), image=image,
                                      beam_size=2, fan_size=3, **kw, **TEMPS)
    assert tok.shape == (BATCH, model.seq_len, DIM) and logp.shape == (BATCH,)
    _, want = teacher_forced(model, params, tok, labels, image, TEMPS)
    np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-3)


def test_errors(ar_model):
    model, params = ar_model
    labels = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="CFG"):
        sample_autoregressive(model, params, jax.random.PRNGKey(0), labels=labels,
                              cfg_weight=0.5, beam_size=2)
    with pytest.raises(ValueError, match="CFG"):
        sample_autoregressive(model, params, jax.random.PRNGKey(0), labels=labels,
                              cfg_weight=0.5, fan_size=2)
    with pytest.raises(ValueError, match="labels, image or batch_size"):
        sample_autoregressive(model, params, jax.random.PRNGKey(0))
    masked = GIVT(**{**TINY_AR, "style": "masked"})
    with pytest.raises(ValueError, match="causal"):
        sample_autoregressive(masked, params, jax.random.PRNGKey(0), labels=labels)
