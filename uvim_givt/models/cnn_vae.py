"""CNN VAE over images: stage 1 of the ImageNet generation task.

The MaskGIT VQGAN tokenizer's encoder/decoder without the quantizer; the
encoder's last 1x1 conv outputs 2 * codeword_dim channels per latent position
(mean, log-variance). Parameter names follow the released model (``cnn_encoder/...``,
``cnn_decoder/...``).

Encoder: Conv 3x3 (no bias) -> for each level i: ``num_res_blocks`` ResBlocks at
``filters * channel_multipliers[i]`` channels, then (all but the last level) 2x2
average pooling -> ``num_res_blocks`` more ResBlocks -> GroupNorm -> swish ->
Conv 1x1 (bias) to 2 * codeword_dim.
Decoder: Conv 3x3 (bias) to the top width -> ``num_res_blocks`` ResBlocks -> for
each level i from the top: ``num_res_blocks`` ResBlocks, then (all but level 0)
nearest 2x upsampling + Conv 3x3 (bias) -> GroupNorm -> swish -> Conv 3x3 to RGB.

Latent layout: z is a row-major sequence [B, h * w, codeword_dim] so GIVT sees a
sequence; ``to_sequence`` / ``to_grid`` convert.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uvim_givt.models import vae_losses
from uvim_givt.models.common import ComputeDtype, compute_dtype

_ACTIVATIONS = {"swish": nn.swish, "relu": nn.relu}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 average pooling, TF-style SAME (padding cells are not counted)."""
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    # A NumPy scalar: reduce_window's init must be a constant for autodiff (a jnp zero is
    # traced under jit and the gradient fails to linearise).
    zero = np.zeros((), x.dtype)
    total = jax.lax.reduce_window(x, zero, jax.lax.add, window, strides, "SAME")
    count = jax.lax.reduce_window(jnp.ones_like(x), zero, jax.lax.add, window, strides, "SAME")
    return total / count


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")


def _group_norm(num_groups: int, dtype: Any = jnp.float32) -> nn.Module:
    # flax computes the statistics and the normalisation in float32 whatever ``dtype``
    # (the output's dtype).
    return nn.GroupNorm(num_groups=num_groups, use_fast_variance=False, dtype=dtype)


class ResBlock(nn.Module):
    """GN -> act -> Conv3x3 -> GN -> act -> Conv3x3, plus a residual (convs without bias).

    When the width changes, the released model's shortcut is a 1x1 conv applied to
    the block's *output* (so ``Conv_2`` is filters -> filters and the block input
    is not carried over); kept as is for checkpoint compatibility.
    """

    filters: int
    num_groups: int = 32
    activation: str = "swish"
    dtype: Any = jnp.float32  # compute dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = _activation(self.activation)
        residual = x
        conv = functools.partial(nn.Conv, self.filters, use_bias=False, dtype=self.dtype)
        y = conv((3, 3))(act(_group_norm(self.num_groups, self.dtype)(x)))
        y = conv((3, 3))(act(_group_norm(self.num_groups, self.dtype)(y)))
        if x.shape[-1] != self.filters:
            residual = conv((1, 1))(y)
        return y + residual


class _CNNStack(nn.Module):
    """What the encoder and the decoder are made of: L levels of ``num_res_blocks``
    ResBlocks at ``filters * channel_multipliers[i]`` channels, ``out_dim`` output
    channels, and the ResBlocks' options."""

    filters: int
    num_res_blocks: int
    channel_multipliers: Sequence[int]
    out_dim: int
    num_groups: int = 32
    activation: str = "swish"
    dtype: Any = jnp.float32

    def _res_block(self, filters: int) -> ResBlock:
        return ResBlock(filters, num_groups=self.num_groups, activation=self.activation,
                        dtype=self.dtype)


