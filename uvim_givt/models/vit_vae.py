"""ViT VAE over label maps: UViM stage 1 of the panoptic and depth tasks.

Encoder: int labels [B, H, W, C] -> one-hot per output channel, concatenated ->
``embedding`` (patch conv) -> + ``pos_embedding_encoder`` -> ViT ``encoder`` ->
linear resize of the patch grid to the sqrt(code_len)^2 code grid ->
``encoder_head`` Dense -> (mu, logvar), each [B, code_len, codeword_dim].

Decoder: z [B, code_len, codeword_dim] -> ``decoder_stem`` Dense -> linear resize
back to the patch grid -> + ``pos_embedding_decoder`` -> ViT ``decoder`` ->
``decoder_head`` Dense (zero-initialised) to sum(classes) * patch^2 -> pixels
[B, H, W, sum(classes)] (per token the features are laid out (row in patch,
column in patch, class)) -> split into ``{name: logits [B, H, W, classes]}``.

Channel order: the one-hot inputs and the head outputs are laid out in the
alphabetical order of the channel names, whatever the order of
``label_channels``. big_vision iterated its ``inout_specs`` ConfigDict, which
sorts its keys, so the released panoptic VAE has ``instances`` (100) before
``semantics`` (134); sorting here keeps released checkpoints loadable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from uvim_givt.models import label_maps, vae_losses
from uvim_givt.models.common import (
    AttentionKind,
    ComputeDtype,
    attention_fn,
    compute_dtype,
    learned_posemb,
    resize_tokens,
)
from uvim_givt.models.vit import Encoder


class ViTVAE(nn.Module):
    """Gaussian ViT VAE over label maps (parameter names as the released GIVT-UViM VAEs).

    ``label_channels`` maps an output name to (input channel index in the label
    map, number of classes), e.g. ``{"semantics": (0, 134), "instances": (1, 100)}``;
    ``value_channels`` a name to (first index, number of real values), e.g. colorization's
    ``{"color": (0, 3)}`` (:mod:`uvim_givt.models.label_maps`).
    ``code_dropout`` ("none", "seq", "random"): in training, zeroes a random
    subset of the sampled code tokens before decoding, see
    ``vae_losses.code_dropout_mask``.
    ``dtype``: compute dtype of the transformers and the decoder head ("bfloat16": mixed
    precision); parameters, (mu, logvar) and the decoded logits are float32.
    ``attention``: "fused" (``jax.nn.dot_product_attention``) or "reference" (flax's).
    """

    label_channels: Mapping[str, tuple[int, int]]
    value_channels: Mapping[str, tuple[int, int]] = FrozenDict()
    input_size: Sequence[int] = (512, 512)
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 6
    decoder_depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    code_len: int = 256
    codeword_dim: int = 32
    dropout: float = 0.0
    code_dropout: vae_losses.CodeDropout = "none"
    head_zeroinit: bool = True
    scan: bool = True
    remat_policy: str = "nothing_saveable"
    dtype: ComputeDtype = "float32"
    attention: AttentionKind = "fused"

    def __post_init__(self) -> None:
        # Hashable, JSON-friendly fields: lists (e.g. from a JSON config) -> tuples.
        self.label_channels = label_maps.frozen(self.label_channels)
        self.value_channels = label_maps.frozen(self.value_channels)
        self.input_size = tuple(self.input_size)
        self.patch_size = tuple(self.patch_size)
        super().__post_init__()

    # ------------------------------------------------------------ geometry
    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return tuple(s // p for s, p in zip(self.input_size, self.patch_size, strict=True))

    @property
    def code_grid(self) -> int:
        """Side of the square code grid."""
        return int(round(math.sqrt(self.code_len)))

    @property
    def code_dim(self) -> int:
        """Channels of one code (the CNN VAE's may pixel-shuffle several latents into one)."""
        return self.codeword_dim

    @property
    def channel_order(self) -> tuple[str, ...]:
        """Channel names in their layout order (alphabetical, as big_vision)."""
        return label_maps.order(self.label_channels, self.value_channels)

    def channel_width(self, name: str) -> int:
        """Outputs of a channel per pixel: its classes (logits) or its values."""
        return label_maps.width(name, self.label_channels, self.value_channels)

    @property
    def num_classes_total(self) -> int:
        return sum(self.channel_width(n) for n in self.channel_order)

    def setup(self) -> None:
        problems = label_maps.check(self.label_channels, self.value_channels)
        if problems:
            raise ValueError(f"ViTVAE channels: {'; '.join(problems)}")
        gh, gw = self.patch_grid
        if gh * self.patch_size[0] != self.input_size[0] or \
                gw * self.patch_size[1] != self.input_size[1]:
            raise ValueError(f"input_size {tuple(self.input_size)} is not a multiple of "
                             f"patch_size {tuple(self.patch_size)}")
        if gh != gw:
            raise ValueError(f"the patch grid must be square, got {gh}x{gw}")
        if self.code_grid ** 2 != self.code_len:
            raise ValueError(f"code_len {self.code_len} is not a square number")
        if self.code_dropout not in ("none", "seq", "random"):
            raise ValueError(f"unknown code_dropout {self.code_dropout!r}: none, seq or random")
        n_patches = gh * gw
        dtype = compute_dtype(self.dtype)
        attention_fn(self.attention)  # validates the attention kind
        self.embedding = nn.Conv(self.width, tuple(self.patch_size),
                                 strides=tuple(self.patch_size), padding="VALID", dtype=dtype)
        self.pos_embedding_encoder = learned_posemb(
            self, "pos_embedding_encoder", n_patches, self.width)
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                  scan=self.scan, remat_policy=self.remat_policy, dtype=dtype,
                  attention=self.attention)
        self.encoder = Encoder(depth=self.depth, **kw)
        # float32: (mu, logvar) feed the KL, the sampling of z and stage 2's targets.
        self.encoder_head = nn.Dense(2 * self.codeword_dim, dtype=jnp.float32)
        self.decoder_stem = nn.Dense(self.width, dtype=dtype)
        self.pos_embedding_decoder = learned_posemb(
            self, "pos_embedding_decoder", n_patches, self.width)
        self.decoder = Encoder(depth=self.decoder_depth, **kw)
        head_kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
        # The largest matmul of the model (width x classes * patch^2): in the compute dtype.
        self.decoder_head = nn.Dense(
            self.num_classes_total * self.patch_size[0] * self.patch_size[1], dtype=dtype,
            **head_kw)

    # -------------------------------------------------------------- pieces
    def one_hot(self, labels: jax.Array) -> jax.Array:
        """Labels [B, H, W, C] -> concatenated features [B, H, W, sum(widths)]: one-hot
        classes, values as they are."""
        parts = label_maps.features(labels, self.label_channels, self.value_channels)
        return jnp.concatenate([parts[n] for n in self.channel_order], axis=-1)

    def encode(self, labels: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Int labels [B, H, W, C] -> (mu, logvar), each [B, code_len, codeword_dim]."""
        x = self.embedding(self.one_hot(labels))
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c) + self.pos_embedding_encoder
        x = self.encoder(x, deterministic=not train)
        x = resize_tokens(x, self.code_grid)
        mu, logvar = jnp.split(self.encoder_head(x), 2, axis=-1)
        return mu, logvar

    def decode_pixels(self, z: jax.Array, train: bool = False) -> jax.Array:
        """z [B, code_len, codeword_dim] -> all logits [B, H, W, sum(classes)] (channel order)."""
        x = self.decoder_stem(z)
        gh, gw = self.patch_grid
        x = resize_tokens(x, gh)
        x = self.decoder(x + self.pos_embedding_decoder, deterministic=not train)
        x = self.decoder_head(x).astype(jnp.float32)
        b = x.shape[0]
        p, q = self.patch_size
        x = x.reshape(b, gh, gw, p, q, self.num_classes_total)
        x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
        return x.reshape(b, gh * p, gw * q, self.num_classes_total)

    def split_logits(self, x: jax.Array) -> dict[str, jax.Array]:
        """[B, H, W, sum(classes)] -> {name: [B, H, W, classes]}."""
        out, start = {}, 0
        for name in self.channel_order:
            n = self.channel_width(name)
            out[name] = x[..., start:start + n]
            start += n
        return out

    def decode(self, z: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """z [B, code_len, codeword_dim] -> {name: logits [B, H, W, classes]}."""
        return self.split_logits(self.decode_pixels(z, train))

    def __call__(self, labels: jax.Array, train: bool = False,
                 rng: jax.Array | None = None
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Encode, take z (a posterior sample when training, else the mean), decode.

        Training draws from ``rng`` or, if None, the ``"dropout"`` stream. Returns
        (logits dict, {"mu", "logvar", "z"}); ``z`` is after code dropout.
        """
        mu, logvar = self.encode(labels, train)
        z = vae_losses.posterior_code(mu, logvar, train, rng, self.make_rng, self.code_dropout)
        return self.decode(z, train), {"mu": mu, "logvar": logvar, "z": z}
