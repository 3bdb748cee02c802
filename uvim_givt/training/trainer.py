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
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from uvim_givt.errors import (
    ConfigError,
    DataError,
    Preempted,
    TrainingDiverged,  # noqa: F401 (raised here; re-exported)
)
from uvim_givt.training import sharding
from uvim_givt.training.checkpoint import StageCheckpoints
from uvim_givt.training.metrics import MetricsWriter, progress_interval
from uvim_givt.training.optim import global_norm, make_optimizer

Batch = dict[str, np.ndarray]
LossFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

#: A loss's parts named ``weight/<name>`` are not metrics but the weight of ``<name>`` (of
#: the loss, ``weight/loss``, and so of the gradient) in the batch: a loss normalised by a
#: count that varies from batch to batch (e.g. a masked GIVT's masked tokens) reports that
#: count, so that micro-batches (``train.grad_accum``) combine exactly as the whole batch
#: would. Parts without a weight are means over the batch's examples (equal weights).
WEIGHT_PREFIX = "weight/"


def split_weights(parts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A loss's parts -> (metrics, {name: weight}) (see :data:`WEIGHT_PREFIX`)."""
    metrics = {k: v for k, v in parts.items() if not k.startswith(WEIGHT_PREFIX)}
    weights = {k[len(WEIGHT_PREFIX):]: v for k, v in parts.items()
               if k.startswith(WEIGHT_PREFIX)}
    return metrics, weights


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

    The loss's metrics may carry weights (:data:`WEIGHT_PREFIX`); with ``grad_accum`` > 1
    the loop calls ``loss_fn`` once per micro-batch, each with its own key.
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
    0..1 shape only (big_vision). ``grad_clip`` is a global-norm clip (0: none).

    ``fsdp``: parameters and optimiser state split over the devices (``sharding.py``).
    ``grad_accum``: each step's batch is split into this many micro-batches whose
    gradients are summed before the one optimiser update (the memory of one micro-batch,
    the result of the whole batch up to float rounding; ``batch_size`` must be a multiple
    of ``grad_accum`` x the number of devices). ``cached_codes`` (stage 2 only): train on
    the dataset's stage-1 codes computed once (``training/code_cache.py``) instead of
    encoding every batch with the frozen VAE; the same loss, without the VAE in the step."""
    return ml_collections.ConfigDict(dict(
        total_steps=100, batch_size=32, seed=0,
        log_every=10, ckpt_every=100, keep_ckpts=2,
        fsdp=False, grad_accum=1, cached_codes=False, progress=True,
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


def accumulated_value_and_grad(loss_fn: LossFn, accum: int, mesh: Mesh | None = None
                               ) -> Callable[..., tuple[jax.Array, dict[str, jax.Array], Any]]:
    """``(params, batch, key, *extra) -> (loss, metrics, grads)`` of the whole batch, computed
    in ``accum`` micro-batches (a ``lax.scan``: the memory of one) and combined as the whole
    batch would be: gradients, loss and metrics are means weighted by each micro-batch's
    weights (:data:`WEIGHT_PREFIX`; equal without). Micro-batch ``k`` gets the key
    ``fold_in(key, k)``; ``accum=1`` is the plain step at ``key``. ``mesh``: the batch's
    device mesh (its rows are split along ``sharding.DATA_AXIS``)."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
        def plain(params, batch, key, *extra):
            (loss, parts), grads = value_and_grad(params, batch, key, *extra)
            return loss, split_weights(parts)[0], grads
        return plain

    def to_micro(x):
        # Micro-batch k takes rows k, k + accum, ...: every device's rows split evenly over
        # the micro-batches, so no example moves between devices.
        x = jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0)
        if mesh is None:
            return x
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, PartitionSpec(None, sharding.DATA_AXIS)))

    def accumulated(params, batch, key, *extra):
        def one(carry, xs):
            grad_sum, weight_sum = carry
            micro, k = xs
            (loss, parts), grads = value_and_grad(params, micro, jax.random.fold_in(key, k),
                                                  *extra)
            metrics, weights = split_weights(parts)
            w_loss = jnp.asarray(weights.get("loss", 1.0), jnp.float32)
            grad_sum = jax.tree_util.tree_map(lambda s, g: s + w_loss.astype(g.dtype) * g,
                                              grad_sum, grads)
            w = {name: jnp.asarray(weights.get(name, 1.0), jnp.float32) for name in metrics}
            return (grad_sum, weight_sum + w_loss), (loss, w_loss, metrics, w)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (grad_sum, weight_sum), (losses, w_losses, metrics, w) = jax.lax.scan(
            one, (zeros, jnp.zeros((), jnp.float32)),
            (jax.tree_util.tree_map(to_micro, batch), jnp.arange(accum)))
        grads = jax.tree_util.tree_map(lambda g: g / weight_sum.astype(g.dtype), grad_sum)
        loss = jnp.sum(losses * w_losses) / weight_sum
        return loss, {k: jnp.sum(v * w[k]) / jnp.sum(w[k]) for k, v in metrics.items()}, grads
    return accumulated


def _check_accumulation(stage_name: str, host_batch: Batch, accum: int, devices: int) -> None:
    """The batch must split into ``accum`` micro-batches, each over every local device."""
    rows = len(next(iter(host_batch.values())))
    if accum > 1 and rows % (accum * devices):
        raise ConfigError(f"{stage_name}.train.grad_accum={accum}: a batch of {rows} does not "
                          f"split into {accum} micro-batches over {devices} device(s); make "
                          "batch_size a multiple of grad_accum x devices")


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

    accum = int(cfg.grad_accum)
    if stateful and accum > 1:  # runner.check_config says so before a run is written
        raise ConfigError(f"{stage_name}.train.grad_accum={accum}: this stage updates its "
                          "state from each step's whole batch; use grad_accum=1")
    loss_and_grads = accumulated_value_and_grad(stage.loss_fn, accum, mesh)

    def train_step(params, opt_state, state, bad_step, batch, step, frozen):
        key = jax.random.fold_in(step_key, step)
        extra = () if frozen is None else (frozen,)
        if stateful:
            (loss, (parts, state)), grads = jax.value_and_grad(stage.loss_fn, has_aux=True)(
                params, batch, key, state, *extra)
            metrics = split_weights(parts)[0]
        else:
            loss, metrics, grads = loss_and_grads(params, batch, key, *extra)
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
            if step == start:
                _check_accumulation(stage_name, host_batch, accum, len(mesh.local_devices))
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
