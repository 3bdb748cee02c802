"""An exponential moving average of a stage's parameters, kept beside its checkpoints."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from uvim_givt.training.checkpoint import StageCheckpoints


class ParamsEMA:
    """EMA of ``part(params)`` updated after every trainer step (``Stage.after_step``).

    decay_t = min(decay, (1 + t) / (10 + t)) (so an early EMA is not dominated by the
    initialisation). Saved as its own checkpoint stage (e.g. ``vae_ema``) at the trainer's
    checkpoint steps; a resumed run restarts from the EMA saved at its resume step.
    """

    def __init__(self, run_dir: str, stage: str, decay: float, every: int, total: int,
                 keep: int, part: Callable[[Any], Any] = lambda p: p):
        self.decay, self.every, self.total, self.part = float(decay), every, total, part
        self.ema = None
        self.ckpt = StageCheckpoints(run_dir, stage, keep=keep)

        def update(ema, params, step):
            d = jnp.minimum(self.decay, (1.0 + step) / (10.0 + step))
            return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

        self._update = jax.jit(update, donate_argnums=0)

    def _resume(self, start: int, current: Any) -> Any:
        steps = [s for s in self.ckpt.manager.all_steps() if s <= start] if start else []
        if steps:
            ema, _ = self.ckpt.restore_params(max(steps), target=current)
            return jax.tree_util.tree_map(jnp.asarray, ema)
        if start:
            print(f"warning: no EMA checkpoint at or before step {start}; the EMA restarts "
                  "from the current parameters", file=sys.stderr)
        return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), current)

    def __call__(self, params: Any, step: int) -> None:
        if self.ema is None:
            self.ema = self._resume(step - 1, self.part(params))
        self.ema = self._update(self.ema, self.part(params), jnp.asarray(step, jnp.float32))
        if step % self.every == 0 or step == self.total:
            self.ckpt.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(self.ema),
                meta=ocp.args.JsonSave({"step": step, "decay": self.decay})), force=True)

    def close(self) -> None:
        self.ckpt.wait()
        self.ckpt.close()
