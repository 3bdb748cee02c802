"""The generic trainer: learning, resume, multi-device equality, NaN stop, freezing."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from uvim_givt.training.checkpoint import StageCheckpoints, load_params
from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import Stage, TrainingDiverged, default_train_config, train


def _cfg(steps, ckpt_every=100, **optim):
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = steps, 5, ckpt_every, False
    cfg.optim.update(optim)
    return cfg


def test_tiny_givt_learns_toy_distribution(tmp_path):
    result = train(_cfg(150, log_every=10), str(tmp_path), "givt", toy_stage(toy_model()))
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    # Random walks with step 0.1 have ~ -1.4 nats/dim entropy; the start is ~ +2.
    assert last < first - 2.0, (first, last)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 150
    assert (tmp_path / "tensorboard" / "givt").is_dir()


def test_masked_style_learns(tmp_path):
    result = train(_cfg(60), str(tmp_path), "givt", toy_stage(toy_model("masked")))
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 1.0


class _Crash(RuntimeError):
    pass


def _crashing(stage: Stage, at: int) -> Stage:
    def batches(start):
        for step, batch in enumerate(stage.batches(start), start):
            if step == at:
                raise _Crash(f"simulated preemption at step {at}")
            yield batch
    return Stage(stage.init_params, stage.loss_fn, batches)


def test_resume_equals_uninterrupted(tmp_path):
    model, n = toy_model(dec_dropout_rate=0.1), 6
    stage = toy_stage(model)
    full = train(_cfg(2 * n, ckpt_every=n), str(tmp_path / "full"), "givt", stage)
    with pytest.raises(_Crash):
        train(_cfg(2 * n, ckpt_every=n), str(tmp_path / "split"), "givt", _crashing(stage, n + 2))
    assert StageCheckpoints(str(tmp_path / "split"), "givt").latest_step() == n
    resumed = train(_cfg(2 * n, ckpt_every=n), str(tmp_path / "split"), "givt", stage)
    for a, b in zip(jax.tree_util.tree_leaves(full.params),
                    jax.tree_util.tree_leaves(resumed.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    params, step = load_params(str(tmp_path / "split"), "givt")
    assert step == 2 * n


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    stage = toy_stage(toy_model())

    def batches(start):
        for step, batch in enumerate(stage.batches(start), start):
            if step >= 7:
                batch = dict(batch, tokens=batch["tokens"] * np.nan)
            yield batch

    with pytest.raises(TrainingDiverged, match=r"NaN/infinite at step 8.*step 5"):
        train(_cfg(20, ckpt_every=5), str(tmp_path), "givt",
              Stage(stage.init_params, stage.loss_fn, batches))
    assert StageCheckpoints(str(tmp_path), "givt").latest_step() == 5
    params, _ = load_params(str(tmp_path), "givt")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))


def test_lr_multiplier_zero_freezes(tmp_path):
    stage = toy_stage(toy_model())
    init = stage.init_params(jax.random.split(jax.random.PRNGKey(0))[0])
    r = train(_cfg(5, lr_mults=[("EmbedLabels", 0.0), ("EmbedTargets", 0.5)]), str(tmp_path),
              "givt", stage)
    np.testing.assert_array_equal(r.params["EmbedLabels"]["embedding"],
                                  init["EmbedLabels"]["embedding"])
    assert not np.allclose(r.params["EmbedTargets"]["kernel"], init["EmbedTargets"]["kernel"])


def test_four_devices_match_one():
    """Data parallel and FSDP over 4 simulated devices give the 1-device losses, also with
    gradient accumulation (the toy loss has no random draw)."""
    from tests._multidevice_run import losses

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), "--xla_force_host_platform_device_count=4"])))
    script = os.path.join(os.path.dirname(__file__), "_multidevice_run.py")
    out = subprocess.run([sys.executable, script, "dp", "fsdp", "fsdp_accum"], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    four = json.loads(out.stdout.strip().splitlines()[-1])
    assert four["devices"] == 4 and jax.device_count() == 1
    one = losses(fsdp=False)
    np.testing.assert_allclose(four["dp"], one, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(four["fsdp"], one, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(four["fsdp_accum"], one, rtol=2e-4, atol=2e-5)


def test_after_step_sees_every_step_once_across_a_resume(tmp_path):
    """The per-step hook (e.g. the VAE's EMA) fires for steps 1..N, the last included, and
    a resumed run picks up at the step after its checkpoint."""
    import dataclasses
    seen, n = [], 6
    stage = dataclasses.replace(toy_stage(toy_model()),
                                after_step=lambda params, step: seen.append(step))
    with pytest.raises(_Crash):
        train(_cfg(2 * n, ckpt_every=n), str(tmp_path), "givt",
              dataclasses.replace(_crashing(stage, n + 2), after_step=stage.after_step))
    assert seen == list(range(1, n + 3))
    seen.clear()
    train(_cfg(2 * n, ckpt_every=n), str(tmp_path), "givt", stage)
    assert seen == list(range(n + 1, 2 * n + 1))


def test_warm_start_applies_to_fresh_runs_only(tmp_path):
    """warm_start replaces freshly initialised values (frozen here by lr 0, so they must come
    out unchanged) and is not called again when a run resumes."""
    import dataclasses
    calls = []

    def warm(params):
        calls.append(1)
        emb = params["EmbedLabels"]["embedding"]
        return {**params, "EmbedLabels": {"embedding": np.full(emb.shape, 0.25, np.float32)}}

    stage = dataclasses.replace(toy_stage(toy_model()), warm_start=warm)
    cfg = _cfg(4, ckpt_every=2, lr_mults=[("EmbedLabels", 0.0)])
    r = train(cfg, str(tmp_path), "givt", stage)
    np.testing.assert_array_equal(r.params["EmbedLabels"]["embedding"], 0.25)
    assert calls == [1]
    cfg.total_steps = 6
    train(cfg, str(tmp_path), "givt", stage)  # resumes from step 4
    assert calls == [1]
