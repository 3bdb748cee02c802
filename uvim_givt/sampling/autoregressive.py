"""Autoregressive sampling for causal GIVT (and the discrete-token models, the original UViM's
VTT and the causal VQ transformer, whose code ids come from a categorical head with the same
interface): KV cache inside a ``lax`` loop.

Supports temperature (scales) and mixture-logit temperature, beam search with
fan-out (each beam draws ``fan_size`` candidates, the best ``beam_size`` of all
candidates by cumulative log-probability survive; with ``rand_top_k`` the survivors are
drawn instead), distribution-based CFG (for ids: CFG on the logits), unconditional
sampling of a class-conditional model, and completion of given tokens (``keep_gt``/``gt``:
those positions take the given value, the others are sampled given everything before them).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.givt import GIVT
from uvim_givt.sampling.cfg import sample_cfg


def _apply(model: GIVT, params: Any, cache: Any, method: str, *args, **kwargs):
    variables = {"params": params} if cache is None else {"params": params, "cache": cache}
    out, mutated = model.apply(variables, *args, method=method, mutable=["cache"], **kwargs)
    return out, mutated["cache"]


def _start(model: GIVT, params: Any, labels, batch: int, encoded, drop: bool):
    """Fresh cache with the label/BOS fed; returns (logits of token 0 [B, N], cache)."""
    _, cache = _apply(model, params, None, "init_cache", batch, encoded)
    drop_labels = jnp.ones((batch,), bool) if drop else None
    logits, cache = _apply(model, params, cache, "prefill", labels, batch, encoded, drop_labels)
    return logits[:, 0], cache


def _step(model: GIVT, params: Any, cache: Any, token: jax.Array, encoded):
    logits, cache = _apply(model, params, cache, "decode_step", token[:, None], encoded)
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
    rand_top_k: bool = False,
    rand_top_k_temperature: float | jax.Array = 1.0,
    unconditional: bool = False,
    keep_gt: jax.Array | None = None,
    gt: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Samples token sequences [B, seq_len, out_dim] (a VTT's: ids [B, seq_len]) and their
    log-probabilities [B].

    ``labels`` [B] (class-conditional) or ``batch_size`` (BOS only); ``image``
    [B, H, W, 3] for encoder-decoder models. The log-probability is under the
    tempered distribution (the guided, unnormalised one with CFG), summed over the
    sampled positions. ``cfg_weight`` None or 0 samples the conditional model exactly;
    ``cfg_max_samples`` is DB-CFG's number of rejection-sampling proposals. Beam search
    and CFG do not combine (as in the published sampler).

    ``rand_top_k`` (beam search): the ``beam_size`` survivors of each step are drawn
    without replacement from softmax(score / ``rand_top_k_temperature``) over the
    candidates (Gumbel top-k) instead of taken best first; as the temperature goes to 0
    this is beam search. ``unconditional``: every label dropped (the NOLABEL embedding
    of a model trained with label dropout). ``keep_gt`` bool [seq_len] with ``gt``
    [B, seq_len, out_dim]: positions where ``keep_gt`` is True take ``gt``'s token (and
    add nothing to the log-probability); the rest are sampled given all previous tokens,
    so ``keep_gt = arange(seq_len) < k`` completes the first k true tokens.
    """
    if model.style != "ar":
        raise ValueError("sample_autoregressive needs a causal (style='ar') model")
    batch = (labels.shape[0] if labels is not None else image.shape[0] if image is not None
             else batch_size)
    if batch is None:
        raise ValueError("give labels, image or batch_size")
    use_cfg = cfg_weight is not None and not (
        isinstance(cfg_weight, int | float) and cfg_weight == 0)
    if use_cfg and (beam_size > 1 or fan_size > 1):
        raise ValueError("beam search and CFG cannot be combined")
    if use_cfg and labels is None:
        raise ValueError("CFG needs labels (the unconditional branch drops them)")
    if unconditional and use_cfg:
        raise ValueError("unconditional sampling drops every label: it has no guidance")
    if (use_cfg or unconditional) and "nolabel" not in model.special_labels:
        raise ValueError("CFG and unconditional sampling need a model trained with label "
                         "dropout (drop_labels_probability > 0)")
    if (keep_gt is None) != (gt is None):
        raise ValueError("give keep_gt and gt together")
    if keep_gt is not None:
        keep_gt = jnp.asarray(keep_gt, bool)
        shape, dtype = token_spec(model, batch)
        gt = jnp.asarray(gt, dtype)
        if keep_gt.shape != (model.seq_len,) or gt.shape != shape:
            raise ValueError(f"keep_gt must be [{model.seq_len}] and gt {list(shape)}; got "
                             f"{keep_gt.shape} and {gt.shape}")
    temps = dict(temperature=temperature, temperature_probs=temperature_probs)
    opts = dict(rand_top_k=bool(rand_top_k), unconditional=bool(unconditional),
                use_cfg=use_cfg, cfg_max_samples=int(cfg_max_samples))
    return _sample_jit(model, params, rng, labels, batch, image, temps, beam_size, fan_size,
                       cfg_weight if use_cfg else None, rand_top_k_temperature, keep_gt, gt,
                       **opts)


