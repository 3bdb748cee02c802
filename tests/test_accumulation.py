"""Gradient accumulation (``train.grad_accum``): one step in micro-batches is the step of the
whole batch: the loss, metrics and gradient of a stage-1 and a stage-2 kind, and through the
training loop, the parameters after the update for a loss normalised by a count that varies
between micro-batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError
from uvim_givt.models import vae_losses
from uvim_givt.training import runner, stages
from uvim_givt.training.optim import global_norm
from uvim_givt.training.trainer import (
    Stage,
    accumulated_value_and_grad,
    default_train_config,
    train,
)

# A small panoptic config with every random draw of training off (no dropout, no input
# noise, stage 2 on the posterior means), so that the whole batch and its micro-batches
# see the same function.
SMALL = ["givt.input_noise=0.0", "givt.posterior='mean'", "vae.model.depth=1",
         "vae.model.decoder_depth=1", "vae.model.width=32", "vae.model.mlp_dim=64",
         "givt.model.num_layers=1", "givt.model.emb_dim=32", "givt.model.mlp_dim=64",
         "givt.model.stem=()", "givt.model.stem_strides=()"]
BATCH = 8


def _train_cfg(accum: int):
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = 1, 1, 100, False
    cfg.grad_accum, cfg.batch_size = accum, BATCH
    # Adam with a large eps: its first update is ~ lr * g / eps, so the parameters after the
    # step show the gradient itself (with eps ~ 0 it would be lr * sign(g) whatever its size)
    cfg.optim.update(lr=1e-2, eps=10.0, wd=0.0, grad_clip=0.0, schedule="constant")
    return cfg


def _one_step(tmp_path, name: str, stage: Stage, accum: int):
    result = train(_train_cfg(accum), str(tmp_path / name), "stage", stage)
    return result.params, result.history[0]


def _assert_same_step(whole, micro):
    (p1, h1), (p4, h4) = whole, micro
    assert set(h1) == set(h4)
    for k in h1:
        if k not in ("steps_per_s",):
            np.testing.assert_allclose(h4[k], h1[k], rtol=1e-5, atol=1e-7, err_msg=k)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1),
                            jax.tree_util.tree_leaves(p4), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=2e-7,
                                   err_msg=jax.tree_util.keystr(path))


def _batches(batch):
    def batches(start):
        while True:
            yield batch
    return batches


def _labels(cfg, rng):
    size = int(cfg.data.image_size)
    classes = [n for _, n in sorted(stages.stage_of(cfg, "vae").channels.values())]
    return np.stack([rng.integers(0, n, (BATCH, size, size)) for n in classes],
                    -1).astype(np.int32)


def _random_params(init, seed: int):
    """Parameters of ``init``'s shapes, drawn without compiling it (a few seconds saved);
    LayerNorm-style scales near 1."""
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(
            rng.normal(0.0, 0.05, x.shape) + ("scale" in jax.tree_util.keystr(path)),
            x.dtype), shapes)


def _assert_same_grads(loss_fn, params, batch, *extra):
    """The whole batch and 4 micro-batches: the same loss, metrics and gradient."""
    key = jax.random.PRNGKey(0)
    whole = jax.jit(accumulated_value_and_grad(loss_fn, 1))(params, batch, key, *extra)
    micro = jax.jit(accumulated_value_and_grad(loss_fn, 4))(params, batch, key, *extra)
    (l1, m1, g1), (l4, m4, g4) = whole, micro
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-5)
    assert set(m1) == set(m4)
    for k in m1:
        np.testing.assert_allclose(float(m4[k]), float(m1[k]), rtol=1e-5, err_msg=k)
    norm = float(global_norm(g1))
    assert norm > 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1),
                            jax.tree_util.tree_leaves(g4), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * norm,
                                   err_msg=jax.tree_util.keystr(path))
    return m1


def test_stage_1_in_micro_batches_equals_the_whole_batch(monkeypatch):
    # The ViT VAE's one random draw, its posterior sample, set to the mean: both sides then
    # compute the same objective (cross-entropy per example + beta KL, batch means).
    monkeypatch.setattr(vae_losses, "reparametrize", lambda mu, logvar, rng: mu)
    cfg = config_lib.load_config("configs/panoptic.py", SMALL + ["vae.beta=0.01"])
    kind = stages.stage_of(cfg, "vae")
    stage = runner.vae_stage(None, cfg, lambda: None)
    batch = {"labels": _labels(cfg, np.random.default_rng(0))}
    metrics = _assert_same_grads(stage.loss_fn, _random_params(kind.init, 1), batch)
    assert metrics["kl"] > 0


def test_stage_2_in_micro_batches_equals_the_whole_batch():
    # The stage-1 posterior given as cached codes (training/code_cache.py): the GIVT alone
    # is compiled, twice.
    cfg = config_lib.load_config("configs/panoptic.py", SMALL)
    kind = stages.stage_of(cfg, "givt")
    rng = np.random.default_rng(1)
    size = int(cfg.data.image_size)
    code = (int(cfg.vae.model.code_len), int(cfg.vae.model.codeword_dim))
    batch = {"image": rng.uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32),
             stages.CODE_MU: rng.normal(size=(BATCH, *code)).astype(np.float32),
             stages.CODE_LOGVAR: rng.normal(-2, 0.1, (BATCH, *code)).astype(np.float32)}
    _assert_same_grads(lambda p, b, k: kind.loss(p, b, k, True),
                       _random_params(kind.init, 4), batch)


def test_weighted_losses_combine_as_the_whole_batch(tmp_path):
    """A loss that is a ratio over the batch (weighted squared errors / total weight, as a
    masked GIVT's NLL over its masked tokens) reports its weight; micro-batches of unequal
    weight then give the whole batch's loss, metrics and gradient."""
    rng = np.random.default_rng(2)
    batch = {"x": rng.normal(size=(BATCH, 3)).astype(np.float32),
             "y": rng.normal(size=(BATCH,)).astype(np.float32),
             # row i goes to micro-batch i % 4: their total weights are 0.5, 3, 6 and 10
             "w": np.array([0.5, 1, 2, 4, 0, 2, 4, 6], np.float32)}
    seen = []

    def loss_fn(params, b, key):
        seen.append(b["x"].shape[0])
        err = jnp.square(b["x"] @ params["w"] - b["y"])
        total = jnp.sum(b["w"])
        mse = jnp.sum(b["w"] * err) / total
        return mse, {"mse": mse, "weight/mse": total, "weight/loss": total,
                     "mean_y": jnp.mean(b["y"])}  # an example mean: no weight

    stage = Stage(lambda k: {"w": jnp.array([0.3, -0.2, 0.5])}, loss_fn, _batches(batch))
    whole = _one_step(tmp_path, "whole", stage, 1)
    micro = _one_step(tmp_path, "micro", stage, 4)
    assert seen == [BATCH, BATCH // 4]  # traced once per setting, on micro-batches of 2
    np.testing.assert_allclose(whole[1]["mean_y"], batch["y"].mean(), rtol=1e-6)
    _assert_same_step(whole, micro)


def test_batch_size_must_split_into_micro_batches(tmp_path):
    cfg = config_lib.load_config("configs/panoptic.py", ["givt.train.grad_accum=3"])
    with pytest.raises(ConfigError, match=r"givt.train.batch_size=32 is not a multiple of "
                                          r"givt.train.grad_accum=3"):
        runner.check_config(cfg)
    stage = Stage(lambda k: {"w": jnp.zeros(2)},
                  lambda p, b, k: (jnp.sum(p["w"]), {}), _batches({"x": np.zeros((6, 2))}))
    with pytest.raises(ConfigError, match=r"stage.train.grad_accum=4: a batch of 6 does not "
                                          r"split into 4 micro-batches"):
        train(_train_cfg(4), str(tmp_path), "stage", stage)
