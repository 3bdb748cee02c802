"""orbax checkpoints of a training stage inside a run directory.

Layout: ``RUN_DIR/checkpoints/<stage>/<step>/{params,opt_state,meta}``. Saving
is asynchronous (orbax); the manager keeps the last ``keep`` steps. Parameters
can be restored alone (for inference or as a frozen stage-1 model) without
knowing the optimiser.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from uvim_givt.errors import CheckpointError


def stage_dir(run_dir: str, stage: str) -> str:
    return os.path.join(os.path.abspath(run_dir), "checkpoints", stage)


class StageCheckpoints:
    """Thin wrapper around ``ocp.CheckpointManager`` for one stage of a run."""

    def __init__(self, run_dir: str, stage: str, keep: int = 3, create: bool = True):
        self.directory = stage_dir(run_dir, stage)
        if not create and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoints for stage {stage!r} in {run_dir} "
                                  f"(expected {self.directory})")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, dict]:
        """Restores into the structure/shardings of the given (abstract) trees."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params),
            opt_state=ocp.args.StandardRestore(opt_state),
            meta=ocp.args.JsonRestore()))
        return out["params"], out["opt_state"], out["meta"]

    def restore_params(self, step: int | None = None, target: Any = None) -> tuple[Any, int]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint saved yet in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))
        return out["params"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_params(run_dir: str, stage: str, step: int | None = None, target: Any = None
                ) -> tuple[Any, int]:
    """Parameters of ``stage`` from a run directory (latest step by default)."""
    ckpt = StageCheckpoints(run_dir, stage, create=False)
    try:
        params, step = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    return jax.tree_util.tree_map(lambda x: x, params), step
