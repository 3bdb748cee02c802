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
with a categorical :class:`CategoricalHead` in place of the Gaussian mixture: one sampler,
KV cache and beam search serve both token kinds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class CategoricalHead:
    """A softmax over token ids, with the sampler interface of ``GMMHead``.

    Tokens are int32 ids (``token_shape`` ``()``). The padding id 0 is never a target, so
    it is never drawn (its logit is masked). ``temperature`` divides the logits; 0 takes the
    most likely id (the published predictions use 1e-7, the same thing); ``top_k`` > 0
    draws among the k most likely ids only. ``temperature_probs`` (the GMM's mixture
    temperature) has no meaning here and is ignored.
    """

    token_shape: tuple[int, ...] = ()
    token_dtype: Any = jnp.int32

    def __init__(self, vocab_size: int, top_k: int = 0):
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: needs the padding id and one code")
        self.num_logits = int(vocab_size)
        self.top_k = int(top_k)

    def _tempered(self, logits: jax.Array, temperature: Any) -> jax.Array:
        logits = logits.astype(jnp.float32).at[..., PAD].set(-jnp.inf)
        if self.top_k:
            kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        t = jnp.asarray(temperature, jnp.float32)
        return logits / jnp.where(t > 0, t, 1.0)

    def sample(self, key: jax.Array, logits: jax.Array, temperature: Any = 1.0,
               temperature_probs: Any = 1.0) -> jax.Array:
        """Ids [...] drawn from softmax(logits / temperature) over the non-padding ids."""
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

    def mean(self, logits: jax.Array) -> jax.Array:
        """The most likely id (the mode; what "teacher-forced means" are for ids)."""
        return jnp.argmax(self._tempered(logits, 1.0), axis=-1).astype(jnp.int32)


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
        return CategoricalHead(self.vocab_size)

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
