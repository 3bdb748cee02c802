"""The original UViM's stage 2, the VTT: a ViT image encoder and a causal decoder over the
VQ-VAE's code ids, with a softmax over ``vocab_size`` = ``dict_size + 1`` (big_vision
``models/proj/uvim/vtt.py``).

Token 0 is the padding symbol: the decoder's input is the target sequence shifted right
with a 0 in front, and the stage-1 code ids enter as ``code + 1`` (the published trainer's
``encode_labels``). The encoder and decoder share ``num_layers``, ``num_heads``,
``mlp_dim`` and ``emb_dim``; position embeddings are learned (``posemb_type="learn"``, as
every published config sets) and kept at the top level (``pos_embedding_encoder``,
``pos_embedding_decoder``), as in the released checkpoints. The decoder blocks are GIVT's
(``models/givt.py``) with LayerNorm biases; its inputs are embedded by ``EmbedTargets``.

The model offers the interface of a causal GIVT to the autoregressive sampler
(``sampling/autoregressive.py``: ``init_cache``, ``prefill``, ``decode_step``, ``head``),
with a categorical head (``models/categorical.py``) in place of the Gaussian mixture: one sampler,
KV cache and beam search serve both token kinds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uvim_givt.models.categorical import CategoricalHead
from uvim_givt.models.common import (
    AttentionKind,
    ComputeDtype,
    attention_fn,
    compute_dtype,
    learned_posemb,
)
from uvim_givt.models.givt import Decoder
from uvim_givt.models.vit import Encoder

PAD = 0  # the padding / start symbol; code id k is token k + 1
__all__ = ["PAD", "VTT", "CategoricalHead"]


class VTT(nn.Module):
    """Image -> code ids: ViT encoder, causal decoder with cross-attention, softmax."""

    emb_dim: int = 512
    num_heads: int = 8
    num_layers: int = 6  # of the encoder and of the decoder
    mlp_dim: int = 2048
    dropout_rate: float = 0.0
    vocab_size: int = 32000  # dict_size + 1
    seq_len: int = 256
    patches: Sequence[int] = (16, 16)
    input_size: Sequence[int] = (256, 256)
    posemb_type: str = "learn"
    zero_decoder_seq: bool = False  # published option: the decoder sees zeros, not codes
    dtype: ComputeDtype = "float32"
    attention: AttentionKind = "fused"

    # What the autoregressive sampler asks of a causal model.
    style = "ar"
    num_labels = None
    scan = False
    has_encoder = True

    @property
    def special_labels(self) -> dict[str, int]:
        return {}  # no class labels, so no label dropout and no guidance

    @property
    def head(self) -> CategoricalHead:
        return CategoricalHead(self.vocab_size, pad_id=PAD)

    @property
    def out_dim(self) -> int:  # noqa: D102 - tokens are scalar ids
        return 1

    @property
    def encoder_grid(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.input_size, self.patches, strict=True))

    def setup(self) -> None:
        if self.posemb_type != "learn":
            raise ValueError(f"posemb_type={self.posemb_type!r}: the published VTTs learn "
                             "their position embeddings ('learn')")
        dtype = compute_dtype(self.dtype)
        attention_fn(self.attention)  # validates the attention kind
        self.pos_embedding_encoder = learned_posemb(
            self, "pos_embedding_encoder", math.prod(self.encoder_grid), self.emb_dim)
        self.pos_embedding_decoder = learned_posemb(
            self, "pos_embedding_decoder", self.seq_len, self.emb_dim)
        self.EmbedPatches = nn.Conv(self.emb_dim, tuple(self.patches),
                                    strides=tuple(self.patches), padding="VALID", dtype=dtype)
        self.encoder = Encoder(depth=self.num_layers, mlp_dim=self.mlp_dim,
                               num_heads=self.num_heads, dropout=self.dropout_rate,
                               dtype=dtype, attention=self.attention)
        self.decoder = Decoder(
            emb_dim=self.emb_dim, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            num_layers=self.num_layers, num_logits=self.vocab_size, seq_len=self.seq_len,
            dropout_rate=self.dropout_rate, dtype=dtype, attention=self.attention,
            vocab_size=self.vocab_size, norm_bias=True)

    def encode(self, image: jax.Array, train: bool = False) -> jax.Array:
        """Image [B, H, W, 3] -> encoded patches [B, P, E]."""
        x = self.EmbedPatches(image)
        b, h, w, e = x.shape
        x = x.reshape(b, h * w, e) + self.pos_embedding_encoder
        return self.encoder(x, deterministic=not train)

    def _inputs(self, ids: jax.Array) -> jax.Array:
        return jnp.zeros_like(ids) if self.zero_decoder_seq else ids

    def decode(self, targets: jax.Array, labels: Any = None, encoded: jax.Array | None = None,
               input_mask: Any = None, drop_labels: Any = None, train: bool = False
               ) -> jax.Array:
        """Teacher-forced logits [B, L, vocab] of the tokens ``targets`` [B, L] (code + 1):
        position i sees the padding symbol and targets before i."""
        del labels, input_mask, drop_labels  # no class labels, no masking
        shifted = jnp.pad(targets.astype(jnp.int32), ((0, 0), (1, 0)))[:, :-1]
        mask = nn.make_causal_mask(shifted)
        return self.decoder(self._inputs(shifted), encoded, mask, deterministic=not train,
                            pos_emb=self.pos_embedding_decoder)

    def __call__(self, targets: jax.Array, labels: Any = None, *, image: jax.Array,
                 input_mask: Any = None, drop_labels: Any = None, train: bool = False
                 ) -> jax.Array:
        return self.decode(targets, None, self.encode(image, train), train=train)

    # --------------------------------------------------------- cached decoding
    def init_cache(self, batch: int, encoded: jax.Array | None = None) -> jax.Array:
        """Sizes the KV caches for ``seq_len`` positions (call with mutable=['cache'])."""
        ids = jnp.zeros((batch, self.seq_len), jnp.int32)
        return self.decoder(ids, encoded, None, decode=True, pos_emb=self.pos_embedding_decoder)

    def prefill(self, labels: Any, batch: int, encoded: jax.Array | None = None,
                drop_labels: Any = None) -> jax.Array:
        """Feeds the padding symbol; returns logits [B, 1, vocab] of token 0."""
        ids = jnp.full((batch, 1), PAD, jnp.int32)
        return self.decoder(ids, encoded, None, decode=True, pos_emb=self.pos_embedding_decoder)

    def decode_step(self, token: jax.Array, encoded: jax.Array | None = None) -> jax.Array:
        """Feeds one sampled id [B, 1]; returns logits [B, 1, vocab] of the next."""
        return self.decoder(self._inputs(token.astype(jnp.int32)), encoded, None, decode=True,
                            pos_emb=self.pos_embedding_decoder)
