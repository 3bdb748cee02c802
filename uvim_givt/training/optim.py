"""Optimiser from config: optax adam/adafactor or big_vision's Adafactor variant, warm-up +
decay schedule, weight decay scaled by the learning rate (AdamW) or by the schedule only
(big_vision), gradient clipping and learning-rate multipliers by parameter-name pattern
(0 freezes a parameter).

The ``optim`` group's keys and defaults live in ``trainer.default_train_config``. The two
weight-decay modes (``optim.wd_mode``), for a parameter matching ``wd_pattern`` with
learning-rate multiplier ``m``, peak learning rate ``lr`` and schedule shape ``s(t)`` in
[0, 1] (the warm-up/decay curve, ``lr * s(t)`` being the learning rate):

* ``"lr_scaled"`` (optax/AdamW): ``p -= m * lr * s(t) * (u + wd * p)``;
* ``"schedule_scaled"`` (big_vision's ``config.wd``): ``p -= s(t) * (m * lr * u + wd * p)``,
  so ``wd`` is the decay per step at the schedule's peak, whatever ``lr`` and ``m`` are.

``u`` is the optimiser's update direction after gradient clipping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def param_names(params: Any) -> Any:
    """A pytree like ``params`` holding each leaf's '/'-joined path."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def _first_match(patterns: Sequence[Sequence[Any]], default: float) -> Callable[[str], float]:
    """name -> multiplier of the first (regex, mult) whose regex is found in the name."""
    compiled = [(re.compile(p), float(m)) for p, m in patterns]

    def mult(name: str) -> float:
        for rx, m in compiled:
            if rx.search(name):
                return m
        return default

    return mult


def multipliers(params: Any, patterns: Sequence[Sequence[Any]], default: float = 1.0) -> Any:
    """Per-leaf multiplier: the first (regex, mult) whose regex matches the path wins."""
    return jax.tree_util.tree_map(_first_match(patterns, default), param_names(params))


def learning_rate_schedule(cfg: Any, total_steps: int,
                           peak: float | None = None) -> optax.Schedule:
    """``cfg.schedule``: 'cosine' (warm-up then cosine to 0), 'linear' or 'constant'.

    The warm-up is linear from 0. ``peak`` defaults to ``cfg.lr``; ``peak=1`` gives the
    schedule's shape, which big_vision-style weight decay is multiplied by."""
    warmup = int(cfg.warmup_steps or round(float(cfg.warmup_fraction) * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    peak = float(cfg.lr) if peak is None else float(peak)
    kind = cfg.schedule
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                                  end_value=0.0)
    if kind == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup),
             optax.linear_schedule(peak, 0.0, max(total_steps - warmup, 1))], [warmup])
    if kind == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    raise ValueError(f"unknown schedule {kind!r}: cosine, linear or constant")


def scale_by_big_vision_adafactor(*, decay_rate: float, decay_offset: int, beta2_cap: float,
                                  min_dim_size_to_factor: int, clipping_threshold: float,
                                  momentum: float, momentum_dtype: str,
                                  eps: float) -> optax.GradientTransformation:
    """big_vision's ``scale_by_adafactor`` (the GIVT stage-2 optimiser) from optax parts.

    Per step t (0-based, the optimiser's own count) and parameter:

    1. second moment of ``g**2 + eps`` with decay ``b(t) = min(beta2_cap, 1 - (t + 1 -
       decay_offset) ** -decay_rate)`` (0 at the first step, so it starts at ``g**2``):
       factored (row and column means over the two largest axes, recombined as
       ``R C / mean(R)``) when the second-largest axis has at least
       ``min_dim_size_to_factor`` entries, else kept in full (biases, small matrices);
       the update is ``g / sqrt(V)``;
    2. when ``clipping_threshold`` > 0, each parameter's update is divided by
       ``max(1, rms(update) / clipping_threshold)``;
    3. when ``momentum`` > 0, an exponential moving average of the updates without bias
       correction, ``m = momentum * m + (1 - momentum) * u``, stored in ``momentum_dtype``
       (big_vision: bfloat16, which also rounds ``momentum * m`` to bfloat16).

    No arguments have defaults here: they are in ``trainer.default_train_config`` (equal to
    big_vision's own defaults; ``clipping_threshold=0`` is its ``None``)."""

    def capped_decay(step: jax.Array, exponent: float) -> jax.Array:
        # Adafactor's decay tends to 1, which would freeze the statistics late in
        # training; big_vision caps it (Zhai et al. 2021, "Scaling Vision Transformers").
        t = jnp.asarray(step, jnp.float32) + 1.0
        return jnp.minimum(beta2_cap, 1.0 - t ** (-exponent))

    parts = [optax.scale_by_factored_rms(
        factored=True, decay_rate=float(decay_rate), step_offset=int(decay_offset),
        min_dim_size_to_factor=int(min_dim_size_to_factor), epsilon=float(eps),
        decay_rate_fn=capped_decay)]
    if clipping_threshold:
        parts.append(optax.clip_by_block_rms(float(clipping_threshold)))
    if momentum:
        # An EMA, not optax.trace: its steady-state size is that of one update (trace's is
        # 1 / (1 - momentum) times larger), and big_vision does not debias it.
        parts.append(optax.ema(float(momentum), debias=False,
                               accumulator_dtype=jnp.dtype(momentum_dtype)))
    return optax.chain(*parts)


