"""Label maps with value channels (colorization's RGB) next to class channels: the features
the label VAEs read, their patches, and the reconstruction loss, against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvim_givt.models import label_maps, vae_losses
from uvim_givt.models.vit_vae import ViTVAE
from uvim_givt.models.vqvae import VQVAE, init_variables

CLASSES = {"semantics": (3, 5)}
VALUES = {"color": (0, 3)}


def _labels(seed: int = 0, b: int = 2, h: int = 8, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((b, h, w, 4), np.float32)
    x[..., :3] = rng.uniform(-1, 1, (b, h, w, 3))
    x[..., 3] = rng.integers(0, 5, (b, h, w))
    return x


def test_features_are_one_hot_classes_and_raw_values():
    x = _labels()
    f = label_maps.features(jnp.asarray(x), CLASSES, VALUES)
    assert list(f) == ["color", "semantics"]  # name order, as big_vision's inputs dict
    np.testing.assert_array_equal(np.asarray(f["color"]), x[..., :3])
    np.testing.assert_array_equal(np.asarray(f["semantics"]),
                                  np.eye(5, dtype=np.float32)[x[..., 3].astype(int)])
    assert label_maps.depth_of(CLASSES, VALUES) == 4
    assert label_maps.dummy((8, 8), CLASSES, VALUES).dtype == jnp.float32
    assert label_maps.dummy((8, 8), CLASSES, {}).dtype == jnp.int32
    assert label_maps.check({"a": (0, 2)}, {"a": (1, 3)}) == [
        "['a'] are both class and value channels"]


def test_vqvae_patches_of_a_value_channel():
    model = VQVAE(label_channels=CLASSES, value_channels=VALUES, input_size=(8, 8),
                  patch_size=(4, 4), width=16, depth=1, decoder_depth=1, mlp_dim=32,
                  num_heads=2, code_len=4, codeword_dim=4, dict_size=8)
    x = _labels()
    patches = model.one_hot_patches(jnp.asarray(x))
    # brute force: patch (r, c) holds pixel (4r + i, 4c + j) at position 4i + j
    want = np.zeros((2, 4, 3, 16), np.float32)
    for r in range(2):
        for c in range(2):
            for i in range(4):
                for j in range(4):
                    want[:, 2 * r + c, :, 4 * i + j] = x[:, 4 * r + i, 4 * c + j, :3]
    np.testing.assert_array_equal(np.asarray(patches["color"]), want)
    variables = init_variables(model, jax.random.PRNGKey(0))
    assert variables["params"]["embedding_color"]["kernel"].shape == (3, 16, 16)
    assert variables["params"]["head_color"]["kernel"].shape == (16, 3, 16)
    logits, _ = model.apply(variables, jnp.asarray(x), jnp.zeros((2, 8, 8, 3)))
    assert logits["color"].shape == (2, 8, 8, 3) and logits["semantics"].shape == (2, 8, 8, 5)


def test_vit_vae_reads_and_outputs_values():
    model = ViTVAE(label_channels={}, value_channels=VALUES, input_size=(8, 8),
                   patch_size=(4, 4), width=16, depth=1, decoder_depth=1, mlp_dim=32,
                   num_heads=2, code_len=4, codeword_dim=4, scan=False, head_zeroinit=False)
    x = jnp.asarray(_labels()[..., :3])
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert params["embedding"]["kernel"].shape == (4, 4, 3, 16)
    logits, _ = model.apply({"params": params}, x)
    assert set(logits) == {"color"} and logits["color"].shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="no label or value channel"):
        ViTVAE(label_channels={}, input_size=(8, 8), patch_size=(4, 4)).init(
            jax.random.PRNGKey(0), x)


def test_reconstruction_loss_adds_mse_of_values_to_xent_of_classes():
    x = _labels(1)
    rng = np.random.default_rng(2)
    logits = {"color": rng.normal(size=(2, 8, 8, 3)).astype(np.float32),
              "semantics": rng.normal(size=(2, 8, 8, 5)).astype(np.float32)}
    rec, parts = vae_losses.label_xent(
        {k: jnp.asarray(v) for k, v in logits.items()}, jnp.asarray(x),
        label_channels=CLASSES, value_channels=VALUES)
    mse = np.mean((logits["color"] - x[..., :3]) ** 2)
    z = logits["semantics"] - logits["semantics"].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    xent = -np.mean(np.take_along_axis(logp, x[..., 3:].astype(int), -1))
    np.testing.assert_allclose(float(parts["mse/color"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(parts["mse"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(parts["xent"]), xent, rtol=1e-5)
    np.testing.assert_allclose(float(rec), mse + xent, rtol=1e-5)
    only_values, parts = vae_losses.label_xent(
        {"color": jnp.asarray(logits["color"])}, jnp.asarray(x[..., :3]), label_channels={},
        value_channels=VALUES)
    assert "xent" not in parts
    np.testing.assert_allclose(float(only_values), mse, rtol=1e-5)
