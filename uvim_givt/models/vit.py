"""ViT encoder, laid out as big_vision's (``encoderblock_{i}`` or scanned ``encoderblock``)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uvim_givt.models.common import KERNEL_INIT, MlpBlock, attention_fn, remat_policy


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block: LN -> MHA -> residual; LN -> MLP -> residual."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Any = jnp.float32  # compute dtype; LayerNorm statistics are float32 regardless
    attention: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array, _unused=None) -> tuple[jax.Array, None]:
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=KERNEL_INIT, deterministic=self.deterministic,
            dtype=self.dtype, attention_fn=attention_fn(self.attention),
        )(y, y)
        y = nn.Dropout(rate=self.dropout)(y, self.deterministic)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype)(
            y, self.deterministic)
        y = nn.Dropout(rate=self.dropout)(y, self.deterministic)
        return x + y, None


class Encoder(nn.Module):
    """A stack of ``depth`` blocks and a final ``encoder_norm``.

    With ``scan=True`` the blocks are one ``nn.scan`` (parameters stacked on axis
    0, as in the released ViT VAEs) with rematerialisation per ``remat_policy``.
    The input is cast to ``dtype``, so is the output.
    """

    depth: int
    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: Any = jnp.float32
    attention: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                  deterministic=deterministic, dtype=self.dtype, attention=self.attention)
        # The residual stream in the compute dtype (a float32 position embedding added
        # by the caller would otherwise promote every block back to float32).
        x = x.astype(self.dtype)
        if self.scan:
            block = nn.remat(Encoder1DBlock, prevent_cse=False,
                             policy=remat_policy(self.remat_policy))
            x, _ = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast, length=self.depth,
            )(name="encoderblock", **kw)(x, None)
        else:
            for i in range(self.depth):
                x, _ = Encoder1DBlock(name=f"encoderblock_{i}", **kw)(x)
        return nn.LayerNorm(name="encoder_norm", dtype=self.dtype)(x)