def _scale_by_optimizer(cfg: Any) -> list[optax.GradientTransformation]:
    """The update direction of ``cfg.optimizer`` (before learning rate and weight decay), as
    chain items (a flat list keeps the optimiser state of existing checkpoints' layout)."""
    name = cfg.optimizer
    if name == "adam":
        return [optax.scale_by_adam(b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps))]
    if name == "adafactor":
        parts = [optax.scale_by_factored_rms(decay_rate=float(cfg.b2))]
        if cfg.b1:
            parts.append(optax.trace(decay=float(cfg.b1)))
        return parts
    if name == "big_vision_adafactor":
        return [scale_by_big_vision_adafactor(**cfg.big_vision_adafactor.to_dict())]
    raise ValueError(f"unknown optimizer {name!r}: adam, adafactor or big_vision_adafactor")


def _scale_by_name(mult: Callable[[str], float]) -> optax.GradientTransformation:
    """Multiplies each update by ``mult(its path)``. Looked up by path rather than zipped
    with a tree of multipliers so that it also works inside multi_transform's masked trees."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * mult(_path_str(path)), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg: Any, params: Any, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                     optax.Schedule]:
    """Builds the optax chain described by the ``optim`` config group.

    Returns the transformation and the learning-rate schedule (``lr * s(t)``, for logging).
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
    parts += _scale_by_optimizer(cfg)
    wd, mode = float(cfg.wd), cfg.wd_mode
    decay = []
    if wd:
        pattern = re.compile(cfg.wd_pattern)

        def mask(tree):  # a callable, so it also works on multi_transform's masked trees
            return jax.tree_util.tree_map_with_path(
                lambda path, _: bool(pattern.search(_path_str(path))), tree)

        decay = [optax.add_decayed_weights(wd, mask=mask)]
    lr_mults = [tuple(x) for x in cfg.lr_mults]
    if mode == "lr_scaled":
        # AdamW: the decay joins the update before the learning rate (and, below, the
        # lr_mults) multiply it.
        tx = optax.chain(*parts, *decay, optax.scale_by_learning_rate(schedule))
    elif mode == "schedule_scaled":
        # big_vision's order: peak lr and lr_mults scale the update, then the decay is
        # added, then the schedule's shape scales both.
        shape = learning_rate_schedule(cfg, total_steps, peak=1.0)
        mult = [_scale_by_name(_first_match(lr_mults, 1.0))] if lr_mults else []
        tx = optax.chain(*parts, optax.scale(float(cfg.lr)), *mult, *decay,
                         optax.scale_by_schedule(shape), optax.scale(-1.0))
    else:
        raise ValueError(f"unknown wd_mode {mode!r}: lr_scaled or schedule_scaled")
    if not lr_mults:
        return tx, schedule
    mults = multipliers(params, lr_mults)
    frozen = jax.tree_util.tree_map(lambda m: m == 0.0, mults)
    if any(jax.tree_util.tree_leaves(frozen)):
        # Frozen parameters get no optimiser state and exactly zero updates (no decay).
        labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "train", frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if mode == "schedule_scaled":
        return tx, schedule
    scale = optax.GradientTransformation(
        lambda _: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree_util.tree_map(lambda g, m: g * m, u, mults), s))
    return optax.chain(tx, scale), schedule


def _path_str(path: Any) -> str:
    """A tree path as the '/'-joined name ``param_names`` gives the same leaf."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))