class CNNEncoder(_CNNStack):
    """Images [B, H, W, 3] -> [B, H / 2^(L-1), W / 2^(L-1), out_dim]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.filters, (3, 3), use_bias=False, dtype=self.dtype)(x)
        levels = len(self.channel_multipliers)
        filters = self.filters
        for i, mult in enumerate(self.channel_multipliers):
            filters = self.filters * mult
            for _ in range(self.num_res_blocks):
                x = self._res_block(filters)(x)
            if i < levels - 1:
                x = avg_pool_2x2(x)
        for _ in range(self.num_res_blocks):
            x = self._res_block(filters)(x)
        x = _activation(self.activation)(_group_norm(self.num_groups, jnp.float32)(x))
        # float32: (mu, logvar) feed the KL, the sampling of z and stage 2's targets.
        return nn.Conv(self.out_dim, (1, 1), dtype=jnp.float32)(x)


class CNNDecoder(_CNNStack):
    """Latents [B, h, w, D] -> images [B, h * 2^(L-1), w * 2^(L-1), out_dim]."""

    out_dim: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        filters = self.filters * self.channel_multipliers[-1]
        x = nn.Conv(filters, (3, 3), dtype=self.dtype)(x)
        for _ in range(self.num_res_blocks):
            x = self._res_block(filters)(x)
        for i in reversed(range(len(self.channel_multipliers))):
            filters = self.filters * self.channel_multipliers[i]
            for _ in range(self.num_res_blocks):
                x = self._res_block(filters)(x)
            if i > 0:
                x = nn.Conv(filters, (3, 3), dtype=self.dtype)(upsample_nearest_2x(x))
        x = _activation(self.activation)(_group_norm(self.num_groups, self.dtype)(x))
        return nn.Conv(self.out_dim, (3, 3), dtype=self.dtype)(x).astype(jnp.float32)


class CNNVAE(nn.Module):
    """Gaussian CNN VAE over images in [-1, 1] (the released ImageNet VAE's layout).

    ``unit_range_io=True`` reproduces the released model's convention: inputs are
    mapped from [-1, 1] to [0, 1] before the encoder and decoder outputs from
    [0, 1] back to [-1, 1]. Decoded images are clipped to [-1, 1] unless
    ``clip_output=False`` (which keeps gradients outside the range when training).
    ``logvar_clip`` clips the encoder's log-variance (released: [-30, 20]; None = off).
    ``code_dropout``: as in ``ViTVAE`` (training only; see ``vae_losses``).
    ``dtype``: compute dtype of the convolutions ("bfloat16": mixed precision);
    parameters, (mu, logvar) and the decoded images are float32.
    ``pixel_shuffle_patch_size`` (ph, pw): the latent grid is space-to-depth shuffled into
    the code sequence, each code holding a ph x pw patch of latents (channel-major, as
    published): a 32x32x16 grid with (1, 2) is 512 codes of 32 channels.
    """

    filters: int = 128
    num_res_blocks: int = 2
    channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
    codeword_dim: int = 16
    input_size: Sequence[int] = (256, 256)
    num_groups: int = 32
    activation: str = "swish"
    output_dim: int = 3
    unit_range_io: bool = True
    clip_output: bool = True
    logvar_clip: tuple[float, float] | None = (-30.0, 20.0)
    code_dropout: vae_losses.CodeDropout = "none"
    dtype: ComputeDtype = "float32"
    pixel_shuffle_patch_size: Sequence[int] = (1, 1)

    def __post_init__(self) -> None:
        # Hashable, JSON-friendly fields: lists (e.g. from a JSON config) -> tuples.
        self.channel_multipliers = tuple(self.channel_multipliers)
        self.input_size = tuple(self.input_size)
        self.pixel_shuffle_patch_size = tuple(self.pixel_shuffle_patch_size)
        if self.logvar_clip is not None:
            self.logvar_clip = tuple(self.logvar_clip)
        super().__post_init__()

    # ------------------------------------------------------------ geometry
    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(h, w) of the latent grid for ``input_size``."""
        f = self.downsample_factor
        return (-(-self.input_size[0] // f), -(-self.input_size[1] // f))

    @property
    def code_grid(self) -> tuple[int, int]:
        """(h, w) of the code grid: the latent grid after the pixel shuffle."""
        (h, w), (ph, pw) = self.latent_grid, self.pixel_shuffle_patch_size
        if h % ph or w % pw:
            raise ValueError(f"the {h}x{w} latent grid does not split into "
                             f"pixel_shuffle_patch_size {(ph, pw)} patches")
        return h // ph, w // pw

    @property
    def code_len(self) -> int:
        h, w = self.code_grid
        return h * w

    @property
    def code_dim(self) -> int:
        """Channels of one code: codeword_dim x the pixel-shuffle patch."""
        ph, pw = self.pixel_shuffle_patch_size
        return self.codeword_dim * ph * pw

    def to_sequence(self, z: jax.Array) -> jax.Array:
        """Latent grid [B, h, w, D] -> row-major codes [B, code_len, code_dim]."""
        b, h, w, d = z.shape
        ph, pw = self.pixel_shuffle_patch_size
        z = z.reshape(b, h // ph, ph, w // pw, pw, d)
        # "b (h ph) (w pw) c -> b (h w) (c ph pw)": channel-major within a code.
        return z.transpose(0, 1, 3, 5, 2, 4).reshape(b, (h // ph) * (w // pw), d * ph * pw)

    def to_grid(self, z: jax.Array) -> jax.Array:
        """Row-major codes [B, code_len, code_dim] -> the latent grid [B, h, w, D]."""
        b, n, _ = z.shape
        (h, w), (ph, pw) = self.code_grid, self.pixel_shuffle_patch_size
        if n != h * w:
            raise ValueError(f"got {n} latent tokens, the {h}x{w} code grid of input_size "
                             f"{tuple(self.input_size)} needs {h * w}")
        z = z.reshape(b, h, w, self.codeword_dim, ph, pw).transpose(0, 1, 4, 2, 5, 3)
        return z.reshape(b, h * ph, w * pw, self.codeword_dim)

    def setup(self) -> None:
        for f in (self.filters * m for m in self.channel_multipliers):
            if f % self.num_groups:
                raise ValueError(f"width {f} is not divisible by num_groups={self.num_groups}")
        if self.code_dropout not in ("none", "seq", "random"):
            raise ValueError(f"unknown code_dropout {self.code_dropout!r}: none, seq or random")
        kw = dict(filters=self.filters, num_res_blocks=self.num_res_blocks,
                  channel_multipliers=tuple(self.channel_multipliers),
                  num_groups=self.num_groups, activation=self.activation,
                  dtype=compute_dtype(self.dtype))
        self.cnn_encoder = CNNEncoder(out_dim=2 * self.codeword_dim, **kw)
        self.cnn_decoder = CNNDecoder(out_dim=self.output_dim, **kw)

    # -------------------------------------------------------------- pieces
    def encode(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Images [B, H, W, 3] in [-1, 1] -> (mu, logvar), each [B, code_len, code_dim]."""
        del train  # no dropout / batch statistics in this model
        x = (images + 1.0) / 2.0 if self.unit_range_io else images
        mu, logvar = jnp.split(self.cnn_encoder(x), 2, axis=-1)
        if self.logvar_clip is not None:
            logvar = jnp.clip(logvar, *self.logvar_clip)
        return self.to_sequence(mu), self.to_sequence(logvar)

    def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
        """z [B, code_len, code_dim] -> images [B, H, W, 3] in [-1, 1]."""
        del train
        x = self.cnn_decoder(self.to_grid(z))
        if self.unit_range_io:
            x = 2.0 * x - 1.0
        return jnp.clip(x, -1.0, 1.0) if self.clip_output else x

    def __call__(self, images: jax.Array, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Encode, take z (a posterior sample when training, else the mean), decode.

        Training draws from ``rng`` or, if None, the ``"dropout"`` stream. Returns
        (images in [-1, 1], {"mu", "logvar", "z"}); ``z`` is after code dropout.
        """
        mu, logvar = self.encode(images, train)
        z = vae_losses.posterior_code(mu, logvar, train, rng, self.make_rng, self.code_dropout)
        return self.decode(z, train), {"mu": mu, "logvar": logvar, "z": z}
