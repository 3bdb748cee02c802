"""Parameter files: reading and writing them, and converting their layer layout.

Released big_vision parameters are flat ``.npz`` files whose keys are the '/'-joined
parameter paths (see ``tests/data/big_vision_param_trees.json``); the ImageNet CNN VAE is
a flax ``restore_checkpoint`` msgpack file whose generator weights sit under
``ema_params/`` or ``g_params/`` (renamed here to ``cnn_``).

Our modules carry the published names, so loading is a renaming-free mapping, except for
the layer layout: a checkpoint trained with ``nn.scan`` stacks each block parameter on a
layer axis (axis 1 for the GIVT decoder's ``EncDecBlock``, axis 0 for ViT
``encoderblock``), an unrolled one has one entry per layer (``EncDecBlock{i}``,
``encoderblock_{i}``). :func:`convert_layout` converts between the two in either
direction, then checks that every parameter of the target model is present with its shape,
that nothing in the checkpoint is left over, and that every float parameter comes as
finite floats (:func:`check_param_value`).

Used by the warm start (:mod:`uvim_givt.training.warm_start`) and by the converter of
published checkpoints (:mod:`uvim_givt.compat.big_vision`); imports neither.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from uvim_givt.errors import CheckpointError

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


class CheckpointValueError(CheckpointFileError):
    """A checkpoint parameter with the right key and shape but unusable values: non-finite
    (NaN, inf) or not floats where the model has a float parameter."""


def _is_float(dtype: Any) -> bool:
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)  # incl. bfloat16


def check_param_value(key: str, value: Any, file: str | None = None) -> None:
    """Raises :class:`CheckpointValueError` (one line naming ``file`` and ``key``) unless
    ``value`` is a float array of finite values. Shape-only values have their dtype checked."""
    where = file or "checkpoint"
    dtype = getattr(value, "dtype", None)
    if not _is_float(dtype):
        raise CheckpointValueError(f"{where}: parameter {key!r} is {dtype}, expected floats; "
                                   "not a parameter file of this model (or a corrupt one)")
    if not _is_array(value):
        return
    x = np.asarray(value)
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite]
        kinds = [name for name, hit in (("NaN", np.isnan(bad).any()),
                                        ("inf", np.isinf(bad).any())) if hit]
        raise CheckpointValueError(f"{where}: parameter {key!r} holds non-finite values "
                                   f"({' and '.join(kinds)}: {bad.size} of {x.size}); a "
                                   "corrupt or diverged checkpoint")


# ------------------------------------------------------------------------ reading files
def _fix_dtype(x: np.ndarray) -> np.ndarray:
    # np.savez writes bfloat16 arrays as 2-byte void; view them back as bfloat16.
    if x.dtype.kind == "V" and x.dtype.itemsize == 2:
        import ml_dtypes
        return x.view(ml_dtypes.bfloat16)
    return x


def _split_train_state(flat: dict[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(params, state) of a big_vision checkpoint. A training checkpoint (``params/...``,
    ``opt/...``) keeps its params; a UViM VQ-VAE's ``state/...`` (the dictionary and its
    counts) is the state. A bare parameter file is all params."""
    state = {k[len("state/"):]: v for k, v in flat.items() if k.startswith("state/")}
    for prefix in ("params/", "opt/target/"):
        if any(k.startswith(prefix) for k in flat):
            return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}, state
    return flat, state


_NUMBERED = re.compile(r"^(.*)_(\d+)$")


