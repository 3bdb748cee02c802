"""Shared math of the Gaussian (beta-)VAEs: sampling, code dropout, KL and the losses.

Normalisation (the published big_vision one, so the published betas mean the same):

* reconstruction is computed per example, then averaged over the batch;
* the KL term is summed over codeword dims AND over the tokens of an example
  (``kl_token_reduction="sum"``), then averaged over the batch. With
  ``kl_token_reduction="mean"`` it is averaged over tokens instead (beta then
  needs to be ``code_len`` times larger for the same effect).

Axis conventions: ``mu``, ``logvar`` and ``z`` are ``[B, L, D]`` (L tokens of D
dims); label maps are int ``[B, H, W, C]``; logits are ``[B, H, W, classes]``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Literal

import jax
import jax.numpy as jnp

CodeDropout = Literal["none", "seq", "random"]
TokenReduction = Literal["sum", "mean"]


def reparametrize(mu: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A sample z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    eps = jax.random.normal(rng, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


def code_dropout_mask(rng: jax.Array, batch: int, code_len: int, mode: CodeDropout) -> jax.Array:
    """Bool ``[B, L]``, True = token kept. Published semantics (big_vision ``code_dropout``).

    Token ``i`` has importance ``(L - i) / (L + 1)`` (linearly from ~1 to ~0); per
    example a threshold ``t ~ U[0, 1)`` is drawn and the tokens with importance > t
    are kept. ``"seq"``: a prefix of random length is kept (a later token is dropped
    more often; on average half the tokens survive). ``"random"``: the same number
    of tokens is kept, but at positions permuted independently per example.
    ``"none"``: all tokens are kept.
    """
    if mode == "none":
        return jnp.ones((batch, code_len), bool)
    if mode not in ("seq", "random"):
        raise ValueError(f"unknown code_dropout {mode!r}: none, seq or random")
    rng_thr, rng_perm = jax.random.split(rng)
    importance = jnp.linspace(1.0, 0.0, code_len + 2)[1:-1]
    thr = jax.random.uniform(rng_thr, (batch,))
    keep = importance[None, :] > thr[:, None]
    if mode == "random":
        keep = jax.random.permutation(rng_perm, keep, axis=-1, independent=True)
    return keep


def apply_code_dropout(z: jax.Array, rng: jax.Array, mode: CodeDropout) -> jax.Array:
    """Zeroes the dropped tokens of ``z`` [B, L, D] (see ``code_dropout_mask``)."""
    if mode == "none":
        return z
    keep = code_dropout_mask(rng, z.shape[0], z.shape[1], mode)
    return z * keep[:, :, None].astype(z.dtype)


def posterior_code(mu: jax.Array, logvar: jax.Array, train: bool, rng: jax.Array | None,
                   make_rng: Callable[[str], jax.Array], code_dropout: CodeDropout) -> jax.Array:
    """The z a VAE decodes: the mean ``mu`` unless training; when training a posterior
    sample (:func:`reparametrize`) after code dropout (:func:`apply_code_dropout`), both
    drawn from ``rng`` split in two (sample, dropout) or, if None, from
    ``make_rng("dropout")`` (the VAE module's ``make_rng``)."""
    if not train:
        return mu
    if rng is None:
        rng = make_rng("dropout")
    rng_z, rng_drop = jax.random.split(rng)
    z = reparametrize(mu, logvar, rng_z)
    return apply_code_dropout(z, rng_drop, code_dropout)


def gaussian_kl(mu: jax.Array, logvar: jax.Array,
                token_reduction: TokenReduction = "sum") -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, shape [B].

    Summed over the last (codeword) axis; over the remaining non-batch axes
    (the tokens) summed (``"sum"``, published) or averaged (``"mean"``).
    """
    mu, logvar = mu.astype(jnp.float32), logvar.astype(jnp.float32)  # losses in float32
    kl = 0.5 * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)
    kl = jnp.sum(kl, axis=-1)
    axes = tuple(range(1, kl.ndim))
    if token_reduction == "sum":
        return jnp.sum(kl, axis=axes)
    if token_reduction == "mean":
        return jnp.mean(kl, axis=axes)
    raise ValueError(f"unknown token_reduction {token_reduction!r}: sum or mean")


def pixel_xent(logits: jax.Array, labels: jax.Array, ignore_zero: bool = False) -> jax.Array:
    """Softmax cross-entropy averaged over the pixels of each example, shape [B].

    ``logits`` [B, ..., K], ``labels`` int [B, ...]. With ``ignore_zero`` the pixels
    whose target class is 0 are left out and each example is averaged over its
    valid pixels only (an example without valid pixels contributes 0).
    """
    b = logits.shape[0]
    logp = jax.nn.log_softmax(logits.reshape(b, -1, logits.shape[-1]).astype(jnp.float32))
    labels = labels.reshape(b, -1).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if not ignore_zero:
        return jnp.mean(nll, axis=1)
    valid = (labels != 0).astype(nll.dtype)
    return jnp.sum(nll * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1.0)


def label_xent(
    logits: Mapping[str, jax.Array],
    labels: jax.Array,
    *,
    label_channels: Mapping[str, tuple[int, int]],
    ignore_zero: Collection[str] | bool = (),
    value_channels: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reconstruction term of the label VAEs: per example, the sum over class channels
    of their pixel-averaged cross-entropies (:func:`pixel_xent`) plus, over value channels
    (``value_channels``: name -> (first index, number of values)), their squared errors
    averaged over pixels and values (big_vision's colorization loss), averaged over the
    batch. Returns (reconstruction, {"xent/<name>" or "mse/<name>", and the totals "xent"
    (class channels) and "mse" (value channels) of those the config has}).
    """
    metrics: dict[str, jax.Array] = {}
    totals = {"xent": jnp.zeros((labels.shape[0],), jnp.float32)} if label_channels else {}
    for name, (index, _) in label_channels.items():
        ign = ignore_zero if isinstance(ignore_zero, bool) else name in ignore_zero
        xent = pixel_xent(logits[name], labels[..., index], ignore_zero=ign)
        metrics[f"xent/{name}"] = jnp.mean(xent)
        totals["xent"] = totals["xent"] + xent
    for name, (start, n) in (value_channels or {}).items():
        b = labels.shape[0]
        err = (logits[name].astype(jnp.float32)
               - labels[..., start:start + n].astype(jnp.float32)).reshape(b, -1)
        mse = jnp.mean(jnp.square(err), axis=1)
        metrics[f"mse/{name}"] = jnp.mean(mse)
        totals["mse"] = totals.get("mse", 0.0) + mse
    metrics.update({k: jnp.mean(v) for k, v in totals.items()})
    return jnp.mean(sum(totals.values())), metrics


def label_vae_loss(
    logits: Mapping[str, jax.Array],
    labels: jax.Array,
    mu: jax.Array,
    logvar: jax.Array,
    *,
    label_channels: Mapping[str, tuple[int, int]],
    beta: float,
    ignore_zero: Collection[str] | bool = (),
    kl_token_reduction: TokenReduction = "sum",
    value_channels: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """beta-VAE loss of the ViT VAE over label maps (UViM stage 1).

    loss = mean_batch[ sum_channels xent_c + beta * KL ], where ``xent_c`` is the
    per-example pixel-averaged softmax cross-entropy of channel ``c`` (logits
    ``logits[c]`` against ``labels[..., label_channels[c][0]]``) and KL is
    ``gaussian_kl(mu, logvar, kl_token_reduction)``. ``ignore_zero``: channel names
    (or True for all) whose target class 0 means "unknown" (e.g. invalid depth). Value
    channels add their mean squared error (:func:`label_xent`).

    Returns (loss, metrics) with metrics ``xent/<name>``, ``xent`` (``mse/<name>``,
    ``mse`` for value channels), ``kl``, ``loss``.
    """
    rec, metrics = label_xent(logits, labels, label_channels=label_channels,
                              ignore_zero=ignore_zero, value_channels=value_channels)
    kl = jnp.mean(gaussian_kl(mu, logvar, kl_token_reduction))
    loss = rec + beta * kl
    metrics.update(kl=kl, loss=loss)
    return loss, metrics


def vae_loss(
    reconstruction: jax.Array,
    target: jax.Array,
    mu: jax.Array,
    logvar: jax.Array,
    *,
    beta: float,
    extra_losses: Mapping[str, jax.Array] | None = None,
    rec_reduction: Literal["mean", "sum"] = "mean",
    kl_token_reduction: TokenReduction = "sum",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """beta-VAE loss of the CNN (image) VAE: L2 reconstruction + beta * KL + extras.

    Reconstruction per example: ``"mean"`` = mean squared error over pixels and
    channels (MaskGIT-style); ``"sum"`` = 0.5 * sum of squared errors (big_vision's
    ``l2``, the Gaussian NLL up to a constant). Then averaged over the batch.
    ``extra_losses``: already weighted scalar terms (e.g. ``{"perceptual": w * lp,
    "generator": w * g}``) added to the loss as they are and reported under their names.

    Returns (loss, metrics) with metrics ``rec``, ``kl``, the extra names, ``loss``.
    """
    sq = jnp.square(reconstruction.astype(jnp.float32) - target.astype(jnp.float32))
    axes = tuple(range(1, sq.ndim))
    if rec_reduction == "mean":
        rec = jnp.mean(jnp.mean(sq, axis=axes))
    elif rec_reduction == "sum":
        rec = jnp.mean(0.5 * jnp.sum(sq, axis=axes))
    else:
        raise ValueError(f"unknown rec_reduction {rec_reduction!r}: mean or sum")
    kl = jnp.mean(gaussian_kl(mu, logvar, kl_token_reduction))
    loss = rec + beta * kl
    metrics: dict[str, jax.Array] = {"rec": rec, "kl": kl}
    for name, value in (extra_losses or {}).items():
        if name in ("rec", "kl", "loss"):
            raise ValueError(f"extra loss name {name!r} clashes with a built-in metric")
        loss = loss + value
        metrics[name] = value
    metrics["loss"] = loss
    return loss, metrics
