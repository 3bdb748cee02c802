"""The invertible adaptor of GIVT: an iRevNet normalizing flow between the VAE's codes and
the sequence the GIVT models.

Training maps the frozen VAE's codes ``z`` through ``forward`` to ``y = f(z)`` and scores
``y`` with the GIVT; by the change of variables ``log p(z) = log p_GIVT(f(z)) +
log|det df/dz|``. Sampling draws ``y`` with any sampler and decodes ``inverse(y)``.

Each block is an additive coupling on the two channel halves of the code grid,
``(x1, x2) -> (x2, x1 + F(x2))``, with ``F`` a small conv net (GroupNorm, ReLU, three 3x3
convs). Such a block is exactly invertible, ``(a, b) -> (b - F(a), a)``, and its Jacobian
is a block-triangular matrix with identity diagonal blocks followed by a permutation of
the halves, so ``|det| = 1``: the flow is volume preserving and its log-determinant is 0
whatever the parameters (``tests/test_adaptor.py`` checks this against the numerical
Jacobian).

Module and parameter names follow big_vision's ``models/proj/givt/adaptor.py``
(``modules_<i>/{Conv_0,Conv_1,Conv_2,gn_0,gn_1,gn_2}``; block 0 has no ``gn_0``), so the
``params_adaptor`` subtree of a released GIVT checkpoint loads by name.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

#: where the adaptor's parameters sit inside the GIVT stage's parameter tree (big_vision's
#: generative trainer stores them there, next to the GIVT's own)
PARAMS_KEY = "params_adaptor"


def grid_shape(seq_len: int, pixel_shuffle_patch_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the code grid a sequence of ``seq_len`` codes is read as.

    The codes come from a square latent grid, optionally space-to-depth shuffled by
    ``(ph, pw)`` patches: the shuffled grid is ``(s // ph, s // pw)`` with ``s`` the side of
    the square. Raises ValueError when no such grid has ``seq_len`` cells."""
    ph, pw = (int(v) for v in pixel_shuffle_patch_size)
    side = math.isqrt(seq_len * ph * pw)
    h, w = side // ph, side // pw
    if h * w != seq_len:
        raise ValueError(f"a sequence of {seq_len} codes is not a square grid shuffled by "
                         f"({ph}, {pw}) patches")
    return h, w


def check_channels(num_channels: int, num_channels_bottleneck: int) -> None:
    """Raises ValueError when the coupling cannot split or group-normalise the channels."""
    if num_channels < 2 or num_channels % 2:
        raise ValueError(f"the adaptor splits the code channels in halves: {num_channels} "
                         "must be even")
    groups = num_groups(num_channels)
    for what, n in (("code", num_channels), ("bottleneck", num_channels_bottleneck)):
        if n % 2 or (n // 2) % groups:
            raise ValueError(f"{what} channels {n}: half of them must be a multiple of the "
                             f"{groups} GroupNorm groups")


def num_groups(num_channels: int) -> int:
    """GroupNorm groups of every block (big_vision's ``min(32, num_channels // 2)``)."""
    return min(32, num_channels // 2)


class CouplingBlock(nn.Module):
    """One additive coupling ``(x1, x2) -> (x2, x1 + F(x2))`` on [B, H, W, C/2] halves."""

    first: bool = False
    num_channels: int = 2             # channels of one half
    num_channels_bottleneck: int = 2  # hidden channels of F
    num_groups: int = 1

    @nn.compact
    def residual(self, x: jax.Array) -> jax.Array:
        """F: [GN, ReLU] (not in the first block), conv, GN, ReLU, conv, GN, ReLU, conv."""
        conv = dict(kernel_size=(3, 3), padding=1, use_bias=False)
        y = x
        if not self.first:  # the first block sees the raw codes: no pre-activation norm
            y = nn.relu(nn.GroupNorm(num_groups=self.num_groups, name="gn_0")(y))
        y = nn.Conv(self.num_channels_bottleneck, name="Conv_0", **conv)(y)
        y = nn.relu(nn.GroupNorm(num_groups=self.num_groups, name="gn_1")(y))
        y = nn.Conv(self.num_channels_bottleneck, name="Conv_1", **conv)(y)
        y = nn.relu(nn.GroupNorm(num_groups=self.num_groups, name="gn_2")(y))
        return nn.Conv(self.num_channels, name="Conv_2", **conv)(y)

    def forward(self, halves: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x1, x2 = halves
        return x2, x1 + self.residual(x2)

    def inverse(self, halves: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        a, b = halves
        return b - self.residual(a), a


class InvertibleAdaptor(nn.Module):
    """iRevNet flow over code sequences [B, L, C] (read as an [B, H, W, C] grid).

    ``num_channels`` is the GIVT's ``out_dim`` (= the VAE's codeword dimension);
    ``num_channels_bottleneck`` the hidden width of all blocks together (each half's
    coupling net gets half of it); ``pixel_shuffle_patch_size`` the space-to-depth patch
    the codes were shuffled with (only fixes the grid shape)."""

    num_channels: int = 4
    num_blocks: int = 4
    num_channels_bottleneck: int = 16
    pixel_shuffle_patch_size: tuple[int, int] = (1, 1)

    def setup(self) -> None:
        check_channels(self.num_channels, self.num_channels_bottleneck)
        # A list attribute named ``modules``: flax names its entries modules_0, modules_1...
        # as in the published module.
        self.modules = [
            CouplingBlock(first=i == 0, num_channels=self.num_channels // 2,
                          num_channels_bottleneck=self.num_channels_bottleneck // 2,
                          num_groups=num_groups(self.num_channels))
            for i in range(self.num_blocks)]

    def _to_grid(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, seq_len, c = x.shape
        h, w = grid_shape(seq_len, self.pixel_shuffle_patch_size)
        grid = x.reshape(b, h, w, c)
        return grid[..., :c // 2], grid[..., c // 2:]

    @staticmethod
    def _to_sequence(halves: tuple[jax.Array, jax.Array]) -> jax.Array:
        grid = jnp.concatenate(halves, axis=-1)
        b, h, w, c = grid.shape
        return grid.reshape(b, h * w, c)

    def forward(self, z: jax.Array) -> jax.Array:
        """VAE codes [B, L, C] -> GIVT sequence [B, L, C]."""
        halves = self._to_grid(z)
        for block in self.modules:
            halves = block.forward(halves)
        return self._to_sequence(halves)

    def inverse(self, y: jax.Array) -> jax.Array:
        """GIVT sequence [B, L, C] -> VAE codes [B, L, C] (undoes :meth:`forward`)."""
        halves = self._to_grid(y)
        for block in reversed(self.modules):
            halves = block.inverse(halves)
        return self._to_sequence(halves)

    def forward_and_logdet(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(forward(z), log|det d forward / dz| per example [B]).

        Additive couplings and the swap of halves are volume preserving, so the
        log-determinant is exactly 0; it is returned (rather than dropped) so that the
        objective states the change of variables in full."""
        return self.forward(z), jnp.zeros(z.shape[:1], z.dtype)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.forward(z)
