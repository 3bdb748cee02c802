"""orbax checkpoints of a training stage inside a run directory.

Layout: ``RUN_DIR/checkpoints/<stage>/<step>/{params,opt_state,meta}``, plus ``state`` for a
stage with state that is not trained by gradient (a VQ dictionary and its counts). Saving
is asynchronous (orbax); the manager keeps the last ``keep`` steps. Parameters
can be restored alone (for inference or as a frozen stage-1 model) without
knowing the optimiser.

With several processes (``jax.distributed``) every process calls ``save`` and
``restore`` (orbax writes each shard once, the metadata from process 0). A
checkpoint restores under any process count or device layout: training passes
its own shardings, and parameters read without a target come back replicated
over the current devices (``tests/test_multihost.py`` resumes 2 -> 1 and 1 -> 2
processes).

Failures a user must act on are one line (:class:`CheckpointError`): an unreadable
latest checkpoint is set aside (to ``checkpoints/<stage>.unreadable/``) and the newest
readable one used, with a warning naming the bad step; a save that fails for lack of
space or permission removes its temporary folder and names the folder and the cause.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from uvim_givt.errors import CheckpointError, storage_errno
from uvim_givt.quiet import held_stderr, verbose_requested
from uvim_givt.training import sharding


class _StorageFailureFilter(logging.Filter):
    """Drops orbax's own reports of a write that failed for lack of space or permission
    (each a logged traceback from its background threads, hundreds of lines per save):
    :meth:`StageCheckpoints._guard` reports that failure in one line naming its step.
    ``--verbose`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname or verbose_requested():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and storage_errno(exc) is not None:
            return False
        return storage_errno(ValueError(record.getMessage())) is None


def _quiet_storage_failures() -> None:
    """Installs :class:`_StorageFailureFilter` on absl's logger (orbax logs through it),
    once per process."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _StorageFailureFilter) for f in logger.filters):
        logger.addFilter(_StorageFailureFilter())


def tree_nbytes(*trees: Any) -> int:
    """Bytes of the arrays in ``trees`` (what a checkpoint of them writes, before
    compression)."""
    return sum(int(getattr(x, "nbytes", 0)) for t in trees
               for x in jax.tree_util.tree_leaves(t))


def free_bytes(directory: str) -> int | None:
    """Free bytes of the local file system holding ``directory`` (or its nearest existing
    parent); None for a remote path (gs://...), where the check is left to the store."""
    if "://" in directory:
        return None
    path = os.path.abspath(directory)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


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
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_names=("params", "opt_state", "meta", "state"))
        self._writing: int | None = None  # the step whose asynchronous write may be running
        _quiet_storage_failures()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any],
             state: Any = None) -> None:
        items = dict(params=ocp.args.StandardSave(params),
                     opt_state=ocp.args.StandardSave(opt_state), meta=ocp.args.JsonSave(meta))
        if state is not None:
            items["state"] = ocp.args.StandardSave(state)
        # The previous write finishes first, so a failure of it names its own step, not
        # this one's (orbax would raise it from this save).
        self._guard(self._writing, self.manager.wait_until_finished)
        self._writing = None
        self._check_space(step, tree_nbytes(params, opt_state, state))
        self._guard(step, lambda: self.manager.save(step, args=ocp.args.Composite(**items)))
        self._writing = step

    def _check_space(self, step: int, need: int) -> None:
        """Refuses a save that cannot fit before it starts (one process: with several, the
        store is shared and each writes a part). A write that starts and then runs out of
        space fails inside orbax's threads, whose callbacks print a traceback each; this
        check turns the common case, a disk already too full, into one line."""
        free = free_bytes(self.directory) if jax.process_count() == 1 else None
        margin = 1 << 20  # metadata and the JSON items
        if free is None or free >= need + margin:
            return
        kept = self.manager.latest_step()
        raise CheckpointError(
            f"could not save checkpoint step {step} in {self.directory}: it needs about "
            f"{(need + margin) / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free. Free "
            "space, then rerun to resume from "
            + (f"step {kept}" if kept is not None else "the start"))

    def _guard(self, step: int | None, fn: Callable[[], Any]) -> Any:
        """Runs a save (or the wait for one); a storage failure becomes one line, after
        removing the half-written temporary folder so the next run does not trip on it."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only storage failures are translated
            code = storage_errno(e)
            if code is None:
                raise
            try:  # let saves still in flight finish (or fail) before removing temporaries
                self.manager.wait_until_finished()
            except Exception:  # noqa: BLE001, S110 - their failure is this same one
                pass
            for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)
            what = f"checkpoint step {step}" if step is not None else "a checkpoint"
            kept = self.manager.latest_step()
            raise CheckpointError(
                f"could not save {what} in {self.directory}: {os.strerror(code)}. Free space "
                "or make the run directory writable, then rerun to resume from "
                + (f"step {kept}" if kept is not None else "the start")) from None

    def restore_latest(self, params: Any, opt_state: Any, state: Any = None
                       ) -> tuple[int, Any, Any, dict, Any] | None:
        """(step, params, opt_state, meta, state) of the newest readable checkpoint (state
        None unless a target is given), or None if there is none. Unreadable newer steps are
        moved to ``<stage>.unreadable/`` with a warning; if no step is readable, stop with
        one line naming them."""
        errors: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                with held_stderr():  # a failed read's tracebacks: one warning instead
                    out = self.restore(step, params, opt_state, state)
            except Exception as e:  # noqa: BLE001 - corrupt files fail in many ways
                errors.append((step, _first_line(e)))
                continue
            for bad, why in errors:
                self.set_aside(bad, why)
            check_finite(out[0], self.directory, step)
            return (step, *out)
        if not errors:
            return None
        bad = ", ".join(str(s) for s, _ in errors)
        raise CheckpointError(
            f"no readable checkpoint in {self.directory} (step {errors[0][0]}: "
            f"{errors[0][1]}). Delete the unreadable step folder(s) {bad} there to start this "
            "stage over, or restore them from a backup")

    def set_aside(self, step: int, reason: str) -> str:
        """Moves an unreadable step out of the manager's sight; returns where it went."""
        dest = os.path.join(self.directory + ".unreadable", str(step))
        if jax.process_index() == 0:  # one mover; with several processes the rest wait
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(os.path.join(self.directory, str(step)), dest)
            print(f"warning: checkpoint step {step} in {self.directory} is unreadable "
                  f"({reason}); moved to {dest}", file=sys.stderr)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside {self.directory}/{step}")
        self.manager.reload()
        return dest

    def restore(self, step: int, params: Any, opt_state: Any, state: Any = None
                ) -> tuple[Any, Any, dict, Any]:
        """Restores into the structure/shardings of the given (abstract) trees; ``state``
        too when its target is given."""
        items = dict(params=ocp.args.StandardRestore(params),
                     opt_state=ocp.args.StandardRestore(opt_state), meta=ocp.args.JsonRestore())
        if state is not None:
            items["state"] = ocp.args.StandardRestore(state)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["params"], out["opt_state"], out["meta"], \
            out["state"] if state is not None else None

    def restore_params(self, step: int | None = None, target: Any = None,
                       item: str = "params") -> tuple[Any, int]:
        """Parameters (or another tree ``item``, e.g. ``state``) of ``step`` (the latest by
        default) into ``target``'s structure and shardings; without a target, as saved,
        replicated over this process's devices."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint saved yet in {self.directory}")
        if target is None:
            target = self._replicated_params(step, item)
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(target)}))
        return out[item], step

    def _replicated_params(self, step: int, item: str = "params") -> Any:
        """The saved parameters' shapes and dtypes, replicated over the current devices.
        orbax would otherwise restore the saved shardings, which name the devices of the
        saving run: a checkpoint written by several processes (or with FSDP over several
        devices) could not be read back by one process."""
        meta = ocp.StandardCheckpointHandler().metadata(
            epath.Path(self.directory) / str(step) / item)
        repl = sharding.replicated(sharding.make_mesh())
        return jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=repl),
            getattr(meta, "tree", meta))

    def wait(self) -> None:
        self._guard(self._writing, self.manager.wait_until_finished)
        self._writing = None

    def close(self) -> None:
        self.manager.close()


def first_non_finite(params: Any) -> str | None:
    """The path of the first floating-point parameter holding NaN or infinity, or None:
    one compiled reduction over the tree, one boolean per leaf back to the host."""
    leaves = [(jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(params)
              if hasattr(v, "dtype") and jax.numpy.issubdtype(v.dtype, jax.numpy.floating)]
    if not leaves:
        return None
    flags = jax.jit(lambda xs: [jax.numpy.all(jax.numpy.isfinite(x)) for x in xs])(
        [v for _, v in leaves])
    for (path, _), ok in zip(leaves, jax.device_get(flags), strict=True):
        if not bool(ok):
            return path
    return None


def check_finite(params: Any, directory: str, step: int) -> None:
    """Refuses (one line) parameters with NaN or infinite values: a model that would give
    empty or garbage predictions without a word."""
    bad = first_non_finite(params)
    if bad is not None:
        raise CheckpointError(
            f"{directory} step {step}: parameter {bad} holds NaN or infinite values; this "
            "checkpoint cannot be used (retrain it, or move that step folder away to use an "
            "earlier one)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def load_params(run_dir: str, stage: str, step: int | None = None, target: Any = None,
                item: str = "params") -> tuple[Any, int]:
    """Parameters of ``stage`` from a run directory (the newest readable step by default:
    an unreadable newer one is named in a warning and skipped, not moved); ``item="state"``:
    the stage's state instead (see :class:`StageCheckpoints`)."""
    ckpt = StageCheckpoints(run_dir, stage, create=False)
    try:
        if step is not None:
            params, step = ckpt.restore_params(step, target, item)
        else:
            steps = sorted(ckpt.manager.all_steps(), reverse=True)
            if not steps:
                raise CheckpointError(f"no checkpoint saved yet in {ckpt.directory}")
            for k, s in enumerate(steps):
                try:
                    with held_stderr():
                        params, step = ckpt.restore_params(s, target, item)
                    break
                except Exception as e:  # noqa: BLE001 - corrupt files fail in many ways
                    if k == len(steps) - 1:
                        raise CheckpointError(
                            f"no readable checkpoint in {ckpt.directory} (step {s}: "
                            f"{_first_line(e)})") from None
                    print(f"warning: checkpoint step {s} in {ckpt.directory} is unreadable "
                          f"({_first_line(e)}); using step {steps[k + 1]}", file=sys.stderr)
    finally:
        ckpt.close()
    check_finite(params, ckpt.directory, step)
    return jax.tree_util.tree_map(lambda x: x, params), step
