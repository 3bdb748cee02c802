"""Building blocks shared by the GIVT transformer and the ViT VAE.

Names of modules and parameters follow the published big_vision checkpoints
(see shared/reference), so a released ``.npz`` loads by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# big_vision's ViT initialisers: Xavier-uniform kernels, tiny-normal biases.
KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.normal(stddev=1e-6)

# Compute dtypes a model accepts (its ``dtype`` field). Parameters are always float32
# (flax's default ``param_dtype``); ``dtype`` only sets what matmuls and activations run in.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ComputeDtype = Literal["float32", "bfloat16"]
# Attention implementations (a model's ``attention`` field): "fused" =
# ``jax.nn.dot_product_attention``, "reference" = flax's hand-written einsum/softmax.
ATTENTION_KINDS = ("fused", "reference")
AttentionKind = Literal["fused", "reference"]
# What a scanned layer stack keeps for the backward pass (a model's ``remat_policy``, used
# with ``scan=True``): names of ``jax.checkpoint_policies``. "nothing_saveable" (big_vision's)
# recomputes each layer's forward pass; the others trade memory for less recomputation.
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")


def compute_dtype(name: str) -> Any:
    """The jnp dtype of a model's ``dtype`` field ('float32' or 'bfloat16')."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}: one of {tuple(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def remat_policy(name: str) -> Callable[..., bool]:
    """The ``jax.checkpoint_policies`` entry of a model's ``remat_policy`` field."""
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}: one of {REMAT_POLICIES}")
    return getattr(jax.checkpoint_policies, name)


def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                    mask: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                    dropout_rate: float = 0.0, broadcast_dropout: bool = True,
                    deterministic: bool = False, dtype: Any = None,
                    precision: Any = None) -> jax.Array:
    """flax's ``attention_fn`` contract, computed by ``jax.nn.dot_product_attention``.

    Shapes as flax: q [B, T, N, H], k/v [B, S, N, H], ``mask`` broadcastable to
    [B, N, T, S] with nonzero = attend (flax builds float 0/1 masks, including the
    KV-cache one). On a GPU with bf16/fp16 inputs cuDNN's flash attention is asked for
    (JAX 0.7's ``implementation=None`` always picks XLA); where cuDNN refuses the shapes
    or mask at trace time, XLA's fused attention runs instead.
    """
    if dropout_rate > 0.0 and not deterministic:
        # jax.nn.dot_product_attention has no dropout on the attention weights: while
        # that dropout is active (training with dropout_rate > 0) use flax's version.
        return nn.dot_product_attention(
            query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
            broadcast_dropout=broadcast_dropout, deterministic=deterministic, dtype=dtype,
            precision=precision)
    if query.ndim != 4:  # flax allows several batch axes; the fused op takes one
        return nn.dot_product_attention(query, key, value, mask=mask, deterministic=True,
                                        dtype=dtype, precision=precision)
    dt = dtype or jnp.result_type(query, key, value)
    query, key, value = (t.astype(dt) for t in (query, key, value))
    if mask is not None:
        # The fused op takes a 4-d bool mask; flax's may have fewer leading axes.
        mask = jnp.asarray(mask) != 0
        full = (query.shape[0], 1, query.shape[1], key.shape[1])
        mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, full))
    if dt in (jnp.bfloat16, jnp.float16) and jax.default_backend() == "gpu":
        try:
            return jax.nn.dot_product_attention(query, key, value, mask=mask,
                                                implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError):
            pass  # cuDNN does not take these shapes / this mask: XLA below
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=None)


def attention_fn(kind: str) -> Callable[..., jax.Array]:
    """The ``attention_fn`` for ``nn.MultiHeadDotProductAttention`` of an attention kind."""
    if kind == "fused":
        return fused_attention
    if kind == "reference":
        return nn.dot_product_attention
    raise ValueError(f"unknown attention {kind!r}: one of {ATTENTION_KINDS}")


def squareplus(x: jax.Array, fixed: bool = True) -> jax.Array:
    """Smooth positive map used for the scales of the Gaussian heads.

    ``fixed=True`` is (x + sqrt(x^2 + 4)) / 2, the published definition. The
    original big_vision code had ``x + sqrt(x^2 + 4) / 2`` unless its
    ``fix_square_plus`` flag was set; ``fixed=False`` reproduces that variant.
    """
    if fixed:
        return (x + jnp.sqrt(jnp.square(x) + 4.0)) / 2.0
    return x + jnp.sqrt(jnp.square(x) + 4.0) / 2.0


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh approximation, flax's default) -> dropout -> Dense."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32  # compute dtype (parameters stay float32)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d = x.shape[-1]
        kw = dict(kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, dtype=self.dtype)
        x = nn.Dense(self.mlp_dim, **kw)(x)
        x = nn.gelu(x)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return nn.Dense(d, **kw)(x)


def learned_posemb(module: nn.Module, name: str, length: int, width: int) -> jax.Array:
    """A learned position embedding of shape (1, length, width)."""
    return module.param(
        name, nn.initializers.normal(stddev=1.0 / np.sqrt(width)), (1, length, width), jnp.float32
    )


def resize_tokens(x: jax.Array, grid: int) -> jax.Array:
    """Linearly resizes a square (B, N, C) token grid to (B, grid*grid, C)."""
    b, n, c = x.shape
    side = int(round(np.sqrt(n)))
    if side * side != n:
        raise ValueError(f"cannot resize {n} tokens: not a square grid")
    if side == grid:
        return x
    x = x.reshape(b, side, side, c)
    x = jax.image.resize(x, (b, grid, grid, c), method="linear")
    return x.reshape(b, grid * grid, c)
