"""Loading released big_vision GIVT / UViM checkpoints into this project's models.

The released parameters are flat ``.npz`` files whose keys are the '/'-joined
parameter paths (see ``tests/data/big_vision_param_trees.json``); the ImageNet
CNN VAE is a flax ``restore_checkpoint`` msgpack file whose generator weights
sit under ``ema_params/`` or ``g_params/`` (renamed here to ``cnn_``).

Our modules carry the published names, so loading is a renaming-free mapping,
except for the layer layout: a checkpoint trained with ``nn.scan`` stacks each
block parameter on a layer axis (axis 1 for the GIVT decoder's ``EncDecBlock``,
axis 0 for ViT ``encoderblock``), an unrolled one has one entry per layer
(``EncDecBlock{i}``, ``encoderblock_{i}``). :func:`convert_layout` converts
between the two in either direction, then checks that every parameter of the
target model is present with its shape and that nothing in the checkpoint is
left over.

Command line (writes a run directory usable for inference / evaluation and as
the frozen stage 1 of a stage-2 run)::

    python -m uvim_givt.compat.big_vision --npz givt_panoptic.npz \\
        --config configs/panoptic.py:size=paper --out runs/panoptic_published

Converted run directories hold parameters only (no optimiser state): the
trainer cannot *resume* from them; they are for inference, evaluation and as
the stage-1 model of a new stage-2 run.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from uvim_givt.errors import (
    ArgumentParser,
    CheckpointError,
    add_verbose_argument,
    non_negative_int,
    run_command,
)
from uvim_givt.models.adaptor import PARAMS_KEY as ADAPTOR_PARAMS_KEY
from uvim_givt.models.builders import (  # noqa: F401 (re-exported)
    Stage,
    abstract_params,
    build_model,
    label_channels,
)
from uvim_givt.training.checkpoint import load_params

# Layer families: name of the scanned module -> (regex of one unrolled layer's
# module name, format of that name, stacked axis in the published checkpoints).
_LAYER_FAMILIES: dict[str, tuple[re.Pattern, str, int]] = {
    "EncDecBlock": (re.compile(r"^EncDecBlock(\d+)$"), "EncDecBlock{}", 1),
    "encoderblock": (re.compile(r"^encoderblock_(\d+)$"), "encoderblock_{}", 0),
}
# Where the generator weights of a MaskGIT-style flax checkpoint live.
MSGPACK_PARAM_GROUPS = ("ema_params", "g_params")
_SHOWN = 10  # how many entries of each kind a mismatch message lists



class CheckpointFileError(CheckpointError, ValueError):
    """A checkpoint file that is missing, unreadable or of an unknown format."""


class CheckpointMismatch(CheckpointError, ValueError):
    """Checkpoint keys/shapes that do not fit the target model's parameter tree."""

    def __init__(self, missing: Sequence[str], unexpected: Sequence[str],
                 shapes: Sequence[str], context: str = ""):
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)
        head = "checkpoint does not match the model" + (f" ({context})" if context else "")
        counts = (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                  f"{len(self.shapes)} with a different shape")
        lines = [f"{head}: {counts}"]
        for title, items in (("missing from the checkpoint", self.missing),
                             ("unexpected in the checkpoint", self.unexpected),
                             ("shape differs", self.shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {s}" for s in items[:_SHOWN]]
                if len(items) > _SHOWN:
                    lines.append(f"    ... and {len(items) - _SHOWN} more")
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------------ reading files
def _fix_dtype(x: np.ndarray) -> np.ndarray:
    # np.savez writes bfloat16 arrays as 2-byte void; view them back as bfloat16.
    if x.dtype.kind == "V" and x.dtype.itemsize == 2:
        import ml_dtypes
        return x.view(ml_dtypes.bfloat16)
    return x


def _strip_train_state(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A big_vision training checkpoint (``params/...``, ``opt/...``): keep the params."""
    for prefix in ("params/", "opt/target/"):
        if any(k.startswith(prefix) for k in flat):
            return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    return flat


def _load_msgpack(path: str, data: bytes, group: str | None) -> dict[str, np.ndarray]:
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise CheckpointFileError(
            f"{path}: neither a .npz archive nor a flax msgpack checkpoint "
            f"({type(e).__name__}: {e})") from None
    if not isinstance(tree, Mapping):
        raise CheckpointFileError(f"{path}: the msgpack checkpoint holds no dict of parameters")
    if group is None:
        group = next((g for g in MSGPACK_PARAM_GROUPS if g in tree), None)
        if group is None:
            raise CheckpointFileError(
                f"{path}: flax checkpoint without {' or '.join(MSGPACK_PARAM_GROUPS)} "
                f"(top-level keys: {sorted(map(str, tree))})")
    elif group not in tree:
        raise CheckpointFileError(f"{path}: flax checkpoint has no {group!r} "
                                  f"(top-level keys: {sorted(map(str, tree))})")
    params = tree[group]
    if isinstance(params, Mapping) and set(params) == {"params"}:  # a {'params': ...} variables
        params = params["params"]
    if not isinstance(params, Mapping):
        raise CheckpointFileError(f"{path}: {group!r} is not a parameter tree")
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    return {"cnn_" + k: _fix_dtype(np.asarray(v)) for k, v in flat.items()}


def load_npz(path: str, msgpack_params: str | None = None) -> dict[str, np.ndarray]:
    """Reads a released checkpoint into flat '/'-joined keys -> arrays.

    ``.npz`` (big_vision): keys as stored (a training checkpoint's ``params/``
    prefix is dropped). flax msgpack (the ImageNet CNN VAE): the generator
    weights under ``msgpack_params`` ("ema_params" or "g_params"; default EMA
    when present), with that prefix renamed to ``cnn_`` (-> ``cnn_encoder/...``).
    """
    if msgpack_params is not None and msgpack_params not in MSGPACK_PARAM_GROUPS:
        raise CheckpointFileError(f"msgpack_params must be one of {MSGPACK_PARAM_GROUPS}, "
                         f"got {msgpack_params!r}")
    if not os.path.exists(path):
        raise CheckpointFileError(f"checkpoint file {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointFileError(f"{path} is a directory; expected a .npz file or a flax "
                                  "msgpack checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":  # a zip archive: .npz
            with np.load(path, allow_pickle=False) as z:
                flat = {k: _fix_dtype(z[k]) for k in z.files}
            if not flat:
                raise CheckpointFileError(f"{path}: the .npz archive holds no arrays")
            return _strip_train_state(flat)
        with open(path, "rb") as f:
            data = f.read()
    except CheckpointFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(f"{path}: cannot read the checkpoint "
                                  f"({type(e).__name__}: {e})") from None
    if not data:
        raise CheckpointFileError(f"{path}: the file is empty")
    return _load_msgpack(path, data, msgpack_params)


def save_npz(path: str, params: Mapping[str, Any]) -> str:
    """Writes a parameter tree (nested or flat) as a big_vision-style flat ``.npz``."""
    np.savez(path, **{k: np.asarray(v) for k, v in _flatten(params).items()})
    return path if path.endswith(".npz") else path + ".npz"


# ----------------------------------------------------------------------- layout mapping
def _split_layer(key: str) -> tuple[str, int | None, str, int] | None:
    """(scanned key, layer index or None if stacked, family, axis) of a block parameter."""
    parts = key.split("/")
    for j, part in enumerate(parts[:-1]):
        for family, (pattern, _, axis) in _LAYER_FAMILIES.items():
            if part == family:
                return key, None, family, axis
            m = pattern.match(part)
            if m:
                stacked = "/".join(parts[:j] + [family] + parts[j + 1:])
                return stacked, int(m.group(1)), family, axis
    return None


def _layer_key(stacked: str, family: str, index: int) -> str:
    """The unrolled name of layer ``index`` of a scanned parameter key."""
    parts = stacked.split("/")
    j = parts.index(family)
    parts[j] = _LAYER_FAMILIES[family][1].format(index)
    return "/".join(parts)


def _remove_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1:]


def _insert_axis(shape: tuple[int, ...], axis: int, n: int) -> tuple[int, ...]:
    return shape[:axis] + (n,) + shape[axis:]


def _plan(source: Mapping[str, tuple[int, ...]], target: Mapping[str, tuple[int, ...]],
          context: str = "") -> dict[str, tuple]:
    """How each target key is made from the source: ("copy", key) | ("stack", keys, axis)
    | ("slice", key, axis, index). Raises :class:`CheckpointMismatch`."""
    plan: dict[str, tuple] = {}
    used: set[str] = set()
    missing: list[str] = []
    shapes: list[str] = []
    # Stacked source keys sliced into unrolled target layers: key -> (axis, {index: shape}).
    sliced: dict[str, tuple[int, dict[int, tuple[int, ...]]]] = {}
    for t, t_shape in target.items():
        if t in source:
            used.add(t)
            plan[t] = ("copy", t)
            if tuple(source[t]) != t_shape:
                shapes.append(f"{t}: checkpoint {tuple(source[t])}, model {t_shape}")
            continue
        layer = _split_layer(t)
        if layer is None:
            missing.append(t)
            continue
        stacked, index, family, axis = layer
        if index is None:  # target stacked: gather the checkpoint's unrolled layers
            if len(t_shape) <= axis:
                missing.append(t)
                continue
            n, per_layer = t_shape[axis], _remove_axis(t_shape, axis)
            keys = [_layer_key(stacked, family, i) for i in range(n)]
            present = [k for k in keys if k in source]
            if not present:
                missing.append(t)
                continue
            missing.extend(k for k in keys if k not in source)
            for k in present:
                used.add(k)
                if tuple(source[k]) != per_layer:
                    shapes.append(f"{k}: checkpoint {tuple(source[k])}, model {per_layer} "
                                  f"(one layer of {t} {t_shape})")
            plan[t] = ("stack", keys, axis)
        else:  # target unrolled: slice the checkpoint's stacked parameter
            if stacked not in source:
                missing.append(t)
                continue
            used.add(stacked)
            sliced.setdefault(stacked, (axis, {}))[1][index] = t_shape
            plan[t] = ("slice", stacked, axis, index)
    for s, (axis, layers) in sliced.items():
        s_shape = tuple(source[s])
        per_layer = set(layers.values())
        n = max(layers) + 1
        want = _insert_axis(next(iter(per_layer)), axis, n) if len(per_layer) == 1 else None
        if want is None or s_shape != want or sorted(layers) != list(range(n)):
            shapes.append(f"{s}: checkpoint {s_shape}, model {want or sorted(per_layer)} "
                          f"({len(layers)} layers stacked on axis {axis})")
    unexpected = sorted(k for k in source if k not in used)
    if missing or unexpected or shapes:
        raise CheckpointMismatch(missing, unexpected, shapes, context)
    return plan


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray | jax.Array)


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    if all(isinstance(k, str) and not isinstance(v, Mapping) for k, v in tree.items()):
        return dict(tree)
    return traverse_util.flatten_dict(dict(tree), sep="/")


def convert_layout(flat: Mapping[str, Any], target: Mapping[str, Any],
                   context: str = "") -> dict[str, Any]:
    """Maps checkpoint arrays onto the structure of ``target`` (an abstract param tree).

    ``flat``: '/'-joined keys -> arrays. Scanned (stacked) and unrolled layer
    layouts are converted either way; values are cast to the target dtype.
    Returns a nested dict of numpy arrays shaped like ``target``. Values that
    are shape-only (``jax.ShapeDtypeStruct``) give a tree of ``ShapeDtypeStruct``
    (a dry run: checks keys and shapes without touching data).
    Raises :class:`CheckpointMismatch` listing missing/unexpected keys and shapes.
    """
    target_flat = _flatten(target)
    target_shapes = {k: tuple(v.shape) for k, v in target_flat.items()}
    plan = _plan({k: tuple(v.shape) for k, v in flat.items()}, target_shapes, context)
    out = {}
    for t, op in plan.items():
        dtype = getattr(target_flat[t], "dtype", None)
        sources = op[1] if op[0] == "stack" else [op[1]]
        if not all(_is_array(flat[s]) for s in sources):
            out[t] = jax.ShapeDtypeStruct(target_shapes[t],
                                          dtype if dtype is not None else flat[sources[0]].dtype)
            continue
        if op[0] == "copy":
            x = np.asarray(flat[op[1]])
        elif op[0] == "stack":
            x = np.stack([np.asarray(flat[s]) for s in op[1]], axis=op[2])
        else:
            x = np.take(np.asarray(flat[op[1]]), op[3], axis=op[2])
        out[t] = x.astype(dtype, copy=False) if dtype is not None else x
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


# ------------------------------------------------------------------- models from configs
def load_into(model_kind: Stage, cfg: ml_collections.ConfigDict,
              flat: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint arrays (from :func:`load_npz`) -> the parameter tree of ``cfg``'s model."""
    target = abstract_params(model_kind, cfg)
    return convert_layout(flat, target, context=f"{model_kind} model of the config")


# A big_vision ViT classifier's encoder -> the stage-2 GIVT's image encoder.
_VIT_ENCODER_PREFIXES = (("embedding/", "EmbedPatches/"), ("Transformer/", "encoder/"))
_VIT_CLASSIFIER_ONLY = ("cls", "head/", "MAPHead_0/", "pre_logits/")


def resample_posemb(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[1, h*w, D] position embeddings of a square grid -> [1, grid[0]*grid[1], D], bilinear
    (the published recipe loads a 224px ViT into 512px UViM stage 2 this way)."""
    import scipy.ndimage
    n, d = posemb.shape[1], posemb.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointFileError(f"pos_embedding has {n} tokens, not a square grid (a class-token "
                         "row included?); cannot resample it to the encoder's grid")
    if (side, side) == tuple(grid):
        return posemb
    x = np.asarray(posemb, np.float32).reshape(side, side, d)
    x = scipy.ndimage.zoom(x, (grid[0] / side, grid[1] / side, 1), order=1)
    return x.reshape(1, grid[0] * grid[1], d)


def load_vit_encoder(path: str, params: Mapping[str, Any], grid: tuple[int, int]
                     ) -> dict[str, Any]:
    """``params`` (a GIVT tree) with its image encoder taken from a big_vision ViT ``.npz``.

    Maps ``embedding/`` -> ``EmbedPatches/``, ``Transformer/`` -> ``encoder/`` (scanned or
    unrolled layers) and ``pos_embedding`` -> ``pos_embedding_encoder``, resampled to the
    encoder's token ``grid``; the classifier's ``cls``/``head``/``MAPHead_0`` are dropped.
    Everything else in ``params`` is kept. Raises :class:`CheckpointMismatch` (naming the
    keys) when the ViT's width, depth or patch size differ from the config's encoder.
    """
    flat = load_npz(path)
    src: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        if key == "pos_embedding":
            src["pos_embedding_encoder"] = resample_posemb(value, grid)
            continue
        for theirs, ours in _VIT_ENCODER_PREFIXES:
            if key.startswith(theirs):
                src[ours + key[len(theirs):]] = value
                break
        else:
            if not key.startswith(_VIT_CLASSIFIER_ONLY):
                src[key] = value  # reported as unexpected below
    if "pos_embedding_encoder" not in src or "EmbedPatches/kernel" not in src:
        raise CheckpointFileError(f"{path}: not a big_vision ViT (needs embedding/kernel and "
                                  f"pos_embedding; has {sorted(flat)[:8]})")
    full = _flatten(params)
    target = {k: v for k, v in full.items()
              if k.split("/", 1)[0] in ("EmbedPatches", "encoder", "pos_embedding_encoder")}
    loaded = _flatten(convert_layout(src, target, context=f"ViT encoder {path}"))
    return traverse_util.unflatten_dict(
        {tuple(k.split("/")): loaded.get(k, v) for k, v in full.items()})


def init_from(path: str, params: Mapping[str, Any], stage: Stage,
              dont_load: Sequence[str] = ()) -> dict[str, Any]:
    """``params`` (a freshly initialised tree of ``stage``) with its values taken from a
    checkpoint, to fine-tune from it: a run directory (that stage's latest checkpoint) or a
    released ``.npz`` / flax msgpack file.

    Parameters whose '/'-joined name fully matches a ``dont_load`` regex keep their fresh
    values (and checkpoint entries matching one are ignored), as big_vision's
    ``model_load.dont_load``. Position embeddings (``pos_embedding*``) of another square
    grid are resampled to the model's. Every other parameter must be in the checkpoint with
    its shape (scanned and unrolled layer layouts convert either way); if not,
    :class:`CheckpointMismatch` lists the missing, unexpected and mis-shaped keys.
    """
    patterns = [re.compile(p) for p in dont_load]

    def skip(key: str) -> bool:
        return any(p.fullmatch(key) for p in patterns)

    if os.path.isdir(path):
        tree, _ = load_params(path, stage)
        flat = {k: np.asarray(v) for k, v in _flatten(tree).items()}
    else:
        flat = load_npz(path)
    full = _flatten(params)
    if "vae" in params and not any(k.startswith("vae/") for k in flat):
        # a released CNN VAE (generator weights only) into {"vae", "disc"}: the VAE part
        flat = {f"vae/{k}": v for k, v in flat.items()}
    target = {k: v for k, v in full.items() if not skip(k)}
    source = {k: v for k, v in flat.items() if not skip(k)}
    if "vae" in params:  # the discriminator is trained afresh when the source has none
        if not any(k.startswith("disc/") for k in source):
            target = {k: v for k, v in target.items() if not k.startswith("disc/")}
    for k, v in target.items():
        if k.split("/")[-1].startswith("pos_embedding") and k in source and \
                np.shape(source[k]) != np.shape(v) and len(np.shape(v)) == 3:
            side = math.isqrt(np.shape(v)[1])
            source[k] = resample_posemb(np.asarray(source[k]), (side, np.shape(v)[1] // side))
    loaded = _flatten(convert_layout(source, target, context=f"{stage} checkpoint {path}"))
    return traverse_util.unflatten_dict(
        {tuple(k.split("/")): loaded.get(k, v) for k, v in full.items()})


def _adaptor_hint(e: CheckpointMismatch) -> str:
    """What to set when only the invertible adaptor (``params_adaptor/``, as big_vision's
    generative trainer stores it next to the GIVT) is what differs."""
    prefix = f"{ADAPTOR_PARAMS_KEY}/"
    if any(k.startswith(prefix) for k in e.unexpected):
        return ("; the checkpoint has an invertible adaptor: --set givt.adaptor.enabled=True "
                "and its num_blocks / num_channels_bottleneck / pixel_shuffle_patch_size")
    if any(k.startswith(prefix) for k in e.missing):
        return "; the checkpoint has no invertible adaptor: --set givt.adaptor.enabled=False"
    return ""


def infer_stage(keys: Sequence[str]) -> Stage:
    """``givt`` if the checkpoint embeds target tokens, ``vae`` if it has a VAE encoder."""
    tops = {k.split("/", 1)[0] for k in keys}
    if "EmbedTargets" in tops:
        return "givt"
    if tops & {"encoder_head", "cnn_encoder"}:
        return "vae"
    raise CheckpointFileError(
        "cannot tell whether the checkpoint is a GIVT (EmbedTargets/...) or a "
                     f"VAE (encoder_head/..., cnn_encoder/...); top-level keys: "
                     f"{sorted(tops)[:12]}; pass --stage")


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or shape structs)."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


# ---------------------------------------------------------------------- run directories
def write_stage_checkpoint(run_dir: str, stage: Stage, params: Any, step: int = 0,
                           meta: Mapping[str, Any] | None = None) -> str:
    """Saves ``params`` (no optimiser state) as the ``stage`` checkpoint at ``step``.

    ``training.checkpoint.load_params(run_dir, stage)`` reads it back; resuming
    training from it is not possible (no ``opt_state`` item).
    """
    import orbax.checkpoint as ocp

    from uvim_givt.training.checkpoint import CheckpointError, StageCheckpoints

    ckpt = StageCheckpoints(run_dir, stage, keep=1_000_000)
    try:
        if step in ckpt.manager.all_steps():
            raise CheckpointError(f"{ckpt.directory} already has a checkpoint at step {step}; "
                                  "pass another --step or --out")
        meta = dict(meta or {}, step=step, train_time_s=0.0)
        ckpt.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
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
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        diff = rundir.config_diff(json.load(f), config_lib.to_dict(cfg))
    if diff:
        raise CheckpointFileError(f"{run_dir} already holds a run with a different config.json "
                         f"({', '.join(diff[:8])} differ); convert into a new --out (or use "
                         "the same config)")


def convert(npz: str, config: str, out: str, overrides: Sequence[str] = (),
            stage: Stage | None = None, step: int = 0,
            msgpack_params: str | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """The command line's work: checkpoint file + config -> run directory ``out``."""
    from uvim_givt.config import load_config, save_config

    flat = load_npz(npz, msgpack_params)
    n_src = sum(math.prod(v.shape) for v in flat.values())
    stage = stage or infer_stage(list(flat))
    log(f"read {len(flat)} arrays ({n_src:,} parameters) from {npz}: a {stage} checkpoint")
    cfg = load_config(config, overrides)
    try:
        params = load_into(stage, cfg, flat)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(e.missing, e.unexpected, e.shapes,
                                 f"{npz} vs the {stage} model of {config}"
                                 + _adaptor_hint(e)) from None
    del flat
    _check_same_config(out, cfg)
    written = {"config": save_config(cfg, out)}
    log(f"wrote {written['config']}")
    source = f"big_vision npz: {npz}"
    written["checkpoint"] = write_stage_checkpoint(out, stage, params, step,
                                                   meta={"source": source})
    log(f"wrote {written['checkpoint']} ({stage} parameters only, no optimiser state)")
    n = count_params(params)
    written["run_info"] = _update_run_info(out, stage, n, source)
    log(f"wrote {written['run_info']} ({stage}: {n:,} parameters)")
    return {"stage": stage, "num_params": n, "step": step, **written}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m uvim_givt.compat.big_vision``; returns the exit code (2 on user errors)."""
    p = ArgumentParser(
        prog="python -m uvim_givt.compat.big_vision",
        description="Convert a released big_vision GIVT/UViM checkpoint into a run directory "
                    "(parameters only: for inference, evaluation, or as stage 1 of stage 2).")
    p.add_argument("--npz", required=True, help=".npz file (or flax msgpack for the CNN VAE)")
    p.add_argument("--config", required=True, help="FILE[:args], e.g. configs/panoptic.py:"
                                                   "size=paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--stage", choices=("givt", "vae"), default=None,
                   help="default: inferred from the checkpoint's keys")
    p.add_argument("--step", type=non_negative_int, default=0,
                   help="checkpoint step to write (default 0)")
    p.add_argument("--msgpack-params", choices=MSGPACK_PARAM_GROUPS, default=None,
                   help="flax msgpack checkpoints: which weights (default ema_params if present)")
    p.add_argument("--out", required=True, help="run directory to write")
    add_verbose_argument(p)
    args = p.parse_args(argv)
    return run_command(lambda: convert(args.npz, args.config, args.out, args.set, args.stage,
                                       args.step, args.msgpack_params), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
