"""The original UViM VQ-VAE (``vae.kind="vqvae"``): its trees at paper size against the
published ones, the quantiser, the dictionary's moving averages and split rule against NumPy
written from their definitions, the straight-through gradient, the state through the
trainer (exact resume, several devices = one) and the presets' refusals."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests._vq_run import OVERRIDES, run, vq_stage
from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError
from uvim_givt.models import builders
from uvim_givt.models import vqvae as vq
from uvim_givt.training import runner, stages
from uvim_givt.training.checkpoint import load_params

TREES = json.loads((Path(__file__).parent / "data" / "uvim_param_trees.json").read_text())


def _flat(tree) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


# -------------------------------------------------------------------------- the trees
@pytest.mark.parametrize("task,ref", [("panoptic", "uvim_vqvae_coco_panoptic"),
                                      ("depth", "uvim_vqvae_nyu_depth")])
def test_paper_trees_are_the_published_ones(task, ref):
    cfg = config_lib.load_config(f"configs/{task}.py:size=paper,tokens=vq")
    variables = builders.abstract_params("vae", cfg)  # jax.eval_shape: nothing allocated
    params, state = _flat(variables["params"]), _flat(variables["state"])
    assert params == TREES[ref]["params"]
    assert state == TREES[ref]["state"]
    assert sum(math.prod(s) for s in params.values()) == TREES[ref]["num_params"]


# ------------------------------------------------------------------------ the maths
def test_quantize_is_the_nearest_codeword_by_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 5)).astype(np.float32)
    e = rng.normal(size=(11, 5)).astype(np.float32)
    x_q, ids = vq.quantize(jnp.asarray(x), jnp.asarray(e))
    want = np.array([[min(range(11), key=lambda k: np.sum((x[b, t] - e[k]) ** 2))
                      for t in range(7)] for b in range(3)])
    np.testing.assert_array_equal(np.asarray(ids), want)
    np.testing.assert_allclose(np.asarray(x_q), e[want], atol=1e-6)


def test_codewords_are_normalised_sums_over_counts():
    rng = np.random.default_rng(1)
    d, c = rng.normal(size=(6, 4)), rng.uniform(0.5, 3.0, size=6)
    want = (d / c[:, None]) / np.linalg.norm(d / c[:, None], axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(vq.codewords(jnp.asarray(d), jnp.asarray(c))),
                               want, rtol=1e-5)


def test_straight_through_gradient():
    """Forward: the codeword; backward: the identity (d/dx of sum(w * x_q) is w)."""
    rng = np.random.default_rng(2)
    x, e = jnp.asarray(rng.normal(size=(2, 3, 4))), jnp.asarray(rng.normal(size=(5, 4)))
    w = jnp.asarray(rng.normal(size=(2, 3, 4)))
    grad = jax.grad(lambda x: jnp.sum(w * vq.quantize(x, e)[0]))(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w), rtol=1e-6)


def test_moving_averages_of_sums_and_counts_match_numpy():
    rng = np.random.default_rng(3)
    k, dim, m = 6, 3, 0.9
    x = rng.normal(size=(4, 5, dim)).astype(np.float32)
    ids = rng.integers(0, k, size=(4, 5))
    dictionary, counts = rng.normal(size=(k, dim)), rng.uniform(0.1, 2.0, size=k)
    bc, bs = vq.batch_statistics(jnp.asarray(x), jnp.asarray(ids), k)
    d, c = vq.ema_update(jnp.asarray(dictionary), jnp.asarray(counts), bc, bs, m)
    # NumPy from the definition: every code adds itself to its codeword's sum and 1 to
    # its count; the old values are discounted by the momentum
    want_d, want_c = dictionary * m, counts * m
    for b in range(4):
        for t in range(5):
            want_d[ids[b, t]] += x[b, t]
            want_c[ids[b, t]] += 1
    np.testing.assert_allclose(np.asarray(d), want_d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(c), want_c, rtol=1e-6)


def _split_numpy(e, c, min_count):
    """big_vision's rule from its definition, without the jitter: while a count is under
    min_count, the least frequent codeword becomes the most frequent one, both halved."""
    e, c = e.copy(), c.copy()
    while (c < min_count).any():
        i_max, i_min = int(np.argmax(c)), int(np.argmin(c))
        e[i_min] = e[i_max] / 2
        e[i_max] = e[i_max] / 2
        c[i_min] = c[i_max] = c[i_max] / 2
    return e, c


def test_unused_codewords_are_split_from_the_most_frequent():
    rng = np.random.default_rng(4)
    e = rng.normal(size=(4, 3))
    c = np.array([10.0, 0.01, 0.05, 6.0])
    d_new, c_new = vq.split_unused(jnp.asarray(e), jnp.asarray(c), jax.random.PRNGKey(0), 0.1)
    want_e, want_c = _split_numpy(e, c, 0.1)
    np.testing.assert_allclose(np.asarray(c_new), want_c)  # [5, 5, 3, 3]
    assert want_c.tolist() == [5.0, 5.0, 3.0, 3.0]
    # the copies carry a jitter of at most SPLIT_PERTURB; the originals are halved exactly
    np.testing.assert_allclose(np.asarray(d_new), want_e, rtol=vq.SPLIT_PERTURB)
    np.testing.assert_allclose(np.asarray(d_new)[[0, 3]], want_e[[0, 3]], rtol=1e-6)
    assert not np.allclose(np.asarray(d_new)[1], want_e[1], rtol=1e-7, atol=0)
    same, same_c = vq.split_unused(jnp.asarray(e), jnp.ones(4), jax.random.PRNGKey(0), 0.1)
    np.testing.assert_allclose(np.asarray(same), e, rtol=1e-6)  # no count under: unchanged


def test_usage_metrics():
    counts = jnp.asarray([6.0, 2.0, 0.0, 0.0])
    m = {k: float(v) for k, v in vq.usage_metrics(counts).items()}
    p = np.array([0.75, 0.25])
    assert m["codebook_max_ratio"] == 0.75 and m["codebook_zeros_ratio"] == 0.5
    np.testing.assert_allclose(m["codebook_perplexity"], np.exp(-(p * np.log(p)).sum()),
                               rtol=1e-6)


def test_one_hot_patches_and_pixel_layout():
    """Labels become [patches, classes, patch^2] one-hots in row-major patch order, and the
    decoder's per-patch outputs go back to the same pixels."""
    kind, _ = vq_stage()
    model = kind.model  # 32px, patches 8x8, 8 instance classes
    labels = np.random.default_rng(5).integers(0, 8, size=(1, 32, 32, 2)).astype(np.int32)
    variables = jax.jit(lambda k: vq.init_variables(model, k))(jax.random.PRNGKey(0))
    patches = model.apply(variables, jnp.asarray(labels), method=model.one_hot_patches)
    patches = patches["instances"]
    assert patches.shape == (1, 16, 8, 64)
    # patch 5 = row 1, column 1 of the 4x4 grid; its pixel 10 = row 1, column 2 in the patch
    assert int(np.argmax(np.asarray(patches)[0, 5, :, 10])) == labels[0, 9, 10, 1]
    assert float(np.asarray(patches).sum()) == 32 * 32  # one class per pixel
    # the decoder's per-patch outputs go back to the pixels they came from
    y = vq.patches_to_pixels(patches, (4, 4), (8, 8))
    np.testing.assert_array_equal(np.argmax(y, -1)[0], labels[0, ..., 1])


