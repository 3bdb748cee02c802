"""Building blocks shared by the GIVT transformer and the ViT VAE.

Names of modules and parameters follow the published big_vision checkpoints
(see shared/reference), so a released ``.npz`` loads by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# big_vision's ViT initialisers: Xavier-uniform kernels, tiny-normal biases.
KERNEL_INIT = nn.initializers.xavier_uniform()
BIAS_INIT = nn.initializers.normal(stddev=1e-6)


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

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)
        x = nn.gelu(x)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return nn.Dense(d, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)(x)


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
