"""Released big_vision GIVT / UViM checkpoints as such: into a config's model, into a run.

GIVT-UViM and GIVT ImageNet checkpoints (VAE, GIVT) and the original UViM's (VQ-VAE with
its dictionary state, VTT: ``*_stageI_params.npz``, ``*_stageII_params.npz``; convert them
with the config's ``tokens=vq`` variant).

:func:`load_into` maps a released checkpoint (read by
:func:`uvim_givt.training.param_files.read_checkpoint`, layouts converted by ``convert_layout``
there) onto the parameter tree of a config's model; :func:`convert` writes it as a stage
checkpoint of a run directory. Starting training from a checkpoint (``<stage>.init``,
``givt.init_encoder``) lives in :mod:`uvim_givt.training.warm_start`; the names that moved
there and to ``param_files`` are re-exported here for existing importers.

Command line (writes a run directory usable for inference / evaluation and as
the frozen stage 1 of a stage-2 run)::

    python -m uvim_givt.compat.big_vision --npz givt_panoptic.npz \\
        --config configs/panoptic.py:size=paper --out runs/panoptic_published

    python -m uvim_givt.compat.big_vision --npz panoptic_stageI_params.npz \
        --config configs/panoptic.py:size=paper,tokens=vq --out runs/uvim_panoptic_published

Converted run directories hold parameters (and a VQ-VAE's dictionary), no optimiser state: the
trainer cannot *resume* from them; they are for inference, evaluation and as
the stage-1 model of a new stage-2 run.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from uvim_givt.errors import (
    ArgumentParser,
    add_verbose_argument,
    non_negative_int,
    run_command,
)

if TYPE_CHECKING:
    import ml_collections

    from uvim_givt.models.builders import Stage
    from uvim_givt.training.param_files import CheckpointMismatch

# Names re-exported for existing importers -> the module that defines them. They load on
# first use (PEP 562), so ``--help`` answers without importing JAX (tests/test_cli.py).
_REEXPORTS = {
    "Stage": "uvim_givt.models.builders",
    "abstract_params": "uvim_givt.models.builders",
    "build_model": "uvim_givt.models.builders",
    "label_channels": "uvim_givt.models.builders",
    "CheckpointFileError": "uvim_givt.training.param_files",
    "CheckpointMismatch": "uvim_givt.training.param_files",
    "CheckpointValueError": "uvim_givt.training.param_files",
    "convert_layout": "uvim_givt.training.param_files",
    "load_npz": "uvim_givt.training.param_files",
    "save_npz": "uvim_givt.training.param_files",
    "read_checkpoint": "uvim_givt.training.param_files",
}
# ``--msgpack-params`` choices; equal to param_files.MSGPACK_PARAM_GROUPS (tests/test_compat.py
# checks), spelled here so that the parser needs no JAX.
_MSGPACK_CHOICES = ("ema_params", "g_params")


def __getattr__(name: str) -> Any:
    if name in _REEXPORTS:
        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------- models from configs
def load_into(model_kind: Stage, cfg: ml_collections.ConfigDict,
              flat: Mapping[str, Any], file: str | None = None,
              state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Checkpoint arrays (from :func:`read_checkpoint`; read from ``file``, named in errors)
    -> the parameter tree of ``cfg``'s model. A model with state (the UViM VQ-VAE: its
    dictionary and counts, ``state``) gives its variables ``{"params", "state"}``. Raises
    :class:`CheckpointMismatch` for keys/shapes that do not fit, :class:`CheckpointValueError`
    for non-float or non-finite values."""
    from uvim_givt.models.builders import abstract_params
    from uvim_givt.training.param_files import convert_layout

    target = abstract_params(model_kind, cfg)
    if set(target) == {"params", "state"} or state:
        # Both trees in one conversion, so that a missing dictionary (or a state the model
        # has none of) is listed with the parameters.
        flat = {**{f"params/{k}": v for k, v in flat.items()},
                **{f"state/{k}": v for k, v in (state or {}).items()}}
        if set(target) != {"params", "state"}:
            target = {"params": target}
    return convert_layout(flat, target, context=f"{model_kind} model of the config", file=file)


