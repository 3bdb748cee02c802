"""Scanned layer stacks: every ``remat_policy`` computes the unrolled stack's loss and
gradients (rematerialisation changes what is stored, never the maths), and a policy name
is checked where a config names it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import layer_stack
from uvim_givt import schema
from uvim_givt.models.common import REMAT_POLICIES, remat_policy
from uvim_givt.models.vit import Encoder

DEPTH = 3
KW = dict(depth=DEPTH, mlp_dim=32, num_heads=2)


def _unstack(params: dict) -> dict:
    """The scanned stack's parameters (layers on axis 0) as the unrolled ``encoderblock_{i}``."""
    out = {k: v for k, v in params.items() if k != "encoderblock"}
    for i in range(DEPTH):
        out[f"encoderblock_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i],
                                                          params["encoderblock"])
    return out


def _loss_and_grads(model: Encoder, params: dict, x: jax.Array):
    def loss(p):
        return jnp.sum(jnp.sin(model.apply({"params": p}, x)))
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_every_remat_policy_gives_the_unrolled_gradients(policy):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 16))
    scanned = Encoder(**KW, scan=True, remat_policy=policy)
    params = scanned.init(jax.random.PRNGKey(0), x)["params"]
    assert params["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (DEPTH, 16, 32)
    loss, grads = _loss_and_grads(scanned, params, x)
    want_loss, want_grads = _loss_and_grads(Encoder(**KW, scan=False), _unstack(params), x)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    got, want = _unstack(grads), want_grads
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                    strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_remat_policy_names():
    for name in REMAT_POLICIES:
        assert callable(remat_policy(name))
    with pytest.raises(ValueError, match="nothing_savable"):
        remat_policy("nothing_savable")
    x = jnp.zeros((1, 2, 8))
    with pytest.raises(ValueError, match="unknown remat_policy"):
        Encoder(depth=1, mlp_dim=8, num_heads=1, scan=True, remat_policy="dots").init(
            jax.random.PRNGKey(0), x)
    # The config schema's list (written out so that checking a config loads no JAX) is the
    # models' list, and a preset's policy is the published nothing_saveable.
    assert layer_stack(True) == {"scan": True, "remat_policy": "nothing_saveable"}
    for key in ("vae.model.remat_policy", "givt.model.remat_policy"):
        rule = schema.rule_for(key, schema.LIBRARY_RULES)
        assert rule.choices == REMAT_POLICIES
        assert "dots" in rule.check(key, "dots") and key in rule.check(key, "dots")
