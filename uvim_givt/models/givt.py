"""GIVT: a transformer over sequences of real-valued tokens with a Gaussian-mixture head.

Three shapes from one module:

* decoder-only causal (``style="ar"``): the label (or BOS) embedding is
  prepended and the last token dropped (teacher forcing);
* decoder-only masked (``style="masked"``, MaskGIT): the label embedding is
  prepended, masked tokens are replaced by a MASK embedding (``mask_style=
  "replace"``) or, with ``"concat"``, half the channels come from a MASK/NOMASK
  embedding and half from the token or a REPLACE embedding; the label's output
  position is removed;
* encoder-decoder (``num_layers > 0``): a ViT encodes the image patches and
  every decoder block cross-attends to it (UViM stage 2).

With ``vocab_size`` > 0 the same module models discrete tokens (a VQ tokenizer's code ids):
an id lookup replaces the linear input projection and a softmax (``models/categorical.py``)
the Gaussian mixture, everything else equal: the discrete baseline on the same backbone.

Parameter names and shapes follow the released big_vision checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from uvim_givt.models.categorical import CategoricalHead
from uvim_givt.models.common import (
    AttentionKind,
    ComputeDtype,
    MlpBlock,
    attention_fn,
    compute_dtype,
    learned_posemb,
    remat_policy,
)
from uvim_givt.models.gmm import GMMHead
from uvim_givt.models.mask_schedule import mask_ratio
from uvim_givt.models.vit import Encoder

# Order of special rows in EmbedLabels after the real labels (published layout).
SPECIAL_LABELS = ("mask", "nomask", "replace", "nolabel")


class EncDecBlock(nn.Module):
    """Pre-norm decoder block with optional cross-attention; no biases in attention, nor in
    the norms unless ``norm_bias`` (GIVT's have none, the original UViM VTT's have them)."""

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    decode: bool = False
    deterministic: bool = True
    dtype: Any = jnp.float32  # compute dtype; LayerNorm statistics are float32 regardless
    attention: AttentionKind = "fused"
    norm_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, encoded: jax.Array | None = None,
                 mask: jax.Array | None = None) -> tuple[jax.Array, None]:
        det = self.deterministic
        attn = dict(num_heads=self.num_heads, use_bias=False, broadcast_dropout=False,
                    dropout_rate=self.dropout_rate, dtype=self.dtype,
                    attention_fn=attention_fn(self.attention))
        norm = dict(use_bias=self.norm_bias, dtype=self.dtype)
        y = nn.LayerNorm(name="LayerNorm1", **norm)(x)
        y = nn.MultiHeadDotProductAttention(decode=self.decode, name="SelfAttn", **attn)(
            y, y, mask=mask, deterministic=det)
        x = x + nn.Dropout(rate=self.dropout_rate)(y, det)
        if encoded is not None:
            y = nn.LayerNorm(name="LayerNorm2", **norm)(x)
            y = nn.MultiHeadDotProductAttention(name="CrossAttn", **attn)(
                y, encoded, deterministic=det)
            x = x + nn.Dropout(rate=self.dropout_rate)(y, det)
        y = nn.LayerNorm(name="LayerNorm3", **norm)(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout_rate, dtype=self.dtype,
                     name="MLP")(y, det)
        return x + y, None


class Decoder(nn.Module):
    """Position embedding, the block stack, a final LayerNorm and ``LogitsDense``.

    The blocks run in ``dtype``; the final LayerNorm and ``LogitsDense`` in float32 (a
    small matmul), so the Gaussian means and scales are not rounded to bfloat16's 8-bit
    mantissa. The logits are float32 whatever ``dtype``.

    The original UViM VTT (``models/vtt.py``) uses the same stack with ``vocab_size`` > 0
    (its inputs are token ids, embedded here by ``EmbedTargets``, then dropout after the
    position embedding), ``norm_bias`` and the position embedding passed in (``pos_emb``:
    the VTT keeps it at its top level).
    """

    emb_dim: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    num_logits: int
    seq_len: int
    dropout_rate: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: Any = jnp.float32
    attention: AttentionKind = "fused"
    vocab_size: int = 0  # > 0: the inputs are token ids (the VTT)
    norm_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, encoded: jax.Array | None = None,
                 mask: jax.Array | None = None, decode: bool = False,
                 deterministic: bool = True, skip: jax.Array | None = None,
                 pos_emb: jax.Array | None = None) -> jax.Array:
        """``skip`` [B, seq_len, E], if given, is added to the inputs by position like the
        position embedding (cached decoding included)."""
        if self.vocab_size:
            x = nn.Embed(self.vocab_size, self.emb_dim, name="EmbedTargets",
                         embedding_init=nn.initializers.normal(stddev=1.0),
                         dtype=self.dtype)(x.astype(jnp.int32))
        if pos_emb is None:
            pos_emb = learned_posemb(self, "pos_emb", self.seq_len, self.emb_dim)
        if skip is not None:
            pos_emb = pos_emb + skip
        # The residual stream in the compute dtype (float32 parameters would promote it).
        pos_emb = pos_emb.astype(self.dtype)
        x = x.astype(self.dtype)
        length = x.shape[1]
        if decode:
            # Position of the next input token; created (not advanced) by the
            # first call, which only sizes the attention caches.
            started = self.has_variable("cache", "pos_index")
            pos = self.variable("cache", "pos_index", lambda: jnp.zeros((), jnp.int32))
            if started:
                x = x + jax.lax.dynamic_slice_in_dim(pos_emb, pos.value, length, axis=1)
                pos.value = pos.value + length
            else:
                x = x + pos_emb[:, :length]
        else:
            x = x + pos_emb[:, :length]
        if self.vocab_size:  # the VTT's dropout of the embedded inputs
            x = nn.Dropout(rate=self.dropout_rate)(x, deterministic)
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                  decode=decode, deterministic=deterministic, dtype=self.dtype,
                  attention=self.attention, norm_bias=self.norm_bias)
        if self.scan:
            block = nn.remat(EncDecBlock, prevent_cse=False,
                             policy=remat_policy(self.remat_policy))
            # Published GIVT checkpoints stack layers on axis 1 of each parameter.
            x, _ = nn.scan(
                block, variable_axes={"params": 1, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast, length=self.num_layers,
            )(name="EncDecBlock", **kw)(x, encoded, mask)
        else:
            for i in range(self.num_layers):
                x, _ = EncDecBlock(name=f"EncDecBlock{i}", **kw)(x, encoded, mask)
        x = nn.LayerNorm(name="LayerNorm", dtype=jnp.float32)(x)
        return nn.Dense(self.num_logits, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                        name="LogitsDense")(x)


def random_training_mask(rng: jax.Array, batch: int, seq_len: int,
                         min_mask_rate: float = 0.3, schedule: str = "cosine") -> jax.Array:
    """Bool [B, L], True = masked. The masked fraction follows the mask ``schedule``
    (``models.mask_schedule``) at a uniform progress in [0, 1 - min_mask_rate], so with the
    cosine schedule at least cos(pi/2 * 0.7) ~ 45% of tokens are masked (published)."""
    rng_ratio, rng_perm = jax.random.split(rng)
    progress = jax.random.uniform(rng_ratio, (batch,), maxval=1.0 - min_mask_rate)
    n_masked = mask_ratio(progress, schedule)[:, None] * seq_len
    base = jnp.arange(seq_len, dtype=jnp.float32)[None, :] < n_masked
    keys = jax.random.split(rng_perm, batch)
    return jax.vmap(lambda k, m: jax.random.permutation(k, m))(keys, base)


class GIVT(nn.Module):
    """Decoder-only (causal or masked) or encoder-decoder GIVT."""

    # Transformer size.
    emb_dim: int = 512
    num_heads: int = 8
    mlp_dim: int = 2048
    num_decoder_layers: int = 6
    num_layers: int = 0  # encoder layers; 0 = decoder-only
    enc_dropout_rate: float = 0.0
    dec_dropout_rate: float = 0.0
    # Tokens.
    seq_len: int = 256
    out_dim: int = 16
    num_labels: int | None = 1000  # None = unconditional (a single BOS row)
    style: Literal["ar", "masked"] = "ar"
    mask_style: Literal["replace", "concat"] = "replace"
    drop_labels_probability: float = 0.0
    zero_embedding_init: bool = False
    # Encoder input.
    patches: Sequence[int] = (16, 16)
    input_size: Sequence[int] = (256, 256)
    # Optional convolutional stem (channels of 3x3 conv + GELU layers, strides below) before
    # the patch embedding, which then covers `patches` / (the strides' product) of the
    # stem's output, so the token grid is unchanged. () = the published plain patch embedding.
    stem: Sequence[int] = ()
    # Each stem layer's stride (() = 2 for every layer; unused without a stem); a stride-1
    # first layer keeps the full resolution for small shapes' outlines.
    stem_strides: Sequence[int] = ()
    # Add each encoded image token to the decoder input at the same position (the code
    # grid must equal the encoder's token grid): a direct, aligned path from the image to
    # each code. False = the published model, which reaches the image by cross-attention only.
    encoder_skip: bool = False
    # Discrete tokens: > 0 makes the tokens ids in [0, vocab_size) (a VQ tokenizer's codes),
    # embedded by a lookup and predicted by a softmax (``models/categorical.py``) in place of
    # the linear projection and the Gaussian mixture; out_dim and the head_* / mixture
    # fields are then unused. 0 = GIVT (real-valued tokens).
    vocab_size: int = 0
    # Head.
    num_mixtures: int = 16
    head_kind: Literal["per_channel", "diag", "full"] = "diag"
    scale_tol: float = 1e-6
    fix_square_plus: bool = True
    # Masked training.
    min_masking_rate_training: float = 0.3
    mask_schedule_train: str = "cosine"  # cosine | linear | pow:K (models.mask_schedule)
    # Layers: one nn.scan (stacked parameters, the published layout) or unrolled; a scanned
    # stack keeps for the backward pass what ``remat_policy`` saves (models.common).
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    # Compute dtype of matmuls and activations ("bfloat16": mixed precision). Parameters,
    # logits and everything of the GMM head (log-probabilities, sampling) stay float32.
    dtype: ComputeDtype = "float32"
    # "fused": jax.nn.dot_product_attention; "reference": flax's einsum/softmax attention.
    attention: AttentionKind = "fused"

    @property
    def head(self) -> GMMHead | CategoricalHead:
        if self.vocab_size:
            return CategoricalHead(self.vocab_size, pad_id=None)
        return GMMHead(self.out_dim, self.num_mixtures, self.head_kind, self.scale_tol,
                       self.fix_square_plus)

    @property
    def has_encoder(self) -> bool:
        return self.num_layers > 0

    @property
    def encoder_grid(self) -> tuple[int, ...]:
        """The image encoder's token grid (rows, columns)."""
        return tuple(s // p for s, p in zip(self.input_size, self.patches, strict=True))

    @property
    def special_labels(self) -> dict[str, int]:
        """Rows of EmbedLabels after the real labels, in the published order."""
        names = []
        if self.style == "masked":
            names += ["mask"] if self.mask_style == "replace" else ["mask", "nomask", "replace"]
        if self.drop_labels_probability > 0:
            names.append("nolabel")
        first = self.num_labels or 1
        return {n: first + i for i, n in enumerate(names)}

    def setup(self) -> None:
        if self.style not in ("ar", "masked"):
            raise ValueError(f"unknown style {self.style!r}: ar or masked")
        if self.style == "masked" and self.mask_style not in ("replace", "concat"):
            raise ValueError(f"unknown mask_style {self.mask_style!r}: replace or concat")
        _ = self.head  # validates the head settings
        dtype = compute_dtype(self.dtype)
        attention_fn(self.attention)  # validates the attention kind
        if self.has_encoder:
            self.pos_embedding_encoder = learned_posemb(
                self, "pos_embedding_encoder", math.prod(self.encoder_grid), self.emb_dim)
            # no stem, no strides: stem=() alone turns a preset's stem off
            strides = tuple(self.stem_strides or (2,) * len(self.stem)) if self.stem else ()
            if len(strides) != len(self.stem):
                raise ValueError(f"stem_strides {strides} and stem {tuple(self.stem)} differ "
                                 "in length")
            down = math.prod(strides)
            if any(p % down for p in self.patches):
                raise ValueError(f"patches {tuple(self.patches)} not divisible by the stem's "
                                 f"downsampling {down} (strides {strides})")
            self.stem_convs = [nn.Conv(c, (3, 3), strides=(s, s), padding="SAME", dtype=dtype,
                                       name=f"Stem_{i}")
                               for i, (c, s) in enumerate(zip(self.stem, strides, strict=True))]
            kernel = tuple(p // down for p in self.patches)
            self.EmbedPatches = nn.Conv(self.emb_dim, kernel, strides=kernel, padding="VALID",
                                        dtype=dtype)
            self.encoder = Encoder(depth=self.num_layers, mlp_dim=self.mlp_dim,
                                   num_heads=self.num_heads, dropout=self.enc_dropout_rate,
                                   scan=self.scan, remat_policy=self.remat_policy,
                                   dtype=dtype, attention=self.attention)
        if self.encoder_skip and (not self.has_encoder
                                  or math.prod(self.encoder_grid) != self.seq_len):
            raise ValueError("encoder_skip needs an encoder whose token grid "
                             f"({'x'.join(map(str, self.encoder_grid))}) has seq_len "
                             f"({self.seq_len}) tokens")
        rows = (self.num_labels or 1) + len(self.special_labels)
        init = (nn.initializers.zeros if self.zero_embedding_init
                else nn.initializers.normal(stddev=1.0))
        self.EmbedLabels = nn.Embed(rows, self.emb_dim, embedding_init=init, dtype=dtype)
        self.EmbedTargets = (nn.Embed(self.vocab_size, self.emb_dim, dtype=dtype,
                                      embedding_init=nn.initializers.normal(stddev=1.0))
                             if self.vocab_size else nn.Dense(self.emb_dim, dtype=dtype))
        self.decoder = Decoder(
            emb_dim=self.emb_dim, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            num_layers=self.num_decoder_layers, num_logits=self.head.num_logits,
            seq_len=self.seq_len + int(self.style == "masked"),
            dropout_rate=self.dec_dropout_rate, scan=self.scan, remat_policy=self.remat_policy,
            dtype=dtype, attention=self.attention)

    # ----------------------------------------------------------------- pieces
    def embed_image(self, image: jax.Array) -> jax.Array:
        """Image [B, H, W, 3] -> patch tokens [B, P, E] (stem, if any, then patch embedding)."""
        x = image
        for conv in self.stem_convs:
            x = nn.gelu(conv(x))
        x = self.EmbedPatches(x)
        b, h, w, e = x.shape
        return x.reshape(b, h * w, e)

    def encode(self, image: jax.Array, train: bool = False) -> jax.Array:
        """Image [B, H, W, 3] -> encoded patches [B, P, E]."""
        x = self.embed_image(image) + self.pos_embedding_encoder
        return self.encoder(x, deterministic=not train)

    def label_ids(self, labels: jax.Array | None, batch: int,
                  drop_labels: jax.Array | None = None) -> jax.Array:
        """Row indices into EmbedLabels: the label, BOS (row 0) or NOLABEL where dropped."""
        ids = jnp.zeros((batch,), jnp.int32) if labels is None else labels.astype(jnp.int32)
        if drop_labels is not None:
            if "nolabel" not in self.special_labels:
                raise ValueError("label dropout needs drop_labels_probability > 0")
            ids = jnp.where(drop_labels, self.special_labels["nolabel"], ids)
        return ids

    def _special(self, name: str, shape: tuple[int, ...]) -> jax.Array:
        return self.EmbedLabels(jnp.full(shape, self.special_labels[name], jnp.int32))

    def embed_targets(self, targets: jax.Array) -> jax.Array:
        """Tokens [B, L, D] (ids [B, L] with ``vocab_size``) -> embeddings [B, L, E]."""
        return self.EmbedTargets(targets.astype(jnp.int32) if self.vocab_size else targets)

    def embed_masked_inputs(self, targets: jax.Array, input_mask: jax.Array) -> jax.Array:
        b, s = targets.shape[:2]
        emb = self.embed_targets(targets)
        m = input_mask[..., None]
        if self.mask_style == "replace":
            return jnp.where(m, self._special("mask", (b, s)), emb)
        flags = jnp.where(m, self._special("mask", (b, s)), self._special("nomask", (b, s)))
        tokens = jnp.where(m, self._special("replace", (b, s)), emb)
        # Every other channel of each, so the concatenation keeps the width.
        return jnp.concatenate([flags[..., ::2], tokens[..., ::2]], axis=-1)

    def _skip(self, encoded: jax.Array | None) -> jax.Array | None:
        """The encoder_skip term by decoder position (none at the masked style's label slot)."""
        if not self.encoder_skip or encoded is None:
            return None
        if self.style == "masked":
            return jnp.pad(encoded, ((0, 0), (1, 0), (0, 0)))
        return encoded

    # ------------------------------------------------------------ full passes
    def decode(self, targets: jax.Array, labels: jax.Array | None = None,
               encoded: jax.Array | None = None, input_mask: jax.Array | None = None,
               drop_labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        """Teacher-forced logits [B, L, num_logits] for the whole sequence (``targets``
        [B, L, D] real tokens, or ids [B, L] with ``vocab_size``)."""
        b, s = targets.shape[:2]
        label_emb = self.EmbedLabels(self.label_ids(labels, b, drop_labels))[:, None]
        if self.style == "ar":
            x = jnp.concatenate([label_emb, self.embed_targets(targets)[:, :-1]], axis=1)
            mask = nn.make_causal_mask(jnp.zeros((b, s)))
            return self.decoder(x, encoded, mask, deterministic=not train,
                                skip=self._skip(encoded))
        if input_mask is None:
            raise ValueError("the masked style needs input_mask (True = masked)")
        x = jnp.concatenate([label_emb, self.embed_masked_inputs(targets, input_mask)], axis=1)
        return self.decoder(x, encoded, None, deterministic=not train,
                            skip=self._skip(encoded))[:, 1:]

    def __call__(self, targets: jax.Array, labels: jax.Array | None = None, *,
                 image: jax.Array | None = None, input_mask: jax.Array | None = None,
                 drop_labels: jax.Array | None = None, train: bool = False) -> jax.Array:
        if self.has_encoder != (image is not None):
            raise ValueError("pass image= if and only if the model has an encoder")
        encoded = self.encode(image, train) if image is not None else None
        return self.decode(targets, labels, encoded, input_mask, drop_labels, train)

    # --------------------------------------------------- cached (AR) decoding
    def init_cache(self, batch: int, encoded: jax.Array | None = None) -> jax.Array:
        """Sizes the KV caches for ``seq_len`` positions (call with mutable=['cache'])."""
        x = jnp.zeros((batch, self.seq_len, self.emb_dim), jnp.float32)
        return self.decoder(x, encoded, None, decode=True, skip=self._skip(encoded))

    def prefill(self, labels: jax.Array | None, batch: int, encoded: jax.Array | None = None,
                drop_labels: jax.Array | None = None) -> jax.Array:
        """Feeds the label/BOS token; returns logits [B, 1, num_logits] of token 0."""
        x = self.EmbedLabels(self.label_ids(labels, batch, drop_labels))[:, None]
        return self.decoder(x, encoded, None, decode=True, skip=self._skip(encoded))

    def decode_step(self, token: jax.Array, encoded: jax.Array | None = None) -> jax.Array:
        """Feeds one sampled token [B, 1, D] (an id [B, 1]); returns logits [B, 1,
        num_logits] of the next."""
        return self.decoder(self.embed_targets(token), encoded, None, decode=True,
                            skip=self._skip(encoded))
