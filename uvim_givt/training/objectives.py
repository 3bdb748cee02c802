"""Training objectives shared by tasks (stage 2: the negative log-likelihood of a GIVT, or of
a discrete-token transformer over code ids)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.adaptor import PARAMS_KEY as ADAPTOR_PARAMS_KEY
from uvim_givt.models.adaptor import InvertibleAdaptor
from uvim_givt.models.givt import GIVT, random_training_mask


def givt_nll_loss(model: GIVT, params: Any, tokens: jax.Array, key: jax.Array, *,
                  labels: jax.Array | None = None, image: jax.Array | None = None,
                  train: bool = True, input_noise: float = 0.0,
                  adaptor: InvertibleAdaptor | None = None, label_smoothing: float = 0.0
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean negative log-likelihood per token (nats) of ``tokens`` [B, L, D] (or of code
    ids [B, L], int, for a discrete model, ``vocab_size`` > 0: the softmax cross-entropy,
    with the same teacher forcing, masking and label dropout; no input noise).

    Causal models are teacher-forced; masked models draw a training mask
    (cosine schedule) and are scored on the masked tokens only. Labels are
    dropped with ``drop_labels_probability`` for classifier-free guidance.

    ``input_noise`` > 0 adds Gaussian noise of that standard deviation to the
    teacher-forcing *inputs* during training (the targets stay clean), so a
    conditional model cannot lean on exact previous tokens and must use its
    condition; this narrows the gap between teacher forcing and free-running
    sampling (exposure bias). Off (0) in the published recipes.

    ``adaptor`` (an ``InvertibleAdaptor``, its parameters under ``params["params_adaptor"]``,
    trained jointly): the GIVT models ``y = adaptor(tokens)`` and the loss is the NLL of
    ``tokens`` by the change of variables, ``NLL_GIVT(y) - log|det dy/dtokens|``, the
    log-determinant spread over the L tokens of an example (per token, like the NLL). The
    metrics add ``nll_adapted`` (the GIVT's NLL of y per token) and ``adaptor_logdet``
    (per example). A masked model's loss covers its masked tokens only, an estimate of
    the per-token NLL of y, and each masked token's share of its example's log-determinant
    is subtracted: the loss is one ratio over the masked tokens, whose count it reports as
    its weight (``weight/...``, ``training.trainer.WEIGHT_PREFIX``).

    ``label_smoothing`` > 0 (code ids only; MaskGIT's 0.1): the loss is the cross-entropy
    against label-smoothed targets (``models.categorical.smoothed_xent``), over the same
    tokens; ``nll`` stays the plain NLL, and the metrics add ``xent_smoothed``.
    """
    logdet = None
    if adaptor is not None:
        tokens, logdet = adaptor.apply({"params": params[ADAPTOR_PARAMS_KEY]}, tokens,
                                       method=adaptor.forward_and_logdet)
    elif isinstance(params, Mapping) and ADAPTOR_PARAMS_KEY in params:
        raise ValueError("these GIVT parameters have an adaptor (params_adaptor): pass "
                         "adaptor=builders.build_adaptor(cfg)")
    discrete = jnp.issubdtype(tokens.dtype, jnp.integer)  # ids of a VQ tokenizer
    if label_smoothing and not discrete:
        raise ValueError(f"label_smoothing={label_smoothing}: only a softmax over code ids "
                         "has labels to smooth (these tokens are real-valued)")
    b, s = tokens.shape[:2]
    d = 1 if discrete else tokens.shape[2]
    k_drop, k_mask, k_dropout, k_noise = jax.random.split(key, 4)
    drop = None
    if train and model.drop_labels_probability > 0 and labels is not None:
        drop = jax.random.uniform(k_drop, (b,)) < model.drop_labels_probability
    mask = None
    if model.style == "masked":
        mask = random_training_mask(k_mask, b, s, model.min_masking_rate_training,
                                    model.mask_schedule_train)
    inputs = tokens
    if train and input_noise > 0 and not discrete:
        inputs = tokens + input_noise * jax.random.normal(k_noise, tokens.shape, tokens.dtype)
    if model.has_encoder != (image is not None):
        raise ValueError("pass image= if and only if the model has an encoder")
    variables, rngs = {"params": params}, {"dropout": k_dropout}
    encoded = None
    if image is not None:
        encoded = model.apply(variables, image, train, method=GIVT.encode, rngs=rngs)
    logits = model.apply(variables, inputs, labels, encoded, mask, drop, train,
                         method=GIVT.decode, rngs=rngs)
    # float32 whatever the model's compute dtype (the head casts too; explicit here).
    targets = tokens if discrete else tokens.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    logp = model.head.log_prob(logits, targets)  # [B, L]
    count = None
    if mask is None:
        def over_tokens(x):
            return jnp.mean(x)
    else:
        # a ratio over the batch's masked tokens: their count is its weight, so that
        # micro-batches (train.grad_accum) combine as the whole batch would
        w = mask.astype(logp.dtype)
        count = jnp.maximum(jnp.sum(w), 1.0)

        def over_tokens(x):
            return jnp.sum(x * w) / count
    nll = over_tokens(-logp)
    parts = {}
    if logdet is not None:
        # log|det| spread over an example's L tokens; a masked model subtracts each masked
        # token's share, so that its loss stays one ratio over the masked tokens
        per_token = logdet / s
        share = jnp.mean(per_token) if mask is None else \
            jnp.sum(jnp.sum(w, axis=1) * per_token) / count
        parts = {"nll_adapted": nll, "adaptor_logdet": jnp.mean(logdet)}
        nll = nll - share
    parts.update(nll=nll, nll_per_dim=nll / d)
    loss = nll
    if label_smoothing:
        loss = parts["xent_smoothed"] = over_tokens(
            model.head.smoothed_xent(logits, targets, label_smoothing))
    if count is not None:
        parts.update({f"weight/{k}": count for k in ("loss", *parts)
                      if k != "adaptor_logdet"})
    return loss, parts
