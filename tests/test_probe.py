"""Representations and linear probes: decoder block outputs read at the right depth (also
from scanned parameters), and a probe that finds separable classes and nothing else."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evals import probe
from tests.test_sampling_ar import TINY_AR, random_params
from uvim_givt.errors import EvalError
from uvim_givt.models.givt import GIVT
from uvim_givt.models.representations import block_means, unscanned

SCANNED = {**TINY_AR, "num_decoder_layers": 3, "scan": True}


@pytest.fixture(scope="module")
def scanned():
    model = GIVT(**SCANNED)
    return model, random_params(model, seed=2)


def _inputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, TINY_AR["seq_len"], TINY_AR["out_dim"]))
    return x, jnp.array([0, 1, 2, 3], jnp.int32)


def test_unscanned_parameters_give_the_same_model(scanned):
    model, params = scanned
    flat, flat_params = unscanned(model, params)
    assert not flat.scan and "EncDecBlock2" in flat_params["decoder"]
    x, labels = _inputs()
    np.testing.assert_allclose(flat.apply({"params": flat_params}, x, labels),
                               model.apply({"params": params}, x, labels), rtol=1e-5, atol=1e-5)


def test_block_means_come_from_the_right_block(scanned):
    """Changing block 2's weights leaves block 1's output alone and moves blocks 2 and 3."""
    model, params = scanned
    flat, p = unscanned(model, params)
    x, labels = _inputs()
    before = block_means(flat, p, x, labels=labels)
    assert sorted(before) == [1, 2, 3] and before[1].shape == (4, TINY_AR["emb_dim"])
    changed = jax.tree_util.tree_map(lambda a: a, p)
    changed["decoder"]["EncDecBlock1"] = jax.tree_util.tree_map(
        lambda a: a + 0.5, p["decoder"]["EncDecBlock1"])
    after = block_means(flat, changed, x, labels=labels)
    np.testing.assert_array_equal(after[1], before[1])
    for layer in (2, 3):
        assert np.abs(np.asarray(after[layer] - before[layer])).max() > 1e-3
    # The class-blind reading drops the label: another label gives the same features.
    drop = jnp.ones((4,), bool)
    a = block_means(flat, p, x, labels=labels, drop_labels=drop, layers=[3])
    b = block_means(flat, p, x, labels=labels[::-1], drop_labels=drop, layers=[3])
    np.testing.assert_array_equal(a[3], b[3])
    with pytest.raises(ValueError, match="unscan"):
        block_means(model, params, x)


def test_linear_probe_finds_separable_classes_and_nothing_else():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(5, 20))
    y_train, y_test = rng.integers(0, 5, 400), rng.integers(0, 5, 200)
    x_train = centres[y_train] + rng.normal(size=(400, 20))
    x_test = centres[y_test] + rng.normal(size=(200, 20))
    assert probe.linear_probe_accuracy(x_train, y_train, x_test, y_test) == 1.0
    # Labels independent of the features: no better than chance (1/5) by much.
    noise = rng.normal(size=(400, 20)), rng.normal(size=(200, 20))
    assert probe.linear_probe_accuracy(noise[0], y_train, noise[1], y_test) < 0.35
    with pytest.raises(EvalError, match="two classes"):
        probe.linear_probe_accuracy(x_train, np.zeros(400), x_test, y_test)
    with pytest.raises(EvalError, match="blocks 1..3"):
        probe.check_layers([4], 3)
