"""Gaussian-mixture output heads of GIVT: parse logits, log-probabilities, sampling.

Three layouts of the per-token logits (the last axis), as in the published models:

* ``per_channel``: each of the ``out_dim`` channels has its own mixture of ``k``
  1-d Gaussians. Logits are reshaped to ``(3 * out_dim, k)`` and split into
  mixture logits, means and scales, each ``(out_dim, k)``.
* ``diag``: one mixture of ``k`` diagonal Gaussians over the whole token. The
  first ``k`` logits are the mixture logits, the rest reshape to ``(k, 2, out_dim)``
  (means, scales).
* ``full``: a single Gaussian (k=1) with a full scale matrix. The first
  ``out_dim**2`` logits form the matrix (its lower triangle is used), the next
  ``out_dim`` are the means.

Everything here is computed in (at least) float32: logits of a bfloat16 model are
cast on entry, so scales, log-probabilities and samples keep full precision.

Scales go through squareplus and are floored at ``scale_tol``. The sampling
temperature ``temperature`` multiplies the scales; ``temperature_probs``
multiplies the mixture logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from uvim_givt.models.common import squareplus

HeadKind = Literal["per_channel", "diag", "full"]
_LOG_2PI = math.log(2.0 * math.pi)


def _at_least_f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def normal_logpdf(x: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
    z = (x - loc) / scale
    return -0.5 * jnp.square(z) - jnp.log(scale) - 0.5 * _LOG_2PI


@dataclasses.dataclass(frozen=True)
class GMMHead:
    """Interprets GIVT logits as a distribution over one ``out_dim``-d token."""

    out_dim: int
    num_mixtures: int = 1
    kind: HeadKind = "per_channel"
    scale_tol: float = 1e-6
    fix_square_plus: bool = True

    def __post_init__(self):
        if self.kind not in ("per_channel", "diag", "full"):
            raise ValueError(f"unknown head kind {self.kind!r}: per_channel, diag or full")
        if self.kind == "full" and self.num_mixtures != 1:
            raise ValueError("the full-covariance head has exactly one component (num_mixtures=1)")

    @property
    def num_logits(self) -> int:
        d, k = self.out_dim, self.num_mixtures
        if self.kind == "full":
            return d * d + d
        if self.kind == "per_channel":
            return 3 * d * k
        return k + 2 * k * d

    # ---------------------------------------------------------------- parsing
    def _scales(self, raw: jax.Array) -> jax.Array:
        return jnp.maximum(squareplus(raw, self.fix_square_plus), self.scale_tol)

    def parse(self, logits: jax.Array, temperature: float | jax.Array | None = None,
              temperature_probs: float | jax.Array | None = None) -> dict[str, jax.Array]:
        """Splits logits [..., num_logits] into named distribution parameters.

        per_channel: mix_logits/loc/scale [..., D, k]; diag: mix_logits [..., k],
        loc/scale [..., k, D]; full: loc [..., D], scale_tril [..., D, D].
        """
        if logits.shape[-1] != self.num_logits:
            raise ValueError(f"head expects {self.num_logits} logits, got {logits.shape[-1]}")
        logits = _at_least_f32(logits)
        d, k = self.out_dim, self.num_mixtures
        lead = logits.shape[:-1]
        if self.kind == "full":
            raw = logits[..., : d * d].reshape(*lead, d, d)
            scales = squareplus(raw, self.fix_square_plus)
            # The floor applies to every entry (off-diagonals are positive anyway).
            scales = jnp.maximum(scales, jnp.eye(d, dtype=logits.dtype) * self.scale_tol)
            tril = jnp.tril(scales)
            if temperature is not None:
                tril = tril * temperature
            return {"loc": logits[..., d * d:], "scale_tril": tril}
        if self.kind == "per_channel":
            mix, loc, raw = jnp.split(logits.reshape(*lead, 3 * d, k), 3, axis=-2)
        else:
            mix = logits[..., :k]
            rest = logits[..., k:].reshape(*lead, k, 2, d)
            loc, raw = rest[..., 0, :], rest[..., 1, :]
        if temperature_probs is not None:
            mix = mix * temperature_probs
        scale = self._scales(raw)
        if temperature is not None:
            scale = scale * temperature
        return {"mix_logits": mix, "loc": loc, "scale": scale}

    # ----------------------------------------------------------- log-probability
    def log_prob_channels(self, logits: jax.Array, x: jax.Array, **temps) -> jax.Array:
        """Per-channel log-densities [..., D] (per_channel heads only)."""
        if self.kind != "per_channel":
            raise ValueError("per-channel log-probabilities exist only for per_channel heads")
        p = self.parse(logits, **temps)
        comp = normal_logpdf(x[..., None], p["loc"], p["scale"])
        return jax.nn.logsumexp(jax.nn.log_softmax(p["mix_logits"], axis=-1) + comp, axis=-1)

    def log_prob(self, logits: jax.Array, x: jax.Array, **temps) -> jax.Array:
        """Log-density of tokens x [..., D] under the head: shape [...]."""
        if self.kind == "per_channel":
            return self.log_prob_channels(logits, x, **temps).sum(-1)
        p = self.parse(logits, **temps)
        if self.kind == "diag":
            comp = normal_logpdf(x[..., None, :], p["loc"], p["scale"]).sum(-1)
            return jax.nn.logsumexp(jax.nn.log_softmax(p["mix_logits"], axis=-1) + comp, axis=-1)
        tril = p["scale_tril"]
        diff = (x - p["loc"])[..., None]
        z = solve_triangular(tril, diff, lower=True)[..., 0]
        logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(tril, axis1=-2, axis2=-1))), axis=-1)
        return -0.5 * jnp.sum(jnp.square(z), -1) - logdet - 0.5 * self.out_dim * _LOG_2PI

    # ------------------------------------------------------------------ sampling
    def choose_components(self, rng: jax.Array, parsed: dict[str, jax.Array]) -> jax.Array:
        """One-hot mixture choices: [..., D, k] (per_channel) or [..., k] (diag)."""
        idx = jax.random.categorical(rng, parsed["mix_logits"], axis=-1)
        return jax.nn.one_hot(idx, self.num_mixtures, dtype=parsed["loc"].dtype)

    def select(self, parsed: dict[str, jax.Array],
               onehot: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(loc, scale) of the chosen component, each [..., D]."""
        if self.kind == "per_channel":
            return (parsed["loc"] * onehot).sum(-1), (parsed["scale"] * onehot).sum(-1)
        w = onehot[..., None]
        return (parsed["loc"] * w).sum(-2), (parsed["scale"] * w).sum(-2)

    def sample(self, rng: jax.Array, logits: jax.Array,
               temperature: float | jax.Array | None = None,
               temperature_probs: float | jax.Array | None = None) -> jax.Array:
        """Draws one token per position: [..., D]."""
        p = self.parse(logits, temperature, temperature_probs)
        rng_mix, rng_eps = jax.random.split(rng)
        lead = logits.shape[:-1]
        eps = jax.random.normal(rng_eps, (*lead, self.out_dim), p["loc"].dtype)
        if self.kind == "full":
            return p["loc"] + jnp.einsum("...ij,...j->...i", p["scale_tril"], eps)
        loc, scale = self.select(p, self.choose_components(rng_mix, p))
        return loc + scale * eps

    def mean(self, logits: jax.Array) -> jax.Array:
        """Mean of the distribution [..., D]."""
        p = self.parse(logits)
        if self.kind == "full":
            return p["loc"]
        w = jax.nn.softmax(p["mix_logits"], axis=-1)
        if self.kind == "per_channel":
            return (w * p["loc"]).sum(-1)
        return (w[..., None] * p["loc"]).sum(-2)
