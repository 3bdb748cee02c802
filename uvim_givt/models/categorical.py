"""A softmax head over token ids: what the discrete-token transformers (the original UViM's
VTT, the class-conditional VQ transformers) put where GIVT has its Gaussian mixture.

It offers the sampler interface of ``GMMHead`` (``sample``, ``log_prob``, ``mean``,
``num_logits``, and ``token_shape`` / ``token_dtype``: scalar int32 ids), so one
autoregressive sampler (KV cache, beam search) and one MaskGIT sampler serve both token
kinds. Classifier-free guidance of ids is on the logits (:func:`guided_logits`), as in
MaskGIT / Muse, where GIVT guides its densities (``sampling/cfg.py``, DB-CFG).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def guided_logits(logits_c: jax.Array, logits_u: jax.Array, w: Any) -> jax.Array:
    """Classifier-free guidance on logits: ``(1 + w) * logits_c - w * logits_u``, i.e. the
    distribution proportional to p_c^(1+w) / p_u^w (w = 0: the conditional model)."""
    w = jnp.asarray(w, jnp.float32)
    return (1.0 + w) * logits_c.astype(jnp.float32) - w * logits_u.astype(jnp.float32)


def smoothed_xent(logp: jax.Array, tokens: jax.Array, smoothing: float,
                  pad_id: int | None = None) -> jax.Array:
    """Cross-entropy [...] of the log-probabilities ``logp`` [..., V] against label-smoothed
    targets (MaskGIT trains with 0.1): ``1 - smoothing`` on the token plus ``smoothing``
    spread evenly over the ids, i.e. ``optax.smooth_labels`` of the one-hot target. With
    ``pad_id`` the padding id, never a target, gets none of it (it is spread over the other
    V - 1 ids; its ``logp`` may be -inf). ``smoothing`` 0: the NLL of ``tokens``."""
    picked = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if not smoothing:
        return -picked
    num_ids = logp.shape[-1]
    if pad_id is not None:
        # where, not subtraction: a masked pad's -inf would make the sum nan
        real = jnp.arange(num_ids) != pad_id
        spread = jnp.sum(jnp.where(real, logp, 0.0), axis=-1) / (num_ids - 1)
    else:
        spread = jnp.mean(logp, axis=-1)
    return -(1.0 - smoothing) * picked - smoothing * spread


class CategoricalHead:
    """A softmax over ``vocab_size`` token ids.

    ``pad_id``: an id that is never a target and so never drawn (its logit is masked): the
    VTT's padding symbol 0; None when every id is a code (the VQ transformers).
    ``temperature`` divides the logits; 0 takes the most likely id (the published UViM
    predictions use 1e-7, the same thing); ``top_k`` > 0 draws among the k most likely ids
    only. ``temperature_probs`` (the GMM's mixture temperature) has no meaning here and is
    ignored.
    """

    token_shape: tuple[int, ...] = ()
    token_dtype: Any = jnp.int32

    def __init__(self, vocab_size: int, top_k: int = 0, pad_id: int | None = 0):
        if vocab_size < 2 + (pad_id is not None):
            raise ValueError(f"vocab_size={vocab_size}: needs at least two codes"
                             + (" and the padding id" if pad_id is not None else ""))
        self.num_logits = int(vocab_size)
        self.top_k = int(top_k)
        self.pad_id = pad_id

    def _tempered(self, logits: jax.Array, temperature: Any) -> jax.Array:
        logits = logits.astype(jnp.float32)
        if self.pad_id is not None:
            logits = logits.at[..., self.pad_id].set(-jnp.inf)
        if self.top_k:
            kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        t = jnp.asarray(temperature, jnp.float32)
        return logits / jnp.where(t > 0, t, 1.0)

    def sample(self, key: jax.Array, logits: jax.Array, temperature: Any = 1.0,
               temperature_probs: Any = 1.0) -> jax.Array:
        """Ids [...] drawn from softmax(logits / temperature) (the padding id excluded)."""
        del temperature_probs
        tempered = self._tempered(logits, temperature)
        drawn = jax.random.categorical(key, tempered, axis=-1)
        best = jnp.argmax(tempered, axis=-1)
        return jnp.where(jnp.asarray(temperature) > 0, drawn, best).astype(jnp.int32)

    def log_prob(self, logits: jax.Array, tokens: jax.Array, temperature: Any = 1.0,
                 temperature_probs: Any = 1.0) -> jax.Array:
        """log p(tokens) [...] under the tempered distribution (0 where temperature is 0:
        the argmax is certain)."""
        del temperature_probs
        logp = jax.nn.log_softmax(self._tempered(logits, temperature), axis=-1)
        picked = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return jnp.where(jnp.asarray(temperature) > 0, picked, 0.0)

    def smoothed_xent(self, logits: jax.Array, tokens: jax.Array, smoothing: float
                      ) -> jax.Array:
        """The label-smoothed cross-entropy [...] of ``tokens`` (:func:`smoothed_xent`;
        ``smoothing`` 0: ``-log_prob``), the padding id excluded from the targets."""
        logp = jax.nn.log_softmax(self._tempered(logits, 1.0), axis=-1)
        return smoothed_xent(logp, tokens, smoothing, self.pad_id)

    def mean(self, logits: jax.Array) -> jax.Array:
        """The most likely id (the mode; what "teacher-forced means" are for ids)."""
        return jnp.argmax(self._tempered(logits, 1.0), axis=-1).astype(jnp.int32)
