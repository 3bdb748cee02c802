"""Training objectives shared by tasks (stage 2: GIVT negative log-likelihood)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.givt import GIVT, random_training_mask


def givt_nll_loss(model: GIVT, params: Any, tokens: jax.Array, key: jax.Array, *,
                  labels: jax.Array | None = None, image: jax.Array | None = None,
                  train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean negative log-likelihood per token (nats) of ``tokens`` [B, L, D].

    Causal models are teacher-forced; masked models draw a training mask
    (cosine schedule) and are scored on the masked tokens only. Labels are
    dropped with ``drop_labels_probability`` for classifier-free guidance.
    """
    b, s, d = tokens.shape
    k_drop, k_mask, k_dropout = jax.random.split(key, 3)
    drop = None
    if train and model.drop_labels_probability > 0 and labels is not None:
        drop = jax.random.uniform(k_drop, (b,)) < model.drop_labels_probability
    mask = None
    if model.style == "masked":
        mask = random_training_mask(k_mask, b, s, model.min_masking_rate_training)
    logits = model.apply({"params": params}, tokens, labels, image=image, input_mask=mask,
                         drop_labels=drop, train=train, rngs={"dropout": k_dropout})
    logp = model.head.log_prob(logits, tokens)  # [B, L]
    if mask is None:
        nll = -jnp.mean(logp)
    else:
        w = mask.astype(logp.dtype)
        nll = -jnp.sum(logp * w) / jnp.maximum(jnp.sum(w), 1.0)
    return nll, {"nll": nll, "nll_per_dim": nll / d}