def _adaptor_hint(e: CheckpointMismatch) -> str:
    """What to set when only the invertible adaptor (``params_adaptor/``, as big_vision's
    generative trainer stores it next to the GIVT) is what differs."""
    from uvim_givt.models.adaptor import PARAMS_KEY as ADAPTOR_PARAMS_KEY

    prefix = f"{ADAPTOR_PARAMS_KEY}/"
    if any(k.startswith(prefix) for k in e.unexpected):
        return ("; the checkpoint has an invertible adaptor: --set givt.adaptor.enabled=True "
                "and its num_blocks / num_channels_bottleneck / pixel_shuffle_patch_size")
    if any(k.startswith(prefix) for k in e.missing):
        return "; the checkpoint has no invertible adaptor: --set givt.adaptor.enabled=False"
    return ""


def infer_stage(keys: Sequence[str]) -> Stage:
    """``givt`` (stage 2: GIVT or VTT) if the checkpoint embeds target tokens, ``vae`` (stage
    1: VAE or VQ-VAE) if it has a VAE encoder."""
    from uvim_givt.training.param_files import CheckpointFileError

    tops = {k.split("/", 1)[0] for k in keys}
    if "EmbedTargets" in tops or any(k.startswith("decoder/EmbedTargets/") for k in keys):
        return "givt"  # GIVT (top-level) or UViM VTT (in its decoder)
    if tops & {"encoder_head", "cnn_encoder"}:
        return "vae"
    raise CheckpointFileError(
        "cannot tell whether the checkpoint is a stage 2 (EmbedTargets/..., "
        "decoder/EmbedTargets/...) or a stage 1 (encoder_head/..., cnn_encoder/...); "
        "top-level keys: "
        f"{sorted(tops)[:12]}; pass --stage")


# ---------------------------------------------------------------------- run directories
def write_stage_checkpoint(run_dir: str, stage: Stage, params: Any, step: int = 0,
                           meta: Mapping[str, Any] | None = None,
                           state: Any | None = None) -> str:
    """Saves ``params`` (no optimiser state) and ``state`` when given (a VQ dictionary) as
    the ``stage`` checkpoint at ``step``.

    ``training.checkpoint.load_params(run_dir, stage)`` reads it back (``item="state"``
    the state); resuming training from it is not possible (no ``opt_state`` item).
    """
    import orbax.checkpoint as ocp

    from uvim_givt.training.checkpoint import CheckpointError, StageCheckpoints

    ckpt = StageCheckpoints(run_dir, stage, keep=1_000_000)
    try:
        if step in ckpt.manager.all_steps():
            raise CheckpointError(f"{ckpt.directory} already has a checkpoint at step {step}; "
                                  "pass another --step or --out")
        meta = dict(meta or {}, step=step, train_time_s=0.0)
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if state is not None:
            items["state"] = ocp.args.StandardSave(state)
        ckpt.manager.save(step, args=ocp.args.Composite(**items))
        ckpt.wait()
    finally:
        ckpt.close()
    return os.path.join(ckpt.directory, str(step))


def _update_run_info(run_dir: str, stage: str, num_params: int, source: str) -> str:
    from uvim_givt import rundir
    return rundir.update_run_info(run_dir, num_params={stage: num_params}, source=source,
                                  sources={stage: source})


def _check_same_config(run_dir: str, cfg: ml_collections.ConfigDict) -> None:
    from uvim_givt import config as config_lib
    from uvim_givt import rundir
    from uvim_givt.training.param_files import CheckpointFileError

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    saved = config_lib.load_saved_config(run_dir)  # refuses an older run format
    diff = rundir.config_diff(config_lib.to_dict(saved), config_lib.to_dict(cfg))
    if diff:
        raise CheckpointFileError(
            f"{run_dir} already holds a run with a different config.json "
            f"({', '.join(diff[:8])} differ); convert into a new --out (or use the same config)")


