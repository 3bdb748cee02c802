"""Optimiser construction: schedules, weight-decay mask, multipliers, adafactor."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from uvim_givt.training.optim import learning_rate_schedule, make_optimizer, multipliers
from uvim_givt.training.trainer import default_train_config

PARAMS = {"enc": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}},
          "EmbedLabels": {"embedding": jnp.ones((5, 4))},
          "LayerNorm": {"scale": jnp.ones((4,))}}


def _cfg(**kw):
    base = default_train_config().optim.to_dict()  # every key a config has
    base.update(dict(optimizer="adam", lr=0.1, schedule="cosine", warmup_steps=10,
                     warmup_fraction=0.0, b1=0.9,
                     b2=0.95, eps=1e-8, wd=0.0, grad_clip=0.0, lr_mults=[]), **kw)
    return ml_collections.ConfigDict(base)


def test_cosine_schedule_matches_formula():
    sched = learning_rate_schedule(_cfg(), total_steps=110)
    assert float(sched(0)) == 0.0 and math.isclose(float(sched(5)), 0.05, rel_tol=1e-6)
    for step in (10, 40, 77, 110):
        expect = 0.1 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert math.isclose(float(sched(step)), expect, rel_tol=1e-5, abs_tol=1e-8)


def test_weight_decay_only_on_matching_params():
    tx, _ = make_optimizer(_cfg(wd=0.5, warmup_steps=0, schedule="constant"), PARAMS, 10)
    zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    # zero gradients: adam contributes nothing, only decoupled decay (lr * wd * p) moves
    np.testing.assert_allclose(updates["enc"]["Dense_0"]["kernel"], -0.05)
    np.testing.assert_allclose(updates["EmbedLabels"]["embedding"], -0.05)
    np.testing.assert_allclose(updates["enc"]["Dense_0"]["bias"], 0.0)
    np.testing.assert_allclose(updates["LayerNorm"]["scale"], 0.0)


def test_multipliers_first_match_wins():
    m = multipliers(PARAMS, [("^enc/.*kernel$", 0.1), ("^enc/", 0.5)])
    assert m["enc"]["Dense_0"]["kernel"] == 0.1 and m["enc"]["Dense_0"]["bias"] == 0.5
    assert m["LayerNorm"]["scale"] == 1.0


@pytest.mark.parametrize("name", ["adam", "adafactor"])
def test_optimizers_reduce_a_quadratic(name):
    cfg = _cfg(optimizer=name, lr=0.05, warmup_steps=0, schedule="constant", grad_clip=1.0,
               b1=0.9 if name == "adam" else 0.0, b2=0.95 if name == "adam" else 0.8)
    params = {"w": {"kernel": jnp.full((4, 4), 3.0)}}
    tx, _ = make_optimizer(cfg, params, 100)
    state = tx.init(params)
    loss = lambda p: jnp.sum(jnp.square(p["w"]["kernel"]))
    start = float(loss(params))
    for _ in range(50):
        g = jax.grad(loss)(params)
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    assert float(loss(params)) < 0.2 * start


def test_unknown_optimizer_and_schedule():
    with pytest.raises(ValueError, match="unknown optimizer 'sgdx'"):
        make_optimizer(_cfg(optimizer="sgdx"), PARAMS, 10)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate_schedule(_cfg(schedule="step"), 10)
