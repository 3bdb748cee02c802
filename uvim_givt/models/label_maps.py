"""What the label VAEs (ViT VAE, VQ-VAE) read: a task's label map split into named channels.

A *class* channel (``label_channels``: name -> (index in the label map, number of classes))
holds an int class per pixel and enters the model one-hot; its outputs are logits and its
loss the cross-entropy (panoptic semantics and instances, depth bins). A *value* channel
(``value_channels``: name -> (first index in the label map, number of values)) holds real
values per pixel (colorization's RGB in [-1, 1]) and enters as it is; its outputs are the
values and its loss the squared error, as big_vision's colorization task. Channels are laid
out in name order, as big_vision iterates its ``inputs`` dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax.core import FrozenDict

Channels = Mapping[str, tuple[int, int]]


def frozen(channels: Channels | None) -> FrozenDict:
    """Hashable, JSON-friendly channels (lists from a JSON config -> int tuples)."""
    return FrozenDict({str(k): tuple(int(i) for i in v) for k, v in (channels or {}).items()})


def check(label_channels: Channels, value_channels: Channels) -> list[str]:
    """Problems of a channel layout (empty, a name in both, overlapping value slices)."""
    out = []
    if not label_channels and not value_channels:
        out.append("no label or value channel")
    both = sorted(set(label_channels) & set(value_channels))
    if both:
        out.append(f"{both} are both class and value channels")
    return out


def order(label_channels: Channels, value_channels: Channels) -> tuple[str, ...]:
    """Channel names in their layout order (alphabetical, as big_vision)."""
    return tuple(sorted({*label_channels, *value_channels}))


def width(name: str, label_channels: Channels, value_channels: Channels) -> int:
    """Features of a channel: its classes (one-hot) or its values."""
    return (label_channels[name] if name in label_channels else value_channels[name])[1]


def depth_of(label_channels: Channels, value_channels: Channels) -> int:
    """Channels of the label map that holds them all."""
    ends = [i + 1 for i, _ in label_channels.values()]
    ends += [i + n for i, n in value_channels.values()]
    return max(ends)


def dtype_of(value_channels: Channels) -> jnp.dtype:
    """The label map's dtype: float32 when it holds values, else int32 classes."""
    return jnp.float32 if value_channels else jnp.int32


def features(labels: jax.Array, label_channels: Channels, value_channels: Channels
             ) -> dict[str, jax.Array]:
    """Label map [..., C] -> {name: float features [..., width]}: one-hot classes, values."""
    out = {}
    for name in order(label_channels, value_channels):
        if name in label_channels:
            index, n = label_channels[name]
            out[name] = jax.nn.one_hot(labels[..., index].astype(jnp.int32), n,
                                       dtype=jnp.float32)
        else:
            start, n = value_channels[name]
            out[name] = labels[..., start:start + n].astype(jnp.float32)
    return out


def dummy(input_size: tuple[int, ...], label_channels: Channels, value_channels: Channels,
          batch: int = 1) -> jax.Array:
    """Zeros shaped and typed as a batch of label maps (for init)."""
    return jnp.zeros((batch, *input_size, depth_of(label_channels, value_channels)),
                     dtype_of(value_channels))
