"""Optimiser from config: optax adam/adafactor, warm-up + cosine schedule,
decoupled weight decay, gradient clipping and learning-rate multipliers by
parameter-name pattern (0 freezes a parameter)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def param_names(params: Any) -> Any:
    """A pytree like ``params`` holding each leaf's '/'-joined path."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def multipliers(params: Any, patterns: Sequence[Sequence[Any]], default: float = 1.0) -> Any:
    """Per-leaf multiplier: the first (regex, mult) whose regex matches the path wins."""
    compiled = [(re.compile(p), float(m)) for p, m in patterns]

    def mult(name):
        for rx, m in compiled:
            if rx.search(name):
                return m
        return default

    return jax.tree_util.tree_map(mult, param_names(params))


def learning_rate_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """``cfg.schedule``: 'cosine' (warm-up then cosine to 0), 'linear' or 'constant'."""
    warmup = int(cfg.warmup_steps or round(float(cfg.warmup_fraction) * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    peak = float(cfg.lr)
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


def make_optimizer(cfg: Any, params: Any, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                     optax.Schedule]:
    """Builds the optax chain described by the ``optim`` config group."""
    schedule = learning_rate_schedule(cfg, total_steps)
    name = cfg.optimizer
    parts = []
    if cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
    if name == "adam":
        parts.append(optax.scale_by_adam(b1=float(cfg.b1), b2=float(cfg.b2),
                                         eps=float(cfg.eps)))
    elif name == "adafactor":
        parts.append(optax.scale_by_factored_rms(decay_rate=float(cfg.b2)))
        if cfg.b1:
            parts.append(optax.trace(decay=float(cfg.b1)))
    else:
        raise ValueError(f"unknown optimizer {name!r}: adam or adafactor")
    wd = float(cfg.wd)
    if wd:
        # Decoupled decay, scaled by the learning rate like AdamW; only matching params.
        pattern = re.compile(cfg.wd_pattern)

        def mask(tree):  # a callable, so it also works on multi_transform's masked trees
            return jax.tree_util.tree_map_with_path(
                lambda path, _: bool(pattern.search(_path_str(path))), tree)

        parts.append(optax.add_decayed_weights(wd, mask=mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
    lr_mults = [tuple(x) for x in cfg.lr_mults]
    if not lr_mults:
        return tx, schedule
    mults = multipliers(params, lr_mults)
    frozen = jax.tree_util.tree_map(lambda m: m == 0.0, mults)
    if any(jax.tree_util.tree_leaves(frozen)):
        # Frozen parameters get no optimiser state and exactly zero updates.
        labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "train", frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    scale = optax.GradientTransformation(
        lambda _: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree_util.tree_map(lambda g, m: g * m, u, mults), s))
    return optax.chain(tx, scale), schedule


def _path_str(path: Any) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))
