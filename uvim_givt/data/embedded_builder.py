"""Shared pieces of the embedded TFDS builders: sized configs, derived config names, encoding.

A config that is not one of a builder's named configs is addressed by a *derived name*:
the base config's name followed by `-<field><value>` for every overridden field, e.g.
`default-num_train16-num_validation8`. Builders parse such names back, so
`tfds.builder('synthetic_panoptic/default-num_train16', data_dir=...)` and `tfds.load` find a
dataset that `ensure_built` made with `num_train=16`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, ClassVar

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

# Split codes mixed into per-example seeds, so train and validation never share a stream.
SPLIT_CODES = {"train": 0, "validation": 1}

_BASE_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
_TOKEN = re.compile(r"^([a-z_]*[a-z_])(\d[\w.+]*)$")


@dataclasses.dataclass(eq=False)
class EmbeddedConfig(tfds.core.BuilderConfig):
    """Config every embedded dataset shares: split sizes and the base seed."""

    num_train: int = 2000
    num_validation: int = 200
    seed: int = 0


def config_fields(config_cls: type[tfds.core.BuilderConfig]) -> dict[str, type]:
    """The user-settable fields of a config class (name -> python type)."""
    hints = {}
    for f in dataclasses.fields(config_cls):
        if f.name in _BASE_FIELDS:
            continue
        hints[f.name] = float if f.type in ("float", float) else int
    return hints


def derived_config_name(base: tfds.core.BuilderConfig, overrides: dict[str, Any]) -> str:
    """The name of `base` with `overrides` applied (the base name if nothing changes)."""
    changed = {k: v for k, v in sorted(overrides.items()) if getattr(base, k) != v}
    return "-".join([base.name] + [f"{k}{v}" for k, v in changed.items()])


def make_config(
    base: tfds.core.BuilderConfig, overrides: dict[str, Any]
) -> tfds.core.BuilderConfig:
    """A copy of `base` with `overrides` applied and a derived name; validates the keys."""
    fields = config_fields(type(base))
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown config field(s) {unknown} for {type(base).__name__}; "
            f"valid fields: {sorted(fields)}"
        )
    typed = {}
    for key, value in overrides.items():
        try:
            cast = fields[key](value)
        except (TypeError, ValueError):
            cast = None
        if cast is None or (not isinstance(value, str) and cast != value) or cast < 0:
            raise ValueError(f"Config field {key}={value!r} must be a non-negative {fields[key]}")
        typed[key] = cast
    name = derived_config_name(base, typed)
    if name == base.name:
        return base
    return dataclasses.replace(
        base, name=name, description=f"{base.description} Overrides: {typed}.", **typed
    )


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: named configs plus configs addressed by derived names."""

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = []
    _derived: ClassVar[dict[str, tfds.core.BuilderConfig]]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        """The builder's source file.

        TFDS's own lookup touches `importlib_resources`, a backport TFDS only declares for
        Python < 3.9, so on 3.11 it fails unless that package happens to be installed.
        """
        return epath.Path(inspect.getfile(cls))

    @classmethod
    def get_builder_config(cls, name: str, version: Any = None) -> tfds.core.BuilderConfig | None:
        """Named configs first, then `base-field<value>-...` derived names."""
        config = super().get_builder_config(name, version)
        if config is not None:
            return config
        # Cache per class so repeated lookups return the same object (TFDS compares identity).
        cache = cls.__dict__.get("_derived")
        if cache is None:
            cache = {}
            cls._derived = cache
        if name in cache:
            return cache[name]
        base_name, *tokens = name.split("-")
        base = super().get_builder_config(base_name, version)
        if base is None or not tokens:
            return None
        fields = config_fields(type(base))
        overrides: dict[str, Any] = {}
        for token in tokens:
            match = _TOKEN.match(token)
            if not match or match.group(1) not in fields:
                return None
            try:
                overrides[match.group(1)] = fields[match.group(1)](match.group(2))
            except ValueError:
                return None
        config = make_config(base, overrides)
        if config.name != name:  # e.g. an override equal to the base value: not canonical
            return None
        cache[name] = config
        return config

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        """Nothing to download: each split is generated from (seed, split, index)."""
        del dl_manager
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
        }

    def _generate_examples(self, split: str, num_examples: int):  # type: ignore[override]
        raise NotImplementedError


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one example: independent of every other example."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an RGB uint8 image (OpenCV: fast and deterministic)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB uint8 image at `quality` (TF's encode_jpeg default is 95 too)."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
