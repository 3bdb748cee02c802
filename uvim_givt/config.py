"""Config files and command-line overrides.

A config file is a Python file defining ``get_config(arg: str | None)`` that
returns an ``ml_collections.ConfigDict``. It is named on the command line as
``configs/x.py:size=tiny,foo=bar``: the part after the colon is handed to
``get_config`` (use :func:`parse_arg` there to turn it into typed values).
Any field can then be overridden with ``--set model.emb_dim=128``; a key that
does not exist or a value of the wrong type fails with :class:`ConfigError`,
which names the key and the valid keys near it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from uvim_givt.errors import ConfigError

ConfigDict = ml_collections.ConfigDict

_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")




def _literal(text: str) -> Any:
    """Parses a command-line value: Python literal if it is one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parses ``"size=tiny,steps=10"`` into a ConfigDict typed after ``defaults``.

    Keys not in ``defaults`` are rejected, so a typo in a preset name fails loudly.
    """
    out = dict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} is not of the form key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            near = difflib.get_close_matches(key, list(defaults), n=3)
            raise ConfigError(
                f"unknown config argument {key!r}; valid: {sorted(defaults)}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
            )
        out[key] = _coerce(key, _literal(value), defaults[key])
    return ConfigDict(out)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Checks ``value`` against the type of the field's current value (a field that is None
    takes any value; its rule in :mod:`uvim_givt.schema` checks it)."""
    if current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} expects text (currently {current!r}), got {value!r}; quote "
                          "it (\"'...'\") if you mean it as text")
    elif isinstance(current, list | tuple):
        if isinstance(value, list | tuple):
            return type(current)(value)
        if isinstance(value, int | float | str):  # "a=1" for a one-element tuple
            return type(current)([value])
    else:
        return value
    raise ConfigError(
        f"{key} expects {type(current).__name__} (currently {current!r}), got {value!r}"
    )


def all_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf (and sub-dict) of a config."""
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, Mapping | ConfigDict):
            keys.extend(all_keys(v, path + "."))
    return keys


def set_value(cfg: ConfigDict, dotted: str, raw: Any) -> None:
    """Sets ``cfg[dotted] = raw`` after checking the key exists and the type fits."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping | ConfigDict) or part not in node:
            valid = all_keys(cfg)
            near = difflib.get_close_matches(dotted, valid, n=5, cutoff=0.5)
            parent = ".".join(parts[:i])
            siblings = sorted(node.keys()) if isinstance(node, Mapping | ConfigDict) else []
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            where = f" under {parent!r}" if parent else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} (valid keys{where}: {', '.join(siblings)})"
            )
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    value = _literal(raw) if isinstance(raw, str) else raw
    current = node[leaf]
    if isinstance(current, ConfigDict | Mapping):
        raise ConfigError(f"{dotted!r} is a group of settings; set one of its keys instead")
    with node.ignore_type():
        node[leaf] = _coerce(dotted, value, current)


