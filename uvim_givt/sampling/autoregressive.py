"""Autoregressive sampling for causal GIVT: KV cache inside a ``lax`` loop.

Supports temperature (scales) and mixture-logit temperature, beam search with
fan-out (each beam draws ``fan_size`` candidates, the best ``beam_size`` of all
candidates by cumulative log-probability survive), and distribution-based CFG.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.givt import GIVT
from uvim_givt.sampling.cfg import sample_cfg


def _apply(model: GIVT, params: Any, cache: Any, method, *args, **kwargs):
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    out, mutated = model.apply(variables, *args, method=method, mutable=["cache"], **kwargs)
    return out, mutated["cache"]


def _start(model: GIVT, params: Any, labels, batch: int, encoded, drop: bool):
    """Fresh cache with the label/BOS fed; returns (logits of token 0 [B, N], cache)."""
    _, cache = _apply(model, params, None, GIVT.init_cache, batch, encoded)
    drop_labels = jnp.ones((batch,), bool) if drop else None
    logits, cache = _apply(model, params, cache, GIVT.prefill, labels, batch, encoded, drop_labels)
    return logits[:, 0], cache


def _step(model: GIVT, params: Any, cache: Any, token: jax.Array, encoded):
    logits, cache = _apply(model, params, cache, GIVT.decode_step, token[:, None], encoded)
    return logits[:, 0], cache


def _gather_batch(cache: Any, index: jax.Array, scanned: bool) -> Any:
    """Reorders the batch axis of every cache array (axis 1 when layers are scanned)."""
    axis = 1 if scanned else 0

    def take(x):
        if x.ndim <= axis:  # position counters: scalar, or one per scanned layer
            return x
        return jnp.take(x, index, axis=axis)

    return jax.tree_util.tree_map(take, cache)


def sample_autoregressive(
    model: GIVT,
    params: Any,
    rng: jax.Array,
    *,
    labels: jax.Array | None = None,
    batch_size: int | None = None,
    image: jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
    temperature_probs: float | jax.Array = 1.0,
    beam_size: int = 1,
    fan_size: int = 1,
    cfg_weight: float | jax.Array | None = None,
    cfg_max_samples: int = 128,
) -> tuple[jax.Array, jax.Array]:
    """Samples token sequences [B, seq_len, out_dim] and their log-probabilities [B].

    ``labels`` [B] (class-conditional) or ``batch_size`` (BOS only); ``image``
    [B, H, W, 3] for encoder-decoder models. The log-probability is under the
    tempered distribution (the guided, unnormalised one with CFG). ``cfg_weight``
    None or 0 samples the conditional model exactly; beam search and CFG do not
    combine (as in the published sampler).
    """
    if model.style != "ar":
        raise ValueError("sample_autoregressive needs a causal (style='ar') model")
    batch = labels.shape[0] if labels is not None else batch_size
    if batch is None:
        raise ValueError("give labels or batch_size")
    use_cfg = cfg_weight is not None and not (
        isinstance(cfg_weight, int | float) and cfg_weight == 0)
    if use_cfg and (beam_size > 1 or fan_size > 1):
        raise ValueError("beam search and CFG cannot be combined")
    if use_cfg and labels is None:
        raise ValueError("CFG needs labels (the unconditional branch drops them)")
    temps = dict(temperature=temperature, temperature_probs=temperature_probs)
    return _sample_jit(model, params, rng, labels, batch, image, temps, beam_size, fan_size,
                       use_cfg, cfg_weight if use_cfg else None, cfg_max_samples)


@functools.partial(jax.jit, static_argnums=(0, 4, 7, 8, 9, 11))
def _sample_jit(model, params, rng, labels, batch, image, temps, beam_size, fan_size, use_cfg,
                cfg_weight, cfg_max_samples):
    encoded = None
    if image is not None:
        encoded = model.apply({"params": params}, image, method=GIVT.encode)
    if beam_size == 1 and fan_size == 1:
        return _sample_plain(model, params, rng, labels, batch, encoded, temps, use_cfg,
                             cfg_weight, cfg_max_samples)
    return _sample_beam(model, params, rng, labels, batch, encoded, temps, beam_size, fan_size)


def _sample_plain(model, params, rng, labels, batch, encoded, temps, use_cfg, cfg_weight,
                  cfg_max_samples):
    """One sample per example; with CFG, a second (label-dropped) cache runs alongside."""
    head, seq_len, dim = model.head, model.seq_len, model.out_dim
    logits, cache = _start(model, params, labels, batch, encoded, drop=False)
    logits_u, cache_u = (_start(model, params, labels, batch, encoded, drop=True)
                         if use_cfg else (None, None))

    def draw(key, logits, logits_u):
        if use_cfg:
            tok, logp, _ = sample_cfg(key, head, logits, logits_u, cfg_weight, **temps,
                                      max_samples=cfg_max_samples)
            return tok, logp
        tok = head.sample(key, logits, **temps)
        return tok, head.log_prob(logits, tok, **temps)

    def body(i, carry):
        tokens, total, logits, cache, logits_u, cache_u = carry
        tok, logp = draw(jax.random.fold_in(rng, i), logits, logits_u)
        tokens = tokens.at[:, i].set(tok)
        logits, cache = _step(model, params, cache, tok, encoded)
        if use_cfg:
            logits_u, cache_u = _step(model, params, cache_u, tok, encoded)
        return tokens, total + logp, logits, cache, logits_u, cache_u

    init = (jnp.zeros((batch, seq_len, dim)), jnp.zeros((batch,)), logits, cache,
            logits_u, cache_u)
    tokens, total, logits, _, logits_u, _ = jax.lax.fori_loop(0, seq_len - 1, body, init)
    tok, logp = draw(jax.random.fold_in(rng, seq_len - 1), logits, logits_u)
    return tokens.at[:, -1].set(tok), total + logp



def _sample_beam(model, params, rng, labels, batch, encoded, temps, beam_size, fan_size):
    """Beam search with fan-out; beams live in the batch axis as [B * nb]."""
    head, seq_len, dim = model.head, model.seq_len, model.out_dim
    nb, nf = beam_size, fan_size
    beam_labels = None if labels is None else jnp.repeat(labels, nb, axis=0)
    beam_encoded = None if encoded is None else jnp.repeat(encoded, nb, axis=0)
    logits, cache = _start(model, params, beam_labels, batch * nb, beam_encoded, drop=False)

    def expand(key, logits, total):
        """Draws nf candidates per beam; returns tokens [B, nb*nf, D], scores [B, nb*nf]."""
        cand_logits = jnp.repeat(logits.reshape(batch, nb, -1), nf, axis=1)
        tok = head.sample(key, cand_logits, **temps)
        score = jnp.repeat(total.reshape(batch, nb), nf, axis=1)
        return tok, score + head.log_prob(cand_logits, tok, **temps)

    def select(i, tokens, tok, score, cache):
        top_score, top = jax.lax.top_k(score, nb)  # [B, nb], best first
        parent = top // nf
        flat_parent = (parent + jnp.arange(batch)[:, None] * nb).reshape(-1)
        tokens = jnp.take(tokens, flat_parent, axis=0)
        new_tok = jnp.take_along_axis(tok, top[..., None], axis=1).reshape(batch * nb, dim)
        tokens = tokens.at[:, i].set(new_tok)
        cache = _gather_batch(cache, flat_parent, model.scan)
        return tokens, top_score.reshape(-1), new_tok, cache

    def body(i, carry):
        tokens, total, logits, cache = carry
        tok, score = expand(jax.random.fold_in(rng, i), logits, total)
        tokens, total, new_tok, cache = select(i, tokens, tok, score, cache)
        logits, cache = _step(model, params, cache, new_tok, beam_encoded)
        return tokens, total, logits, cache

    init = (jnp.zeros((batch * nb, seq_len, dim)), jnp.zeros((batch * nb,)), logits, cache)
    tokens, total, logits, cache = jax.lax.fori_loop(0, seq_len - 1, body, init)
    tok, score = expand(jax.random.fold_in(rng, seq_len - 1), logits, total)
    tokens, total, _, _ = select(seq_len - 1, tokens, tok, score, cache)
    return tokens[::nb], total[::nb]
