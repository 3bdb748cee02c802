"""VQ tokenizers over images on the CNN VAE's backbone: VQGAN as MaskGIT trains it, and
ViT-VQGAN's factorised, l2-normalised codes as an option. Stage 1 of discrete-token image
generation, the counterpart of the CNN VAE (``models/cnn_vae.py``) on the same encoder,
decoder and losses, so the two token kinds differ in the bottleneck only.

* encoder (``cnn_encoder``, as the CNN VAE's, with ``codeword_dim`` outputs in place of
  2 x codeword_dim) -> the quantiser -> decoder (``cnn_decoder``);
* the quantiser (:class:`VectorQuantizer`): the nearest row of ``codebook`` [dict_size, d]
  in euclidean distance (``vqvae.quantize``), with a straight-through gradient; the
  codebook is a parameter learnt by gradient through the codebook loss
  mean((sg(x) - e)^2), the encoder held to its codewords by the commitment loss
  mean((x - sg(e))^2) (VQ-VAE, VQGAN, MaskGIT);
* ``factorized_dim`` > 0 (ViT-VQGAN): the encoder output is projected to that many
  dimensions (``factor_in``) and l2-normalised, the codewords are l2-normalised, the lookup
  happens there, and the chosen codeword is projected back (``factor_out``) for the
  decoder. Low-dimensional unit codes use the codebook far better (Yu et al. 2022).
* :func:`entropy_loss` (MaskGIT's tokenizer): the mean entropy of each code's soft
  assignment minus the entropy of the batch's average assignment, pushing codes to be
  confident and the codebook to be used evenly.

Codes are a row-major sequence of ids [B, h * w] (``CNNVAE.to_sequence`` geometry).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uvim_givt.models import vqvae
from uvim_givt.models.cnn_vae import CNNVAE, CNNDecoder, CNNEncoder
from uvim_givt.models.common import compute_dtype


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def entropy_loss(distances: jax.Array, temperature: float) -> jax.Array:
    """MaskGIT's codebook entropy loss of the soft assignments softmax(-d / temperature):
    mean per-code entropy (low: confident codes) minus the entropy of the mean assignment
    (high: every codeword used)."""
    logits = -distances.reshape(-1, distances.shape[-1]) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    per_code = -jnp.mean(jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    avg = jnp.mean(probs, axis=0)
    return per_code + jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-12)))


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation of ``codeword_dim``-d vectors into ``dict_size`` ids;
    ``factorized_dim`` > 0: the lookup of ViT-VQGAN (projected, l2-normalised)."""

    dict_size: int
    codeword_dim: int
    factorized_dim: int = 0

    @property
    def lookup_dim(self) -> int:
        return self.factorized_dim or self.codeword_dim

    def setup(self) -> None:
        self.codebook = self.param(
            "codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
            (self.dict_size, self.lookup_dim))
        if self.factorized_dim:
            self.factor_in = nn.Dense(self.factorized_dim)
            self.factor_out = nn.Dense(self.codeword_dim)

    def codewords(self) -> jax.Array:
        """The codebook as the lookup sees it [K, d] (l2-normalised when factorised)."""
        return l2_normalize(self.codebook) if self.factorized_dim else self.codebook

    def to_lookup(self, z: jax.Array) -> jax.Array:
        """Encoder outputs [..., codeword_dim] -> the lookup space [..., d]."""
        return l2_normalize(self.factor_in(z)) if self.factorized_dim else z

    def from_lookup(self, x: jax.Array) -> jax.Array:
        """Quantised vectors of the lookup space -> the decoder's input."""
        return self.factor_out(x) if self.factorized_dim else x

    def embed(self, ids: jax.Array) -> jax.Array:
        """Code ids [...] -> the decoder's input vectors [..., codeword_dim]."""
        return self.from_lookup(self.codewords()[ids])

    def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(decoder input [..., codeword_dim], {"x": the lookup-space vectors, "e": their
        codewords (differentiable in the codebook), "ids", "distances" [..., K]})."""
        x = self.to_lookup(z.astype(jnp.float32))
        e = self.codewords()
        x_q, ids = vqvae.quantize(x, e)  # straight-through: identity gradient to x
        return self.from_lookup(x_q), {"x": x, "e": e[ids], "ids": ids.astype(jnp.int32),
                                       "distances": vqvae.squared_distances(x, e)}


class CNNVQ(CNNVAE):
    """A VQ tokenizer with the CNN VAE's encoder and decoder (its geometry: ``input_size``,
    ``channel_multipliers``; one code per latent position). ``codeword_dim``: the encoder's
    output channels (MaskGIT: 256); ``dict_size`` codewords; ``factorized_dim`` > 0 the
    ViT-VQGAN lookup. The CNN VAE's posterior fields (``logvar_clip``, ``code_dropout``)
    have no meaning here; ``pixel_shuffle_patch_size`` must stay (1, 1)."""

    dict_size: int = 1024
    factorized_dim: int = 0

    @property
    def code_dim(self) -> int:
        """Ids are scalars: one id per code."""
        return 1

    def problems(self) -> list[tuple[str, str]]:
        """(key, why) for every field this tokenizer cannot work with."""
        out = []
        if self.dict_size < 2:
            out.append(("dict_size", f"{self.dict_size} codewords: at least 2"))
        if self.codeword_dim < 1:
            out.append(("codeword_dim", f"{self.codeword_dim}: at least 1"))
        if self.factorized_dim < 0 or self.factorized_dim > self.codeword_dim:
            out.append(("factorized_dim", f"{self.factorized_dim}: 0 (off) or a lookup "
                        f"dimension in 1..codeword_dim ({self.codeword_dim})"))
        if tuple(self.pixel_shuffle_patch_size) != (1, 1):
            out.append(("pixel_shuffle_patch_size", "one id per latent position: (1, 1)"))
        if self.code_dropout != "none":
            out.append(("code_dropout", "the VQ tokenizer has no code dropout: 'none'"))
        return out

    def setup(self) -> None:
        for f in (self.filters * m for m in self.channel_multipliers):
            if f % self.num_groups:
                raise ValueError(f"width {f} is not divisible by num_groups={self.num_groups}")
        kw = dict(filters=self.filters, num_res_blocks=self.num_res_blocks,
                  channel_multipliers=tuple(self.channel_multipliers),
                  num_groups=self.num_groups, activation=self.activation,
                  dtype=compute_dtype(self.dtype))
        self.cnn_encoder = CNNEncoder(out_dim=self.codeword_dim, **kw)
        self.quantizer = VectorQuantizer(self.dict_size, self.codeword_dim,
                                         self.factorized_dim)
        self.cnn_decoder = CNNDecoder(out_dim=self.output_dim, **kw)

    def _encoded(self, images: jax.Array) -> jax.Array:
        x = (images + 1.0) / 2.0 if self.unit_range_io else images
        return self.to_sequence(self.cnn_encoder(x))

    def _decoded(self, z: jax.Array) -> jax.Array:
        x = self.cnn_decoder(self.to_grid(z))
        if self.unit_range_io:
            x = 2.0 * x - 1.0
        return jnp.clip(x, -1.0, 1.0) if self.clip_output else x

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images [B, H, W, 3] in [-1, 1] -> code ids [B, code_len] (int32)."""
        del train
        return self.quantizer(self._encoded(images))[1]["ids"]

    def decode(self, ids: jax.Array, train: bool = False) -> jax.Array:
        """Code ids [B, code_len] -> images [B, H, W, 3] in [-1, 1]."""
        del train
        return self._decoded(self.quantizer.embed(ids.astype(jnp.int32)))

    def __call__(self, images: jax.Array, train: bool = False, rng: Any = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encode, quantise (straight-through), decode: (images, the quantiser's aux)."""
        del train, rng  # deterministic: no posterior, no dropout
        z_q, aux = self.quantizer(self._encoded(images))
        return self._decoded(z_q), aux
