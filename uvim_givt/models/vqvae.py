"""The original UViM stage 1: a VQ-VAE over label maps with the image as context.

As published in big_vision ``models/proj/uvim/vit.py`` (parameter and state names as the
released checkpoints, ``shared/reference/uvim_param_trees.json``):

* encoder: each label channel one-hot per patch, ``[B, patches, classes, patch^2]``, through
  ``embedding_<name>`` (a DenseGeneral over (classes, patch^2)), summed over the channels;
  with ``with_encoder_ctx`` the image's patch convolution ``ctx_enc_embedding`` is added
  (the "guiding code" oracle sees the image); + ``pos_embedding_encoder`` -> ViT ``encoder``
  -> the bottleneck to ``code_len`` tokens (``bottleneck_resize``: a linear resize of the
  patch grid; else the learned matrix ``bottleneck_downsample``) -> ``encoder_head`` ->
  standardised per token -> quantised to the nearest l2-normalised codeword
  (:func:`quantize`, a straight-through gradient);
* decoder: codes -> ``decoder_stem`` -> back to the patch grid (resize or
  ``bottleneck_upsample``) -> + ``ctx_dec_embedding`` of the image (``with_decoder_ctx``)
  -> + ``pos_embedding_decoder`` -> ViT ``decoder`` -> ``head_<name>`` (zero-initialised)
  per patch ``[classes, patch^2]`` -> pixels ``{name: [B, H, W, classes]}``;
* the dictionary is the ``state`` collection (``dictionary`` [dict_size, codeword_dim]:
  discounted sums of the codes assigned to each codeword; ``counts`` [dict_size]: their
  discounted counts), learnt by moving averages (:func:`ema_update`), never by gradient;
  a codeword is its sum over its count, l2-normalised (:func:`codewords`). While a count is
  under ``min_count`` the most frequent codeword is split into it (:func:`split_unused`).

The statistics are sums over whatever batch the function sees: jitted on a batch sharded
over devices and hosts (``training/sharding.py``), that is the global batch, as
big_vision's ``psum`` over its pmap axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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

# Multiplicative jitter of a split codeword (big_vision's PERTURB): the two halves differ.
SPLIT_PERTURB = 0.001


# ---------------------------------------------------------------- the dictionary maths
def initial_state(key: jax.Array, dict_size: int, codeword_dim: int) -> dict[str, jax.Array]:
    """A fresh dictionary: sums ~ N(0, 1 / dict_size), counts 1 (big_vision's)."""
    std = 1.0 / np.sqrt(dict_size)
    return {"dictionary": std * jax.random.normal(key, (dict_size, codeword_dim)),
            "counts": jnp.ones((dict_size,))}


def codewords(dictionary: jax.Array, counts: jax.Array) -> jax.Array:
    """The codewords [K, D]: each discounted sum over its count, l2-normalised."""
    e = dictionary / counts[:, None]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def squared_distances(x: jax.Array, e: jax.Array) -> jax.Array:
    """||x - e_k||^2 [..., K] of vectors ``x`` [..., D] to every row of ``e`` [K, D]."""
    return jnp.sum(x * x, axis=-1, keepdims=True) - 2.0 * x @ e.T + jnp.sum(e * e, axis=-1)


def quantize(x: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x_q, ids): each vector of ``x`` [..., D] replaced by its nearest (euclidean) row of
    ``e`` [K, D], and that row's index. The gradient passes straight through to ``x``."""
    ids = jnp.argmin(squared_distances(x, e), axis=-1)
    x_q = x + jax.lax.stop_gradient(e[ids] - x)  # e[ids] forward, identity backward
    return x_q, ids


def batch_statistics(x: jax.Array, ids: jax.Array, dict_size: int
                     ) -> tuple[jax.Array, jax.Array]:
    """(counts [K], sums [K, D]) of the codes ``x`` [..., D] assigned to each codeword."""
    x = jax.lax.stop_gradient(x).reshape(-1, x.shape[-1]).astype(jnp.float32)
    ids = ids.reshape(-1)
    counts = jnp.zeros((dict_size,), jnp.float32).at[ids].add(1.0)
    sums = jnp.zeros((dict_size, x.shape[-1]), jnp.float32).at[ids].add(x)
    return counts, sums


def ema_update(dictionary: jax.Array, counts: jax.Array, batch_counts: jax.Array,
               batch_sums: jax.Array, momentum: float) -> tuple[jax.Array, jax.Array]:
    """Discounted sums and counts: old * momentum + this batch's."""
    return (dictionary * momentum + batch_sums, counts * momentum + batch_counts)


def split_unused(dictionary: jax.Array, counts: jax.Array, rng: jax.Array,
                 min_count: float) -> tuple[jax.Array, jax.Array]:
    """While any count is under ``min_count``: the least frequent codeword becomes a copy of
    the most frequent one (jittered by +-``SPLIT_PERTURB``), and the two share its sum and
    count half and half (big_vision's ``split_the_most_frequent_embedding``)."""
    def one(state):
        rng, e, c = state
        rng, local = jax.random.split(rng)
        i_max, i_min = jnp.argmax(c), jnp.argmin(c)
        jitter = jax.random.uniform(local, (e.shape[1],), jnp.float32,
                                    1.0 - SPLIT_PERTURB, 1.0 + SPLIT_PERTURB)
        e = e.at[i_min].set(e[i_max] * jitter)
        half = c[i_max] / 2.0
        c = c.at[i_min].set(half).at[i_max].set(half)
        e = e.at[i_min].set(e[i_min] / 2.0).at[i_max].set(e[i_max] / 2.0)
        return rng, e, c

    _, dictionary, counts = jax.lax.while_loop(
        lambda s: jnp.any(s[2] < min_count), one, (rng, dictionary, counts))
    return dictionary, counts


def usage_metrics(batch_counts: jax.Array) -> dict[str, jax.Array]:
    """Codebook usage of one batch: the share of the most used codeword (1 = collapse), the
    share of unused codewords, and the perplexity of the code distribution (how many
    codewords it is worth; dict_size at best, 1 at collapse)."""
    total = jnp.maximum(jnp.sum(batch_counts), 1.0)
    p = batch_counts / total
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {"codebook_max_ratio": jnp.max(batch_counts) / total,
            "codebook_zeros_ratio": jnp.mean((batch_counts == 0).astype(jnp.float32)),
            "codebook_perplexity": jnp.exp(entropy)}


def patches_to_pixels(y: jax.Array, grid: tuple[int, int], patch: tuple[int, int]
                      ) -> jax.Array:
    """Per-patch outputs [B, gh*gw, classes, p*q] -> pixels [B, gh*p, gw*q, classes] (the
    inverse of the one-hot patching of :meth:`VQVAE.one_hot_patches`)."""
    (gh, gw), (p, q) = grid, patch
    b, n = y.shape[0], y.shape[2]
    y = y.reshape(b, gh, gw, n, p, q)
    return jnp.transpose(y, (0, 1, 4, 2, 5, 3)).reshape(b, gh * p, gw * q, n)


# ------------------------------------------------------------------------- the model
class VQVAE(nn.Module):
    """The UViM VQ-VAE (parameter names as big_vision's ``proj.uvim.vit``).

    ``label_channels``: name -> (index in the label map, number of classes), and
    ``value_channels``: name -> (first index, number of real values), as the ViT VAE's
    (:mod:`uvim_givt.models.label_maps`). ``code_dropout`` ("none", "seq", "random"): in
    training, zeroes a random subset of the quantised codes before decoding
    (``vae_losses.code_dropout_mask``)."""

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
    codeword_dim: int = 768
    dict_size: int = 4096
    dict_momentum: float = 0.995
    min_count: float = 0.1
    with_encoder_ctx: bool = True
    with_decoder_ctx: bool = True
    bottleneck_resize: bool = True
    code_dropout: vae_losses.CodeDropout = "none"
    dropout: float = 0.0
    head_zeroinit: bool = True
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: ComputeDtype = "float32"
    attention: AttentionKind = "fused"

    def __post_init__(self) -> None:
        self.label_channels = label_maps.frozen(self.label_channels)
        self.value_channels = label_maps.frozen(self.value_channels)
        self.input_size = tuple(self.input_size)
        self.patch_size = tuple(self.patch_size)
        super().__post_init__()

    # ------------------------------------------------------------ geometry
    @property
    def patch_grid(self) -> tuple[int, int]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch_size, strict=True))

    @property
    def code_grid(self) -> int:
        return int(round(math.sqrt(self.code_len)))

    @property
    def code_dim(self) -> int:
        return self.codeword_dim

    @property
    def channel_order(self) -> tuple[str, ...]:
        return label_maps.order(self.label_channels, self.value_channels)

    def channel_width(self, name: str) -> int:
        """Outputs of a channel per pixel: its classes (logits) or its values."""
        return label_maps.width(name, self.label_channels, self.value_channels)

    def problems(self) -> list[tuple[str, str]]:
        """(config key, why) for every shape that cannot work (checked before a run)."""
        out = [("label_channels", why)
               for why in label_maps.check(self.label_channels, self.value_channels)]
        for s, p in zip(self.input_size, self.patch_size, strict=True):
            if p > s or s % p:
                out.append(("patch_size", f"{tuple(self.patch_size)} does not tile "
                            f"input_size {tuple(self.input_size)}"))
                break
        if self.bottleneck_resize:
            gh, gw = self.patch_grid
            if gh != gw:
                out.append(("bottleneck_resize", f"needs a square patch grid, not {gh}x{gw}"))
            if self.code_grid ** 2 != self.code_len:
                out.append(("code_len", f"{self.code_len} is not a square number (the "
                            "resize bottleneck makes a square code grid)"))
        if self.dict_size < 2:
            out.append(("dict_size", f"{self.dict_size}: at least 2 codewords"))
        if self.codeword_dim < 2:
            out.append(("codeword_dim", f"{self.codeword_dim}: codes are standardised per "
                        "token, one dimension leaves nothing to quantise"))
        if self.code_dropout not in ("none", "seq", "random"):
            out.append(("code_dropout", f"{self.code_dropout!r}: none, seq or random"))
        return out

    def setup(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(f"{k}: {why}" for k, why in problems))
        dtype = compute_dtype(self.dtype)
        attention_fn(self.attention)
        gh, gw = self.patch_grid
        n_patches, p2 = gh * gw, self.patch_size[0] * self.patch_size[1]
        self.embeddings = {
            name: nn.DenseGeneral(self.width, axis=(-2, -1), dtype=dtype,
                                  name=f"embedding_{name}")
            for name in self.channel_order}
        head_kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
        self.heads = {
            name: nn.DenseGeneral((self.channel_width(name), p2), dtype=dtype,
                                  name=f"head_{name}", **head_kw)
            for name in self.channel_order}
        conv = dict(kernel_size=self.patch_size, strides=self.patch_size, padding="VALID",
                    dtype=dtype)
        if self.with_encoder_ctx:
            self.ctx_enc_embedding = nn.Conv(self.width, **conv)
        if self.with_decoder_ctx:
            self.ctx_dec_embedding = nn.Conv(self.width, **conv)
        self.pos_embedding_encoder = learned_posemb(
            self, "pos_embedding_encoder", n_patches, self.width)
        self.pos_embedding_decoder = learned_posemb(
            self, "pos_embedding_decoder", n_patches, self.width)
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                  scan=self.scan, remat_policy=self.remat_policy, dtype=dtype,
                  attention=self.attention)
        self.encoder = Encoder(depth=self.depth, **kw)
        self.decoder = Encoder(depth=self.decoder_depth, **kw)
        if not self.bottleneck_resize:
            init = nn.initializers.xavier_uniform()
            self.bottleneck_downsample = self.param("bottleneck_downsample", init,
                                                    (n_patches, self.code_len))
            self.bottleneck_upsample = self.param("bottleneck_upsample", init,
                                                  (self.code_len, n_patches))
        # float32: the codes are standardised and compared with the codewords
        self.encoder_head = nn.Dense(self.codeword_dim, dtype=jnp.float32)
        self.decoder_stem = nn.Dense(self.width, dtype=dtype)
        fresh = (lambda: initial_state(self.make_rng("params"), self.dict_size,
                                       self.codeword_dim))
        self.dictionary = self.variable("state", "dictionary", lambda: fresh()["dictionary"])
        self.counts = self.variable("state", "counts", lambda: jnp.ones((self.dict_size,)))

    # -------------------------------------------------------------- pieces
    def one_hot_patches(self, labels: jax.Array) -> dict[str, jax.Array]:
        """Labels [B, H, W, C] -> {name: patches [B, patches, width, p^2]} of each channel's
        features (one-hot classes, values as they are), as big_vision's task input_pp."""
        b, h, w = labels.shape[:3]
        p, q = self.patch_size
        out = {}
        for name, x in label_maps.features(labels, self.label_channels,
                                           self.value_channels).items():
            n = x.shape[-1]
            x = x.reshape(b, h // p, p, w // q, q, n)
            out[name] = jnp.transpose(x, (0, 1, 3, 5, 2, 4)).reshape(
                b, (h // p) * (w // q), n, p * q)
        return out

    def _ctx(self, conv: nn.Module, image: jax.Array) -> jax.Array:
        x = conv(image)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def codebook(self) -> jax.Array:
        """The current codewords [dict_size, codeword_dim] (l2-normalised)."""
        return codewords(self.dictionary.value, self.counts.value)

    def encode_continuous(self, labels: jax.Array, image: jax.Array | None,
                          train: bool = False) -> jax.Array:
        """The standardised codes before quantisation [B, code_len, codeword_dim]."""
        x = sum(self.embeddings[k](v) for k, v in self.one_hot_patches(labels).items())
        if self.with_encoder_ctx:
            x = x + self._ctx(self.ctx_enc_embedding, image)
        x = self.encoder(x + self.pos_embedding_encoder, deterministic=not train)
        if self.bottleneck_resize:
            x = resize_tokens(x, self.code_grid)
        else:
            x = jnp.einsum("btc,tn->bnc", x, self.bottleneck_downsample.astype(x.dtype))
        return jax.nn.standardize(self.encoder_head(x), axis=-1)

    def encode(self, labels: jax.Array, image: jax.Array | None = None, train: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(codes before quantisation, quantised codes, code ids [B, code_len])."""
        x = self.encode_continuous(labels, image, train)
        x_q, ids = quantize(x, self.codebook())
        return x, x_q, ids

    def lookup(self, ids: jax.Array) -> jax.Array:
        """Code ids [B, code_len] -> their codewords [B, code_len, codeword_dim]."""
        return self.codebook()[ids]

    def decode(self, codes: jax.Array, image: jax.Array | None = None, train: bool = False,
               rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Codes [B, code_len, codeword_dim] (or int ids [B, code_len]) and the image ->
        {name: logits [B, H, W, classes]}. Training applies code dropout (from ``rng``, or
        the ``"dropout"`` stream)."""
        if jnp.issubdtype(codes.dtype, jnp.integer):
            codes = self.lookup(codes)
        if train and self.code_dropout != "none":
            rng = self.make_rng("dropout") if rng is None else rng
            codes = vae_losses.apply_code_dropout(codes, rng, self.code_dropout)
        x = self.decoder_stem(codes)
        gh, gw = self.patch_grid
        if self.bottleneck_resize:
            x = resize_tokens(x, gh)
        else:
            x = jnp.einsum("bnc,nt->btc", x, self.bottleneck_upsample.astype(x.dtype))
        if self.with_decoder_ctx:
            x = x + self._ctx(self.ctx_dec_embedding, image)
        x = self.decoder(x + self.pos_embedding_decoder, deterministic=not train)
        return {name: patches_to_pixels(self.heads[name](x).astype(jnp.float32),
                                        (gh, gw), self.patch_size)
                for name in self.channel_order}

    def __call__(self, labels: jax.Array, image: jax.Array | None = None,
                 train: bool = False, rng: jax.Array | None = None
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """Encode, quantise, decode: (logits, {"bottleneck", "bottleneck_q", "ids"})."""
        x, x_q, ids = self.encode(labels, image, train)
        logits = self.decode(x_q, image, train, rng)
        return logits, {"bottleneck": x, "bottleneck_q": x_q, "ids": ids}


def init_variables(model: VQVAE, key: jax.Array) -> dict[str, Any]:
    """{"params", "state"} of a VQ-VAE, from dummy inputs (the dictionary drawn from
    ``key`` too)."""
    labels = label_maps.dummy(model.input_size, model.label_channels, model.value_channels)
    image = jnp.zeros((1, *model.input_size, 3), jnp.float32)
    return dict(model.init(key, labels, image))