# ---------------------------------------------------------------- the stage and its state
STEPS = 4  # the split rule runs in these steps (dict_momentum 0.5, min_count 0.3)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """STEPS uninterrupted steps on one device, a checkpoint at STEPS / 2."""
    return run(str(tmp_path_factory.mktemp("vq") / "full"), STEPS, ckpt_every=STEPS // 2)


def test_training_updates_the_dictionary_and_resumes_exactly(full_run, tmp_path):
    """STEPS steps at once vs STEPS / 2, a preemption, and a resume: the same parameters,
    dictionary and counts; the dictionary moved (moving averages, not gradients) and the
    split rule kept every count at or above min_count."""
    n = STEPS // 2

    class Crash(Exception):
        pass

    kind, stage = vq_stage()

    def batches(start):
        for step, batch in enumerate(stage.batches(start), start):
            if step == n + 1:
                raise Crash
            yield batch

    from uvim_givt.training.trainer import default_train_config, train
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = STEPS, 1, n, False
    with pytest.raises(Crash):
        train(cfg, str(tmp_path), "vae", dataclasses.replace(stage, batches=batches))
    resumed = run(str(tmp_path), STEPS, ckpt_every=n)
    assert resumed.history[0]["step"] == n + 1  # resumed, not retrained
    for a, b in zip(jax.tree_util.tree_leaves(full_run.params),
                    jax.tree_util.tree_leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    init = kind.init_state(jax.random.split(jax.random.PRNGKey(0))[0])
    assert not np.allclose(np.asarray(full_run.params["state"]["dictionary"]),
                           np.asarray(init["dictionary"]))
    assert float(np.min(full_run.params["state"]["counts"])) >= kind.model.min_count
    # the checkpoint holds the state: what a run's VAE is loaded with
    state, step = load_params(str(tmp_path), "vae", item="state")
    assert step == STEPS
    np.testing.assert_array_equal(np.asarray(state["counts"]),
                                  np.asarray(full_run.params["state"]["counts"]))
    for h in full_run.history:  # codebook usage logged at every step
        assert 0 < h["codebook_max_ratio"] <= 1 and 1 <= h["codebook_perplexity"] <= 16


def test_four_devices_give_the_dictionary_of_one(full_run):
    """The statistics are sums over the global batch: a batch sharded over 4 devices updates
    the dictionary as one device does with the same global batch."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=4"])))
    script = os.path.join(os.path.dirname(__file__), "_vq_run.py")
    out = subprocess.run([sys.executable, script, str(STEPS)], env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    four = json.loads(out.stdout.strip().splitlines()[-1])
    assert four["devices"] == 4 and jax.device_count() == 1
    one = full_run.params["state"]
    np.testing.assert_allclose(four["counts"], np.asarray(one["counts"]), rtol=1e-6)
    # float32 sums in another order: entries up to ~50 agree to a few ulps of that scale
    np.testing.assert_allclose(four["dictionary"], np.asarray(one["dictionary"]),
                               rtol=1e-4, atol=5e-5)


def test_heldout_loss_is_the_training_objective_without_the_update():
    """Without code dropout (random in training, off held-out) the held-out loss of the
    variables is the training objective at the same rng; usage is reported by both."""
    cfg = config_lib.load_config("configs/panoptic.py:tokens=vq",
                                 OVERRIDES + ["vae.model.code_dropout='none'"])
    kind = stages.stage_of(cfg, "vae")
    key = jax.random.PRNGKey(0)
    params, state = kind.init(key), kind.init_state(key)
    batch = next(vq_stage()[1].batches(0))
    a, (pa, new_state) = kind.train_loss(params, state, batch, key)
    b, pb = kind.loss({"params": params, "state": state}, batch, key, False)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    assert set(pa) == set(pb) and "codebook_perplexity" in pb
    assert not np.allclose(np.asarray(new_state["counts"]), np.asarray(state["counts"]))


@pytest.mark.parametrize("override,key", [
    ("vae.model.code_len=15", "vae.model.code_len"),
    ("vae.model.patch_size=(7,7)", "vae.model.patch_size"),
    ("vae.model.dict_size=1", "vae.model.dict_size"),
    ("vae.model.codeword_dim=1", "vae.model.codeword_dim"),
    ("vae.ema_decay=0.9", "vae.ema_decay"),
])
def test_shapes_that_cannot_work_are_refused_naming_the_key(override, key):
    cfg = config_lib.load_config("configs/panoptic.py:tokens=vq", [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        stages.stage_of(cfg, "vae")
        runner.check_config(cfg)


def test_a_givt_stage_2_is_refused_for_discrete_codes():
    """tokens=vq's stage 2 is the VTT; a GIVT asked for on code ids is refused, as is a VTT
    on a VAE's real-valued codes."""
    cfg = config_lib.load_config("configs/panoptic.py:tokens=vq")
    assert type(stages.stage_of(cfg, "givt")).__name__ == "VTTStage"
    cfg.givt.kind = "givt"
    cfg.givt.model = config_lib.load_config("configs/panoptic.py").givt.model
    with pytest.raises(ConfigError, match="givt.kind='vtt'"):
        stages.stage_of(cfg, "givt")
    continuous = config_lib.load_config("configs/panoptic.py")
    continuous.givt.kind = "vtt"
    with pytest.raises(ConfigError, match="vae.kind='vqvae'"):
        stages.stage_of(continuous, "givt")


def test_codebook_collapse_is_said_in_the_log():
    kind, _ = vq_stage()
    fine = [{"step": 5, "codebook_max_ratio": 0.3, "codebook_perplexity": 9.0}]
    collapsed = fine + [{"step": 10, "codebook_max_ratio": 0.97, "codebook_perplexity": 1.1}]
    assert kind.training_warnings(fine) == []
    (line,) = kind.training_warnings(collapsed)
    assert "collapse at step 10" in line and "97%" in line
