"""Starting a stage from existing parameters (fine-tuning, ``<stage>.init``).

:func:`init_from` takes a fresh stage tree's values from a run directory or a released
``.npz`` / flax msgpack file (``dont_load`` patterns, position embeddings resampled to the
model's grid); :func:`load_vit_encoder` puts a big_vision ViT classifier's encoder into the
stage-2 image encoder (``givt.init_encoder``); :func:`warm_start_fn` is what a stage
definition calls to get its ``warm_start`` from the config.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util

from uvim_givt.errors import CheckpointError, UserError
from uvim_givt.models.builders import Stage, build_model
from uvim_givt.training.checkpoint import load_params
from uvim_givt.training.param_files import (
    CheckpointFileError,
    _flatten,
    check_param_value,
    convert_layout,
    load_npz,
)

Params = Any

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
        raise CheckpointFileError(f"pos_embedding has {n} tokens, not a square grid (a "
                                  "class-token row included?); cannot resample it to the "
                                  "encoder's grid")
    if (side, side) == tuple(grid):
        return posemb
    x = np.asarray(posemb, np.float32).reshape(side, side, d)
    x = scipy.ndimage.zoom(x, (grid[0] / side, grid[1] / side, 1), order=1)
    return x.reshape(1, grid[0] * grid[1], d)


def _merge(full: Mapping[str, Any], loaded: Mapping[str, Any]) -> dict[str, Any]:
    """The nested tree of ``full`` (flat) with the values of ``loaded`` (nested) put in."""
    loaded = _flatten(loaded)
    return traverse_util.unflatten_dict(
        {tuple(k.split("/")): loaded.get(k, v) for k, v in full.items()})


def load_vit_encoder(path: str, params: Mapping[str, Any], grid: tuple[int, int]
                     ) -> dict[str, Any]:
    """``params`` (a GIVT tree) with its image encoder taken from a big_vision ViT ``.npz``.

    Maps ``embedding/`` -> ``EmbedPatches/``, ``Transformer/`` -> ``encoder/`` (scanned or
    unrolled layers) and ``pos_embedding`` -> ``pos_embedding_encoder``, resampled to the
    encoder's token ``grid``; the classifier's ``cls``/``head``/``MAPHead_0`` are dropped.
    Everything else in ``params`` is kept. Raises :class:`CheckpointMismatch` (naming the
    keys) when the ViT's width, depth or patch size differ from the config's encoder, and
    :class:`CheckpointValueError` for non-float or non-finite values.
    """
    flat = load_npz(path)
    for key in sorted(flat):  # named as in the file, before renaming and resampling
        if key == "pos_embedding" or key.startswith(tuple(t for t, _ in _VIT_ENCODER_PREFIXES)):
            check_param_value(key, flat[key], path)
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
    return _merge(full, convert_layout(src, target, context=f"ViT encoder {path}", file=path))


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
    :class:`CheckpointMismatch` lists the missing, unexpected and mis-shaped keys. Non-float
    or non-finite values raise :class:`CheckpointValueError` naming the file and key.
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
            check_param_value(k, source[k], path)  # before resampling casts it to float32
            side = math.isqrt(np.shape(v)[1])
            source[k] = resample_posemb(np.asarray(source[k]), (side, np.shape(v)[1] // side))
    return _merge(full, convert_layout(source, target, context=f"{stage} checkpoint {path}",
                                       file=path))


def _init_from_fn(group: ml_collections.ConfigDict, stage: str
                  ) -> Callable[[Params], Params] | None:
    """The warm start of ``<stage>.init`` (fine-tuning from a run or a released .npz)."""
    if not group.path:
        return None
    path, dont_load = str(group.path), tuple(group.dont_load)

    def warm_start(params):
        params = init_from(path, params, stage, dont_load)
        print(f"{stage}: initialised from {path}"
              + (f" (not loaded: {', '.join(dont_load)})" if dont_load else ""), flush=True)
        return params
    return warm_start


def warm_start_fn(cfg: ml_collections.ConfigDict, stage: str,
                  encoder_grid: tuple[int, int] | None = None
                  ) -> Callable[[Params], Params] | None:
    """The ``warm_start`` of ``stage`` ("vae" | "givt") from ``cfg``, or None for none.

    ``<stage>.init.path`` (with ``<stage>.init.dont_load``): :func:`init_from`. For "givt",
    ``givt.init_encoder`` then loads a big_vision ViT into the image encoder
    (:func:`load_vit_encoder`; a bad file is a :class:`UserError` naming the option), with
    position embeddings resampled to ``encoder_grid`` (default: the config's GIVT model's).
    """
    full_init = _init_from_fn(cfg[stage].init, stage)
    if stage != "givt" or str(cfg.givt.init_encoder) in ("", "none"):
        return full_init
    path = str(cfg.givt.init_encoder)
    if encoder_grid is None:
        encoder_grid = tuple(build_model("givt", cfg).encoder_grid)

    def warm_start(params):
        if full_init is not None:
            params = full_init(params)
        try:
            params = load_vit_encoder(path, params, encoder_grid)
        except (CheckpointError, ValueError, OSError) as e:
            raise UserError(f"givt.init_encoder={path!r}: {e}") from None
        print(f"stage-2 image encoder initialised from {path}", flush=True)
        return params
    return warm_start