def convert(npz: str, config: str, out: str, overrides: Sequence[str] = (),
            stage: Stage | None = None, step: int = 0,
            msgpack_params: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The command line's work: checkpoint file + config -> run directory ``out``."""
    from uvim_givt.config import load_config, save_config
    from uvim_givt.training.param_files import CheckpointMismatch, read_checkpoint
    from uvim_givt.training.trainer import count_params

    flat, state = read_checkpoint(npz, msgpack_params)
    n_src = sum(math.prod(v.shape) for v in flat.values())
    stage = stage or infer_stage(list(flat))
    held = f" and a state ({', '.join(sorted(state))})" if state else ""
    log(f"read {len(flat)} arrays ({n_src:,} parameters){held} from {npz}: a {stage} "
        "checkpoint")
    cfg = load_config(config, overrides)
    try:
        params = load_into(stage, cfg, flat, file=npz, state=state)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(e.missing, e.unexpected, e.shapes,
                                 f"{npz} vs the {stage} model of {config}"
                                 + _adaptor_hint(e) + _state_hint(e, stage)) from None
    del flat
    state = params.pop("state", None) if set(params) == {"params", "state"} else None
    params = params["params"] if state is not None else params
    _check_same_config(out, cfg)
    written = {"config": save_config(cfg, out)}
    log(f"wrote {written['config']}")
    source = f"big_vision npz: {npz}"
    written["checkpoint"] = write_stage_checkpoint(out, stage, params, step,
                                                   meta={"source": source}, state=state)
    what = "parameters and the dictionary" if state is not None else "parameters only"
    log(f"wrote {written['checkpoint']} ({stage} {what}, no optimiser state)")
    n = count_params(params)
    written["run_info"] = _update_run_info(out, stage, n, source)
    log(f"wrote {written['run_info']} ({stage}: {n:,} parameters)")
    return {"stage": stage, "num_params": n, "step": step, **written}


def _state_hint(e: CheckpointMismatch, stage: str) -> str:
    """What to set when the checkpoint and the config differ in having a VQ dictionary."""
    if stage != "vae":
        return ""
    if any(k.startswith("state/") for k in e.unexpected):
        return ("; the checkpoint is a VQ-VAE (it has a dictionary): use the config's "
                "tokens=vq variant, e.g. configs/panoptic.py:size=paper,tokens=vq")
    if any(k.startswith("state/") for k in e.missing):
        return ("; the config's stage 1 is a VQ-VAE but the checkpoint has no dictionary "
                "(state/dictionary, state/counts): a continuous VAE's checkpoint needs the "
                "config without tokens=vq")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m uvim_givt.compat.big_vision``; returns the exit code (2 on user errors)."""
    p = ArgumentParser(
        prog="python -m uvim_givt.compat.big_vision",
        description="Convert a released big_vision GIVT/UViM checkpoint into a run directory "
                    "(parameters only: for inference, evaluation, or as stage 1 of stage 2).")
    p.add_argument("--npz", required=True,
                   help=".npz file (GIVT, VAE, UViM VQ-VAE with its dictionary, VTT; or "
                        "flax msgpack for the CNN VAE)")
    p.add_argument("--config", required=True, help="FILE[:args], e.g. configs/panoptic.py:"
                                                   "size=paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--stage", choices=("givt", "vae"), default=None,
                   help="default: inferred from the checkpoint's keys")
    p.add_argument("--step", type=non_negative_int, default=0,
                   help="checkpoint step to write (default 0)")
    p.add_argument("--msgpack-params", choices=_MSGPACK_CHOICES, default=None,
                   help="flax msgpack checkpoints: which weights (default ema_params if present)")
    p.add_argument("--out", required=True, help="run directory to write")
    add_verbose_argument(p)
    args = p.parse_args(argv)
    return run_command(lambda: convert(args.npz, args.config, args.out, args.set, args.stage,
                                       args.step, args.msgpack_params), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
