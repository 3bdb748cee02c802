"""MaskGIT-style parallel decoding for masked GIVT (``style="masked"``).

Decoding starts with every token masked. Each step runs the model on the
current inputs, samples every position from the head (or with DB-CFG), scores
each new sample by its (tempered, or guided) log-density, and keeps the
``mask_len`` least confident still-unknown tokens masked, where ``mask_len``
follows the mask schedule; the others are uncovered and keep their value for
good. Gumbel noise (``choice_temperature``, annealed linearly to 0 by default)
randomises the choice. After ``num_steps`` steps every token is uncovered.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.givt import GIVT
from uvim_givt.models.mask_schedule import check_schedule, mask_ratio
from uvim_givt.sampling.autoregressive import token_spec
from uvim_givt.sampling.cfg import sample_cfg


def num_masked_after_step(step: jax.Array, num_steps: int, seq_len: int,
                          num_unknown: jax.Array, schedule: str = "cosine") -> jax.Array:
    """How many tokens stay masked after 0-based ``step``: the schedule's count
    (``models.mask_schedule``: cosine, linear, pow:K), clipped to [0, num_unknown - 1] so
    at least one unknown token is uncovered."""
    ratio = (step + 1.0) / num_steps
    mask_len = jnp.floor(seq_len * mask_ratio(ratio, schedule)).astype(jnp.int32)
    return jnp.maximum(jnp.minimum(mask_len, num_unknown - 1), 0)


def _is_zero(w: Any) -> bool:
    return isinstance(w, int | float) and w == 0


def sample_maskgit(
    model: GIVT,
    params: Any,
    rng: jax.Array,
    *,
    labels: jax.Array | None,
    batch_size: int | None = None,
    num_steps: int = 16,
    temperature: float | jax.Array = 1.0,
    temperature_probs: float | jax.Array = 1.0,
    choice_temperature: float | jax.Array = 1.0,
    anneal_choice_temperature: bool = True,
    schedule: str = "cosine",
    cfg_weight: float | jax.Array | None = None,
    cfg_max_samples: int = 128,
    image: jax.Array | None = None,
    unconditional: bool = False,
    return_trace: bool = False,
    keep_gt: jax.Array | None = None,
    gt: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Samples token sequences [B, seq_len, out_dim] (ids [B, seq_len] for a discrete model,
    ``vocab_size`` > 0) by MaskGIT decoding.

    ``labels`` [B] (or None with ``batch_size`` for unconditional models);
    ``image`` [B, H, W, 3] for encoder-decoder models. ``cfg_weight`` None or 0
    samples the conditional model exactly; otherwise DB-CFG against a pass with
    the labels dropped (ids: CFG on the logits). ``unconditional`` samples a
    class-conditional model with every label dropped (the NOLABEL embedding label dropout
    trained). With ``return_trace`` also returns a dict with, per step,
    ``uncovered`` [S, B, L] (bool), ``inputs`` [S, B, L, D] (the inputs after
    the step; zeros where still masked), ``num_masked`` [S, B] and
    ``log_confidence`` [S, B, L] (log-density of each new sample before the choice
    noise; +inf where uncovered before the step). ``keep_gt`` bool [L] with ``gt``
    [B, L, D] (inpainting and outpainting): those positions start uncovered with ``gt``'s
    tokens and keep them; the schedule then uncovers the others, all of them by the last
    step.
    """
    if model.style != "masked":
        raise ValueError("sample_maskgit needs a masked (style='masked') GIVT model")
    check_schedule(schedule)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    batch = labels.shape[0] if labels is not None else batch_size
    if batch is None:
        raise ValueError("give labels or batch_size")
    if model.has_encoder != (image is not None):
        raise ValueError("pass image= if and only if the model has an encoder")
    use_cfg = cfg_weight is not None and not _is_zero(cfg_weight)
    if unconditional and use_cfg:
        raise ValueError("unconditional sampling drops every label: it has no guidance")
    if (use_cfg or unconditional) and "nolabel" not in model.special_labels:
        raise ValueError("CFG and unconditional sampling need a model trained with label "
                         "dropout (drop_labels_probability > 0)")
    if use_cfg and getattr(model.head, "kind", None) == "full":
        raise ValueError("DB-CFG needs per-channel or diagonal Gaussians, not a full covariance")
    if (keep_gt is None) != (gt is None):
        raise ValueError("give keep_gt and gt together")
    shape, dtype = token_spec(model, batch)
    if keep_gt is None:
        keep_gt = jnp.zeros((model.seq_len,), bool)
        gt = jnp.zeros(shape, dtype)
    keep_gt, gt = jnp.asarray(keep_gt, bool), jnp.asarray(gt, dtype)
    if keep_gt.shape != (model.seq_len,) or gt.shape != shape:
        raise ValueError(f"keep_gt {keep_gt.shape} / gt {gt.shape}: need [{model.seq_len}] / "
                         f"{list(shape)}")
    temps = dict(temperature=temperature, temperature_probs=temperature_probs)
    tokens, trace = _maskgit_jit(
        model, params, rng, labels, batch, image, keep_gt, gt, temps, choice_temperature,
        cfg_weight if use_cfg else None, num_steps=num_steps,
        anneal=anneal_choice_temperature, schedule=schedule, use_cfg=use_cfg,
        unconditional=unconditional,
        cfg_max_samples=cfg_max_samples, return_trace=return_trace)
    return (tokens, trace) if return_trace else tokens