def linen_names(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Module names of older big_vision checkpoints as flax linen names them (what
    big_vision's UViM loaders do on load): top-level ``Encoder``/``Decoder`` become
    ``encoder``/``decoder``, and pre-linen numbering (one counter over all of a module's
    numbered children: ``LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2``) becomes
    one counter per module class (``LayerNorm_0, MultiHeadDotProductAttention_0,
    LayerNorm_1``).

    Only a parent whose numbered children are of two or more classes with all numbers
    distinct is renumbered; linen names (each class from 0) and anything ambiguous (one
    class with a gap, e.g. a missing layer) are kept, so a mismatch is reported, not hidden.
    """
    tops = {k.split("/", 1)[0] for k in flat}
    renames = {old: old.lower() for old in ("Encoder", "Decoder")
               if old in tops and old.lower() not in tops}
    children: dict[str, set[str]] = {}
    for key in flat:
        parts = key.split("/")
        for i in range(len(parts) - 1):  # module names only, not the leaf parameter
            children.setdefault("/".join(parts[:i]), set()).add(parts[i])
    renumber: dict[tuple[str, str], str] = {}
    for parent, names in children.items():
        numbered = [(m.group(1), int(m.group(2)), n) for n in names
                    if (m := _NUMBERED.match(n))]
        numbers = [i for _, i, _ in numbered]
        if len({c for c, _, _ in numbered}) < 2 or len(set(numbers)) < len(numbers):
            continue
        per_class: dict[str, int] = {}
        for cls, _, name in sorted(numbered, key=lambda t: t[1]):
            renumber[(parent, name)] = f"{cls}_{per_class.setdefault(cls, 0)}"
            per_class[cls] += 1
    if not renames and not renumber:
        return dict(flat)
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        new = [renumber.get(("/".join(parts[:i]), p), p) if i < len(parts) - 1 else p
               for i, p in enumerate(parts)]
        new[0] = renames.get(new[0], new[0])
        out["/".join(new)] = value
    return out


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
    """Reads a released checkpoint's parameters into flat '/'-joined keys -> arrays (see
    :func:`read_checkpoint`; a state such as a VQ dictionary is left out)."""
    return read_checkpoint(path, msgpack_params)[0]


def read_checkpoint(path: str, msgpack_params: str | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Reads a released checkpoint: (params, state), each flat '/'-joined keys -> arrays.

    ``.npz`` (big_vision): keys as stored, with a training checkpoint's ``params/`` prefix
    dropped, ``state/...`` (a UViM VQ-VAE's dictionary and counts) as the state, and older
    module names made linen's (:func:`linen_names`). flax msgpack (the ImageNet CNN VAE):
    the generator weights under ``msgpack_params`` ("ema_params" or "g_params"; default EMA
    when present), with that prefix renamed to ``cnn_`` (-> ``cnn_encoder/...``); no state.
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
            params, state = _split_train_state(flat)
            return linen_names(params), state
        with open(path, "rb") as f:
            data = f.read()
    except CheckpointFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointFileError(f"{path}: cannot read the checkpoint "
                                  f"({type(e).__name__}: {e})") from None
    if not data:
        raise CheckpointFileError(f"{path}: the file is empty")
    return _load_msgpack(path, data, msgpack_params), {}


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
                   context: str = "", file: str | None = None) -> dict[str, Any]:
    """Maps checkpoint arrays onto the structure of ``target`` (an abstract param tree).

    ``flat``: '/'-joined keys -> arrays. Scanned (stacked) and unrolled layer
    layouts are converted either way; values are cast to the target dtype.
    Returns a nested dict of numpy arrays shaped like ``target``. Values that
    are shape-only (``jax.ShapeDtypeStruct``) give a tree of ``ShapeDtypeStruct``
    (a dry run: checks keys and shapes without touching data).
    Raises :class:`CheckpointMismatch` listing missing/unexpected keys and shapes, then
    :class:`CheckpointValueError` naming ``file`` and the first (sorted) checkpoint key that
    feeds a float parameter with non-float or non-finite values.
    """
    target_flat = _flatten(target)
    target_shapes = {k: tuple(v.shape) for k, v in target_flat.items()}
    plan = _plan({k: tuple(v.shape) for k, v in flat.items()}, target_shapes, context)
    feeds_float = {s for t, op in plan.items() if _is_float(getattr(target_flat[t], "dtype", None))
                   for s in (op[1] if op[0] == "stack" else [op[1]])}
    for key in sorted(feeds_float):
        check_param_value(key, flat[key], file)
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
