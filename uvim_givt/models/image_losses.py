"""Extra stage-1 losses of the CNN (image) VAE: PatchGAN discriminator and VGG perceptual loss.

* :class:`PatchDiscriminator`: a small PatchGAN (strided 4x4 convs, GroupNorm,
  leaky ReLU) giving one real/fake logit per image patch; trained with the hinge
  loss against the VAE's reconstructions.
* :class:`VGGFeatures` + :func:`load_vgg16_weights` + :func:`perceptual_distance`:
  an LPIPS-style distance (unit-normalised VGG16 activations at the end of each
  block, squared differences summed over channels, averaged over positions,
  summed over blocks) without LPIPS' learned per-channel weights. The VGG16
  weights come from a file the user gives (Keras' ``vgg16_weights_tf_dim_ordering_
  tf_kernels_notop.h5`` or an ``.npz`` with ``block1_conv1/kernel`` ... keys);
  nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uvim_givt.errors import ConfigError

# ------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
    """Images [B, H, W, 3] in [-1, 1] -> patch logits [B, h, w, 1]."""

    filters: int = 64
    num_layers: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.leaky_relu(nn.Conv(self.filters, (4, 4), strides=(2, 2))(x), 0.2)
        width = self.filters
        for i in range(1, self.num_layers):
            width = self.filters * min(2 ** i, 8)
            x = nn.Conv(width, (4, 4), strides=(2, 2) if i < self.num_layers - 1 else (1, 1),
                        use_bias=False)(x)
            x = nn.leaky_relu(nn.GroupNorm(num_groups=min(32, width // 4))(x), 0.2)
        return nn.Conv(1, (4, 4))(x)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return jnp.mean(nn.relu(1.0 - logits_real)) + jnp.mean(nn.relu(1.0 + logits_fake))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator hinge loss: -mean(D(fake))."""
    return -jnp.mean(logits_fake)


# ----------------------------------------------------------------------- perceptual loss

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# Keras' "caffe" preprocessing of VGG16: BGR order, ImageNet mean subtracted, 0..255 scale.
_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


class PerceptualWeightsError(ConfigError):
    """A perceptual-loss weights file that is missing or not VGG16's."""


def vgg16_layer_names() -> list[str]:
    return [f"block{b + 1}_conv{i + 1}" for b, (_, n) in enumerate(VGG16_BLOCKS)
            for i in range(n)]


class VGGFeatures(nn.Module):
    """VGG16's convolutional trunk; returns the activations at the end of each block."""

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        x = (images + 1.0) * 127.5
        x = x[..., ::-1] - _BGR_MEAN
        feats = []
        for b, (width, n) in enumerate(VGG16_BLOCKS):
            for i in range(n):
                x = nn.relu(nn.Conv(width, (3, 3), name=f"block{b + 1}_conv{i + 1}")(x))
            feats.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return feats


def load_vgg16_weights(path: str) -> dict[str, Any]:
    """VGG16 conv weights from Keras' h5 (legacy layout) or an npz -> VGGFeatures params."""
    if not path:
        raise PerceptualWeightsError(
            "the perceptual loss is enabled (vae.perceptual.weight > 0) but no weights file is "
            "given: set vae.perceptual.weights=PATH (Keras' vgg16_weights_tf_dim_ordering_tf_"
            "kernels_notop.h5 or an .npz); nothing is downloaded. Or set vae.perceptual.weight=0")
    if not os.path.isfile(path):
        raise PerceptualWeightsError(f"perceptual-loss weights file {path} not found")
    params: dict[str, Any] = {}
    try:
        if path.endswith(".npz"):
            with np.load(path) as z:
                for name in vgg16_layer_names():
                    params[name] = {"kernel": z[f"{name}/kernel"], "bias": z[f"{name}/bias"]}
        else:
            import h5py
            with h5py.File(path, "r") as f:
                root = f["model_weights"] if "model_weights" in f else f
                for name in vgg16_layer_names():
                    g = root[name]
                    names = [n.decode() if isinstance(n, bytes) else str(n)
                             for n in g.attrs["weight_names"]]
                    arrays = {n: np.asarray(g[n]) for n in names}
                    kernel = next(v for n, v in arrays.items() if "kernel" in n or "_W" in n)
                    bias = next(v for n, v in arrays.items() if "bias" in n or "_b" in n)
                    params[name] = {"kernel": kernel, "bias": bias}
    except (KeyError, OSError, StopIteration, ValueError) as e:
        raise PerceptualWeightsError(
            f"{path} is not a VGG16 weights file this loader knows (Keras h5 with layers "
            f"block1_conv1..block5_conv3, or .npz with <layer>/kernel and <layer>/bias): "
            f"{e!r}") from None
    target = jax.eval_shape(lambda: VGGFeatures().init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"])
    for name, t in target.items():
        for k in ("kernel", "bias"):
            if tuple(params[name][k].shape) != tuple(t[k].shape):
                raise PerceptualWeightsError(
                    f"{path}: {name}/{k} has shape {params[name][k].shape}, VGG16 needs "
                    f"{t[k].shape}")
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def perceptual_distance(vgg_params: Any, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS-style distance per example [B] between images in [-1, 1]."""
    net = VGGFeatures()
    fa = net.apply({"params": vgg_params}, a)
    fb = net.apply({"params": vgg_params}, b)
    total = jnp.zeros((a.shape[0],), jnp.float32)
    for x, y in zip(fa, fb, strict=True):
        x = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)
        y = y / (jnp.linalg.norm(y, axis=-1, keepdims=True) + 1e-10)
        total = total + jnp.mean(jnp.sum(jnp.square(x - y), axis=-1), axis=(1, 2))
    return total