def token_spec(model: Any, batch: int) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a batch of token sequences: [B, seq_len, out_dim] float32 for a
    GIVT's Gaussian mixture, [B, seq_len] int32 ids for a categorical head (the samplers'
    one rule for both token kinds)."""
    head = model.head
    token_shape = getattr(head, "token_shape", (model.out_dim,))
    return (batch, model.seq_len, *token_shape), getattr(head, "token_dtype", jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 4, 7, 8), static_argnames=(
    "rand_top_k", "unconditional", "use_cfg", "cfg_max_samples"))
def _sample_jit(model, params, rng, labels, batch, image, temps, beam_size, fan_size,
                cfg_weight, top_k_temperature, keep_gt, gt, *, rand_top_k, unconditional,
                use_cfg, cfg_max_samples):
    encoded = None
    if image is not None:
        encoded = model.apply({"params": params}, image, method="encode")
    if beam_size == 1 and fan_size == 1:
        return _sample_plain(model, params, rng, labels, batch, encoded, temps, use_cfg,
                             cfg_weight, cfg_max_samples, unconditional, keep_gt, gt)
    top_k_temperature = top_k_temperature if rand_top_k else None
    return _sample_beam(model, params, rng, labels, batch, encoded, temps, beam_size, fan_size,
                        top_k_temperature, keep_gt, gt, unconditional=unconditional)


def _force(i, tok, logp, keep_gt, gt):
    """Position ``i``'s token: ``gt``'s where ``keep_gt[i]`` (adding no log-probability),
    else the sample. ``tok`` [B, ..., *token] and ``logp`` [B, ...] broadcast against
    ``gt[:, i]`` [B, *token] (token: (D,) vectors or () ids)."""
    if keep_gt is None:
        return tok, logp
    keep = keep_gt[i]
    extra = tok.ndim - (gt.ndim - 1)  # the candidate axes between batch and token
    given = gt[:, i].reshape(gt.shape[:1] + (1,) * extra + gt.shape[2:])
    return jnp.where(keep, jnp.broadcast_to(given, tok.shape), tok), jnp.where(keep, 0.0, logp)


def _sample_plain(model, params, rng, labels, batch, encoded, temps, use_cfg, cfg_weight,
                  cfg_max_samples, unconditional, keep_gt, gt):
    """One sample per example; with CFG, a second (label-dropped) cache runs alongside."""
    head = model.head
    logits, cache = _start(model, params, labels, batch, encoded, drop=unconditional)
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
        tok, logp = _force(i, *draw(jax.random.fold_in(rng, i), logits, logits_u), keep_gt, gt)
        tokens = tokens.at[:, i].set(tok)
        logits, cache = _step(model, params, cache, tok, encoded)
        if use_cfg:
            logits_u, cache_u = _step(model, params, cache_u, tok, encoded)
        return tokens, total + logp, logits, cache, logits_u, cache_u

    shape, dtype = token_spec(model, batch)
    init = (jnp.zeros(shape, dtype), jnp.zeros((batch,)), logits, cache, logits_u, cache_u)
    tokens, total, logits, _, logits_u, _ = jax.lax.fori_loop(0, model.seq_len - 1, body, init)
    last = model.seq_len - 1
    tok, logp = _force(last, *draw(jax.random.fold_in(rng, last), logits, logits_u), keep_gt, gt)
    return tokens.at[:, -1].set(tok), total + logp


def _sample_beam(model, params, rng, labels, batch, encoded, temps, beam_size, fan_size,
                 top_k_temperature, keep_gt, gt, unconditional=False):
    """Beam search with fan-out; beams live in the batch axis as [B * nb]. With a
    ``top_k_temperature`` the survivors are drawn (``rand_top_k``)."""
    head, seq_len = model.head, model.seq_len
    nb, nf = beam_size, fan_size
    shape, dtype = token_spec(model, batch * nb)
    beam_labels = None if labels is None else jnp.repeat(labels, nb, axis=0)
    beam_encoded = None if encoded is None else jnp.repeat(encoded, nb, axis=0)
    logits, cache = _start(model, params, beam_labels, batch * nb, beam_encoded,
                           drop=unconditional)

    def expand(i, key, logits, total):
        """Draws nf candidates per beam; returns tokens [B, nb*nf, *token], scores
        [B, nb*nf].
        A given position makes every candidate the given token (all beams still equal
        there: given tokens can only be a prefix of what differs)."""
        cand_logits = jnp.repeat(logits.reshape(batch, nb, -1), nf, axis=1)
        tok = head.sample(key, cand_logits, **temps)
        tok, logp = _force(i, tok, head.log_prob(cand_logits, tok, **temps), keep_gt, gt)
        score = jnp.repeat(total.reshape(batch, nb), nf, axis=1)
        return tok, score + logp

    def survivors(key, score):
        """Indices [B, nb] into the candidates, and their scores."""
        if top_k_temperature is None:
            return jax.lax.top_k(score, nb)  # best first
        # Gumbel top-k: nb draws without replacement from softmax(score / T), in the
        # order drawn (the published sampler's jax.random.choice(replace=False, p)).
        noisy = score / top_k_temperature + jax.random.gumbel(key, score.shape)
        _, top = jax.lax.top_k(noisy, nb)
        return jnp.take_along_axis(score, top, axis=1), top

    def select(i, key, tokens, tok, score, cache):
        top_score, top = survivors(key, score)  # [B, nb]
        parent = top // nf
        flat_parent = (parent + jnp.arange(batch)[:, None] * nb).reshape(-1)
        tokens = jnp.take(tokens, flat_parent, axis=0)
        index = top.reshape(top.shape + (1,) * (tok.ndim - 2))
        new_tok = jnp.take_along_axis(tok, index, axis=1).reshape(batch * nb, *shape[2:])
        tokens = tokens.at[:, i].set(new_tok)
        cache = _gather_batch(cache, flat_parent, model.scan)
        return tokens, top_score.reshape(-1), new_tok, cache

    def step_keys(i):
        """The candidates' key (as without rand_top_k) and the survivors' key."""
        key = jax.random.fold_in(rng, i)
        return key, jax.random.fold_in(key, 1)

    def body(i, carry):
        tokens, total, logits, cache = carry
        key_draw, key_keep = step_keys(i)
        tok, score = expand(i, key_draw, logits, total)
        tokens, total, new_tok, cache = select(i, key_keep, tokens, tok, score, cache)
        logits, cache = _step(model, params, cache, new_tok, beam_encoded)
        return tokens, total, logits, cache

    init = (jnp.zeros(shape, dtype), jnp.zeros((batch * nb,)), logits, cache)
    tokens, total, logits, cache = jax.lax.fori_loop(0, seq_len - 1, body, init)
    key_draw, key_keep = step_keys(seq_len - 1)
    tok, score = expand(seq_len - 1, key_draw, logits, total)
    tokens, total, _, _ = select(seq_len - 1, key_keep, tokens, tok, score, cache)
    return tokens[::nb], total[::nb]