def apply_overrides(cfg: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
    """Applies ``key=value`` strings (as given to ``--set``) in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def _load_module(path: str):
    name = "_uvim_cfg_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    return module


def resolve_config_path(path: str) -> str:
    """Finds a config file exactly as given; only the project's own ``configs/NAME.py``
    (as the README spells it) is also found from another working directory. Any other
    missing path is an error, never a silent fallback to a project config of that name."""
    if os.path.isfile(path):
        return path
    candidate = os.path.join(_CONFIGS_DIR, os.path.basename(path))
    if os.path.normpath(path) == os.path.join("configs", os.path.basename(path)) and \
            os.path.isfile(candidate):
        return candidate
    available = sorted(f for f in os.listdir(_CONFIGS_DIR) if f.endswith(".py") and f[0] != "_")
    raise ConfigError(f"config file {path!r} not found (configs available: {available})")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ConfigDict:
    """Loads ``path.py[:arg]`` and applies ``--set`` overrides."""
    path, _, arg = spec.partition(":")
    module = _load_module(resolve_config_path(path))
    cfg = module.get_config(arg or None)
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    cfg = apply_overrides(cfg, overrides)
    return cfg


def stage2_style(cfg: ConfigDict) -> str:
    """How stage 2 decodes: ``givt.model.style`` of a GIVT ("ar" causal, "masked"
    MaskGIT); "ar" for the original UViM's VTT (``givt.kind="vtt"``), which is causal."""
    return "ar" if str(cfg.givt.kind) == "vtt" else str(cfg.givt.model.style)


def to_dict(cfg: ConfigDict) -> dict[str, Any]:
    return json.loads(cfg.to_json_best_effort())


#: The format of the run directories this version writes and reads. Older ones are refused
#: with what changed, unless every change since is one of :data:`FORMAT_UPGRADES` (one policy:
#: no silent defaults for keys an old run lacks, except values that reproduce exactly what the
#: old run did).
RUN_FORMAT = 6
FORMAT_KEY = "uvim_givt_format"
FORMAT_CHANGES = {
    2: "givt.sampling holds every sampling setting (cfg_weight, cfg_max_samples, "
       "unconditional, num_samples, test_time_flip, the causal and the MaskGIT options; "
       "configs/common.py:sampling_group), the depth protocol keys are all in the config, "
       "and eval records carry their metric metadata",
    3: "every evaluator says whether it runs after training (after_training; the dense "
       "tasks gain the exposure and uncertainty evaluators), a stage-2 loss evaluator what "
       "its NLL scores (codes); the ImageNet crop is data.crop_area_min (was "
       "data.random_crop)",
    4: "the train groups have grad_accum (micro-batches per step) and cached_codes (stage 2 "
       "from precomputed stage-1 codes)",
    5: "stage 2 has a kind (givt.kind: givt, or vtt for the original UViM's discrete "
       "stage 2)",
    6: "stage 2 has label_smoothing (of code ids; 0 = the plain cross-entropy), every "
       "layer stack a remat_policy (beside scan)",
}


def _format_4(saved: dict[str, Any]) -> None:
    """Format 3 -> 4: the keys that format 3 ran without, at the values that do what it did
    (one batch per step; stage-1 codes computed in the step)."""
    for stage in ("vae", "givt"):
        group = saved.get(stage)
        train = group.get("train") if isinstance(group, dict) else None
        if isinstance(train, dict):
            train.setdefault("grad_accum", 1)
            train.setdefault("cached_codes", False)


def _format_5(saved: dict[str, Any]) -> None:
    """Format 4 -> 5: every stage 2 before format 5 was a GIVT."""
    group = saved.get("givt")
    if isinstance(group, dict):
        group.setdefault("kind", "givt")


def _format_6(saved: dict[str, Any]) -> None:
    """Format 5 -> 6: every stage 2 before format 6 trained on the plain cross-entropy, and
    every scanned layer stack recomputed its layers' forward passes (the models' default
    before the key existed, big_vision's "nothing_saveable")."""
    group = saved.get("givt")
    if isinstance(group, dict):
        group.setdefault("label_smoothing", 0.0)
    for stage in ("vae", "givt"):
        group = saved.get(stage)
        model = group.get("model") if isinstance(group, dict) else None
        if isinstance(model, dict) and "scan" in model:
            model.setdefault("remat_policy", "nothing_saveable")


#: format -> the function that brings a config of the format before it up to it (in place)
FORMAT_UPGRADES = {4: _format_4, 5: _format_5, 6: _format_6}


def save_config(cfg: ConfigDict, run_dir: str, name: str = "config.json") -> str:
    """Writes the resolved config as JSON into the run directory, with the run format."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, name)
    with open(path, "w") as f:
        json.dump({**to_dict(cfg), FORMAT_KEY: RUN_FORMAT}, f, indent=1, sort_keys=True)
    return path


def load_saved_config(run_dir: str, name: str = "config.json") -> ConfigDict:
    """Reads the config a run directory was created with. A run written by an older
    uvim_givt is brought up to date when every change since has an upgrade
    (:data:`FORMAT_UPGRADES`), else refused with one message saying what changed."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir} is not a run directory: {name} is missing")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable config ({e})") from None
    version = saved.pop(FORMAT_KEY, 1) if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or not isinstance(version, int) or version > RUN_FORMAT:
        raise ConfigError(f"{path}: not a config of this uvim_givt (format {version!r}; this "
                          f"version reads format {RUN_FORMAT})")
    missing = [v for v in range(version + 1, RUN_FORMAT + 1) if v not in FORMAT_UPGRADES]
    if missing:
        changes = "; ".join(f"format {v}: {FORMAT_CHANGES[v]}"
                            for v in range(version + 1, RUN_FORMAT + 1))
        raise ConfigError(f"{run_dir} was written by an older uvim_givt (run format {version}, "
                          f"this version reads {RUN_FORMAT}). What changed: {changes}. "
                          "Retrain into a new --workdir (or use the older uvim_givt to "
                          "evaluate it).")
    for v in range(version + 1, RUN_FORMAT + 1):
        FORMAT_UPGRADES[v](saved)
    return ConfigDict(saved)
