"""The one generic training loop, for every stage of every task.

A stage plugs in a :class:`Stage`: how to initialise parameters, the loss, and
the batches from a given step on. The loop owns everything else: optimiser,
device mesh and shardings, orbax checkpoints (restarting the same command
resumes from the latest one with the same data order and random streams),
metrics.jsonl + TensorBoard, a progress bar, periodic evaluation, and a stop
with a clear message when the loss stops being finite (the last good
checkpoint is left intact, since a checkpoint is only written after every loss
since the previous one was checked).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from uvim_givt.errors import DataError, Preempted, TrainingDiverged  # noqa: F401 (TrainingDiverged re-exported)
from uvim_givt.training import sharding
from uvim_givt.training.checkpoint import StageCheckpoints
from uvim_givt.training.metrics import MetricsWriter, progress_interval
from uvim_givt.training.optim import global_norm, make_optimizer

Batch = dict[str, np.ndarray]
LossFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]




@dataclasses.dataclass
class Stage:
    """What a task plugs into the loop for one stage.

    init_params: key -> parameter pytree.
    loss_fn: (params, batch, key) -> (scalar loss, dict of scalar metrics). Pure
      and jittable; the key is different at every step (folded from the step).
    batches: start_step -> iterator of host-local batches (dicts of numpy
      arrays). Must be deterministic: the batch of step s is the same whether
      or not the run was restarted (e.g. a seeded shuffle and ``skip``).
    evaluate: optional (params, step) -> dict of metrics (empty when nothing is
      due), called on the host after every step but the last (the evaluation
      after training is the caller's, on the returned parameters).
    frozen: optional pytree of arrays the loss reads but never trains (e.g. the
      stage-1 VAE in stage 2); then ``loss_fn(params, batch, key, frozen)``.
      It is a jit argument (replicated, or sharded with FSDP), not a constant.
    after_step: optional (params, step) -> None, called on the host after every
      step, the last one included, once that step's checkpoint (if any) is
      written (e.g. an EMA of the parameters, saved on the same schedule).
    warm_start: optional params -> params, applied on the host to freshly
      initialised parameters (never on resume), e.g. to load a pretrained encoder.
    init_state: optional key -> pytree of state the stage updates itself, not by gradient
      (a VQ dictionary learnt by moving averages). Then
      ``loss_fn(params, batch, key, state[, frozen]) -> (loss, (metrics, new_state))``;
      the new state is the next step's, checkpointed with the parameters (item ``state``)
      and restored on resume; ``evaluate``, ``after_step`` and ``TrainResult.params`` see
      the variables ``{"params": params, "state": state}``.
    """

    init_params: Callable[[jax.Array], Any]
    loss_fn: LossFn
    batches: Callable[[int], Iterator[Batch]]
    evaluate: Callable[[Any, int], dict[str, float]] | None = None
    frozen: Any = None
    after_step: Callable[[Any, int], None] | None = None
    warm_start: Callable[[Any], Any] | None = None
    init_state: Callable[[jax.Array], Any] | None = None


@dataclasses.dataclass
class TrainResult:
    params: Any
    step: int
    num_params: int
    train_time_s: float
    history: list[dict[str, float]]


def count_params(params: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def default_train_config() -> ml_collections.ConfigDict:
    """The ``train`` group every stage config carries (values are tiny-run defaults).

    ``optim`` (built by ``optim.make_optimizer``): ``optimizer`` adam | adafactor (optax's,
    ``b2`` its decay exponent, ``b1`` a trace) | big_vision_adafactor (its keys are the
    ``big_vision_adafactor`` group, big_vision's ``scale_by_adafactor`` arguments with its
    defaults; ``b1``, ``b2``, ``eps`` are then unused); ``wd`` applies to parameters whose
    path matches ``wd_pattern`` (re.search), multiplied per ``wd_mode``: "lr_scaled" by the
    learning rate (peak x schedule x lr_mults, AdamW) or "schedule_scaled" by the schedule's
    0..1 shape only (big_vision). ``grad_clip`` is a global-norm clip (0: none)."""
    return ml_collections.ConfigDict(dict(
        total_steps=100, batch_size=32, seed=0,
        log_every=10, ckpt_every=100, keep_ckpts=2,
        fsdp=False, progress=True,
        optim=dict(optimizer="adam", lr=1e-3, schedule="cosine", warmup_steps=0,
                   warmup_fraction=0.1, b1=0.9, b2=0.95, eps=1e-8, wd=1e-4,
                   wd_pattern=r"(kernel|embedding)$", wd_mode="lr_scaled", grad_clip=1.0,
                   lr_mults=[],
                   big_vision_adafactor=dict(decay_rate=0.8, decay_offset=0, beta2_cap=0.999,
                                             min_dim_size_to_factor=32, clipping_threshold=0.0,
                                             momentum=0.9, momentum_dtype="bfloat16",
                                             eps=1e-30)),
    ))


class _TermSignal:
    """SIGTERM (what schedulers send before preempting a job) noted, not obeyed at once:
    the loop finishes its step, saves and exits. Installed in the main thread only. With
    several processes, all must stop at the same step (a checkpoint is collective): they
    agree at logging steps."""

    def __init__(self) -> None:
        self._got = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self._got = True

    def received(self, log_step: bool) -> bool:
        if jax.process_count() == 1:
            return self._got
        if not log_step:
            return False
        flags = multihost_utils.process_allgather(np.int32(self._got))
        return bool(np.max(flags))

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def train(cfg: ml_collections.ConfigDict, run_dir: str, stage_name: str, stage: Stage,
          meta: dict[str, Any] | None = None) -> TrainResult:
    """Trains ``stage`` per ``cfg`` (a ``train`` group) into ``run_dir``; resumes if possible."""
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh()
    total = int(cfg.total_steps)
    base_key = jax.random.PRNGKey(int(cfg.seed))
    init_key, step_key = jax.random.split(base_key)

    abstract_params = jax.eval_shape(stage.init_params, init_key)
    tx, schedule = make_optimizer(cfg.optim, abstract_params, total)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    params_sh = sharding.tree_shardings(abstract_params, mesh, cfg.fsdp)
    opt_sh = sharding.tree_shardings(abstract_opt, mesh, cfg.fsdp)
    repl = sharding.replicated(mesh)
    stateful = stage.init_state is not None
    # The state (small: a dictionary and its counts) is replicated: every device updates
    # it from the same global-batch statistics.
    abstract_state = jax.eval_shape(stage.init_state, init_key) if stateful else None
    state_sh = jax.tree_util.tree_map(lambda _: repl, abstract_state) if stateful else None

    def variables(params, state):
        return {"params": params, "state": state} if stateful else params

    ckpt = StageCheckpoints(run_dir, stage_name, keep=int(cfg.keep_ckpts))

    def with_sh(tree, shs):
        return jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shs)

    restored = ckpt.restore_latest(with_sh(abstract_params, params_sh),
                                   with_sh(abstract_opt, opt_sh),
                                   with_sh(abstract_state, state_sh) if stateful else None)
    prior_time = 0.0
    if restored is None:
        init = jax.jit(lambda k: (lambda p: (p, tx.init(p)))(stage.init_params(k)),
                       out_shardings=(params_sh, opt_sh))
        params, opt_state = init(init_key)
        state = (jax.jit(stage.init_state, out_shardings=state_sh)(init_key) if stateful
                 else None)
        if stage.warm_start is not None:
            params = jax.device_put(stage.warm_start(params), params_sh)
            opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
        start = 0
    else:
        start, params, opt_state, saved_meta, state = restored
        prior_time = float(saved_meta.get("train_time_s", 0.0))
        if start >= total:
            ckpt.close()
            return TrainResult(variables(params, state), start, count_params(params),
                               prior_time, [])

    frozen = stage.frozen
    frozen_sh = None
    if frozen is not None:
        frozen_sh = sharding.tree_shardings(frozen, mesh, cfg.fsdp)
        frozen = jax.device_put(frozen, frozen_sh)

    def train_step(params, opt_state, state, bad_step, batch, step, frozen):
        key = jax.random.fold_in(step_key, step)
        extra = () if frozen is None else (frozen,)
        if stateful:
            (loss, (metrics, state)), grads = jax.value_and_grad(stage.loss_fn, has_aux=True)(
                params, batch, key, state, *extra)
        else:
            (loss, metrics), grads = jax.value_and_grad(stage.loss_fn, has_aux=True)(
                params, batch, key, *extra)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss)
        bad_step = jnp.where((bad_step < 0) & ~finite, step, bad_step)
        metrics = dict(metrics, loss=loss, grad_norm=global_norm(grads), lr=schedule(step))
        return params, opt_state, state, bad_step, metrics

    batch_sh = sharding.batch_sharding(mesh)
    step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2),
                      in_shardings=(params_sh, opt_sh, state_sh, repl, batch_sh, repl,
                                    frozen_sh),
                      out_shardings=(params_sh, opt_sh, state_sh, repl, repl))

    writer = MetricsWriter(run_dir, stage_name, enabled=jax.process_index() == 0,
                           resume_from=start)
    bad_step = jax.device_put(jnp.array(-1, jnp.int32), repl)
    pending: list[dict[str, jax.Array]] = []
    history: list[dict[str, float]] = []
    last_saved = start
    t0 = time.time()
    log_t, log_step = t0, start
    bar = tqdm(total=total, initial=start, desc=stage_name, dynamic_ncols=True,
               mininterval=progress_interval(),
               disable=not cfg.progress or jax.process_index() != 0)
    meta = dict(meta or {})

    def check_finite(step: int) -> None:
        bad = int(bad_step)
        if bad >= 0:
            where = (f"step {last_saved} in {ckpt.directory}" if last_saved > 0
                     else "none (no checkpoint was written before)")
            raise TrainingDiverged(
                f"{stage_name}: the loss became NaN/infinite at step {bad + 1}. Training "
                f"stopped without saving; last good checkpoint: {where}. Lower the learning "
                "rate, check the inputs, or enable gradient clipping (train.optim.grad_clip).")

    def save(step: int) -> None:
        nonlocal last_saved
        check_finite(step)
        elapsed = prior_time + time.time() - t0
        ckpt.save(step, params, opt_state, dict(meta, step=step, train_time_s=elapsed), state)
        last_saved = step

    stop = _TermSignal()
    try:
        batches = stage.batches(start)
        for step in range(start, total):
            try:
                host_batch = next(batches)
            except StopIteration as e:
                if step == start:  # nothing at all: an empty split, not a pipeline bug
                    raise DataError(f"{stage_name}: the training data gave no batch of "
                                    f"{int(cfg.batch_size)} examples (is the split empty or "
                                    "smaller than one batch?)") from None
                raise RuntimeError(f"{stage_name}: the data ran out at step {step}") from e
            batch = sharding.global_batch(host_batch, mesh)
            params, opt_state, state, bad_step, metrics = step_fn(
                params, opt_state, state, bad_step, batch, jnp.asarray(step, jnp.int32),
                frozen)
            pending.append(metrics)
            done = step + 1
            bar.update(1)
            if done % int(cfg.log_every) == 0 or done == total:
                check_finite(done)
                means = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
                now = time.time()
                means["steps_per_s"] = (done - log_step) / max(now - log_t, 1e-9)
                log_t, log_step = now, done
                pending.clear()
                writer.write(done, means)
                history.append(dict(means, step=done))
                bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
            if done % int(cfg.ckpt_every) == 0 or done == total:
                save(done)
            if stage.after_step is not None:
                stage.after_step(variables(params, state), done)
            if stage.evaluate is not None and done < total:
                results = stage.evaluate(variables(params, state), done)
                if results:
                    writer.write(done, {f"eval/{k}": v for k, v in results.items()})
            if done < total and stop.received(done % int(cfg.log_every) == 0):
                # Preemption: what was trained is kept (the checkpoint at this step, the
                # metrics of the steps since the last row), then the command exits.
                if pending:
                    writer.write(done, {k: float(np.mean([float(m[k]) for m in pending]))
                                        for k in pending[0]})
                    pending.clear()
                if last_saved != done:
                    save(done)
                ckpt.wait()
                raise Preempted(f"{stage_name}: stopped by SIGTERM after step {done} of "
                                f"{total}; checkpoint step {done} saved in {ckpt.directory}. "
                                "Rerun the same command to resume")
    finally:
        stop.restore()
        bar.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    return TrainResult(variables(params, state), total, count_params(params),
                       prior_time + time.time() - t0, history)