@functools.partial(jax.jit, static_argnums=(0, 4), static_argnames=(
    "num_steps", "anneal", "schedule", "use_cfg", "unconditional", "cfg_max_samples",
    "return_trace"))
def _maskgit_jit(model, params, rng, labels, batch, image, keep_gt, gt, temps,
                 choice_temperature,
                 cfg_weight, *, num_steps, anneal, schedule, use_cfg, unconditional,
                 cfg_max_samples, return_trace):
    head, seq_len = model.head, model.seq_len
    shape, dtype = token_spec(model, batch)

    def per_token(m):  # [B, L] -> broadcastable against tokens [B, L, *token_shape]
        return m.reshape(m.shape + (1,) * (len(shape) - 2))
    variables = {"params": params}
    encoded = None
    if image is not None:
        encoded = model.apply(variables, image, method=GIVT.encode)
    if use_cfg:
        # One pass over [conditional; unconditional] halves of a doubled batch.
        run_labels = None if labels is None else jnp.concatenate([labels, labels])
        drop = jnp.concatenate([jnp.zeros((batch,), bool), jnp.ones((batch,), bool)])
        run_encoded = None if encoded is None else jnp.concatenate([encoded, encoded])
    else:
        drop = jnp.ones((batch,), bool) if unconditional else None
        run_labels, run_encoded = labels, encoded

    def logits_of(inputs, masked):
        if use_cfg:
            inputs, masked = jnp.concatenate([inputs, inputs]), jnp.concatenate([masked, masked])
        return model.apply(variables, inputs, run_labels, run_encoded, masked, drop,
                           method=GIVT.decode)

    def draw(key, logits):
        """Samples every position; returns (tokens [B, L, D], log-confidence [B, L])."""
        if use_cfg:
            tok, logp, _ = sample_cfg(key, head, logits[:batch], logits[batch:], cfg_weight,
                                      **temps, max_samples=cfg_max_samples)
            return tok, logp
        tok = head.sample(key, logits, **temps)
        return tok, head.log_prob(logits, tok, **temps)

    def body(step, carry):
        inputs, masked, trace = carry
        key_sample, key_choice = jax.random.split(jax.random.fold_in(rng, step))
        sampled, log_conf = draw(key_sample, logits_of(inputs, masked))
        sampled = jnp.where(per_token(masked), sampled, inputs)
        log_conf = jnp.where(jnp.isnan(log_conf), -jnp.inf, log_conf)
        # Uncovered tokens are never chosen to stay masked.
        log_conf = jnp.where(masked, log_conf, jnp.inf)
        clean_conf = log_conf
        ratio = (step + 1.0) / num_steps
        noise_scale = choice_temperature * ((1.0 - ratio) if anneal else 1.0)
        log_conf = log_conf + noise_scale * jax.random.gumbel(key_choice, log_conf.shape)
        num_unknown = masked.sum(-1)
        mask_len = num_masked_after_step(step, num_steps, seq_len, num_unknown, schedule)
        # Rank of each token by confidence (0 = least confident); stable on ties.
        rank = jnp.argsort(jnp.argsort(log_conf, axis=-1), axis=-1)
        new_masked = rank < mask_len[:, None]
        new_inputs = jnp.where(per_token(new_masked), jnp.zeros((), dtype), sampled)
        if return_trace:
            trace = {"uncovered": trace["uncovered"].at[step].set(~new_masked),
                     "inputs": trace["inputs"].at[step].set(new_inputs),
                     "num_masked": trace["num_masked"].at[step].set(mask_len),
                     "log_confidence": trace["log_confidence"].at[step].set(clean_conf)}
        return new_inputs, new_masked, trace

    masked = jnp.broadcast_to(~keep_gt, (batch, seq_len))
    inputs = jnp.where(per_token(masked), jnp.zeros((), dtype), gt)
    trace = {}
    if return_trace:
        trace = {"uncovered": jnp.zeros((num_steps, batch, seq_len), bool),
                 "inputs": jnp.zeros((num_steps, *shape), dtype),
                 "num_masked": jnp.zeros((num_steps, batch), jnp.int32),
                 "log_confidence": jnp.zeros((num_steps, batch, seq_len), jnp.float32)}
    inputs, _, trace = jax.lax.fori_loop(0, num_steps, body, (inputs, masked, trace))
    return inputs, trace
