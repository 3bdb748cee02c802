"""Build-on-first-use access to the embedded default datasets (no download, ever).

    builder = ensure_built("synthetic_panoptic")                  # default config
    builder = ensure_built("synthetic_depth/nyu_size")            # a named config
    builder = ensure_built("digits", data_dir=tmp, image_size=64)  # field overrides
    ds = builder.as_dataset(split="train")

Overrides make a config with a derived name (`default-num_train16`) that TFDS resolves again
later, so `tfds.load(embedded_name(...), data_dir=...)` reads the same dataset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from uvim_givt.data.embedded_builder import EmbeddedBuilder, config_fields, make_config
from uvim_givt.quiet import verbose_requested

__all__ = ["builder_class", "embedded_name", "ensure_built"]


def builder_class(dataset: str | type[EmbeddedBuilder]) -> type[EmbeddedBuilder]:
    """The embedded builder class of ``dataset`` (a class, or the name of one whose module
    was imported, which registers it with TFDS: the tasks' ``tasks/datasets/``)."""
    if isinstance(dataset, type):
        return dataset
    try:
        cls = tfds.builder_cls(dataset)
    except Exception:  # noqa: BLE001 - TFDS raises several kinds for an unknown name
        cls = None
    if cls is None or not issubclass(cls, EmbeddedBuilder):
        raise ValueError(f"Unknown embedded dataset {dataset!r} (the embedded datasets are "
                         "the builders of tasks/datasets/, registered when imported)")
    return cls


def embedded_name(name: str | type[EmbeddedBuilder], **config: Any) -> str:
    """Full TFDS name (`dataset/config`) of an embedded dataset with config overrides.

    `name` is `dataset` or `dataset/config`; `config` overrides that config's fields
    (e.g. num_train=16, image_size=128, seed=1). Raises ValueError naming a bad name or field.
    """
    if isinstance(name, type):
        name = name.name
    dataset, _, base_name = name.partition("/")
    cls = builder_class(dataset)
    base_name = base_name or cls.DEFAULT_BUILDER_CONFIG_NAME
    base = cls.get_builder_config(base_name)
    root = cls.get_builder_config(base_name.split("-")[0])
    if base is None or root is None:
        raise ValueError(
            f"Unknown config {base_name!r} of {dataset!r}; named configs: "
            f"{sorted(c.name for c in cls.BUILDER_CONFIGS)} (or pass field overrides)"
        )
    # A derived base (`default-seed3`) is re-derived from its named root, so names stay canonical.
    inherited = {
        k: getattr(base, k)
        for k in config_fields(type(base))
        if getattr(base, k) != getattr(root, k)
    }
    return f"{dataset}/{make_config(root, {**inherited, **config}).name}"


def ensure_built(name: str | type[EmbeddedBuilder], data_dir: str | None = None,
                 **config: Any) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder of an embedded dataset, generating it on first use.

    `data_dir` defaults to TFDS's usual (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    Generation is deterministic by the config's seed. It says one line when it starts and
    one when it is done; TFDS's own messages and progress bars (nested bars with cursor
    codes, an absl warning about the folder it is about to fill) only with ``--verbose``.
    """
    full_name = embedded_name(name, **config)
    with _quiet_tfds():  # our lines go to stderr, which stays open
        builder = tfds.builder(full_name, data_dir=data_dir)
        if not builder.is_prepared():
            print(f"Building embedded dataset {full_name} into {builder.data_dir} "
                  "(first use; generated locally, nothing is downloaded)...",
                  file=sys.stderr, flush=True)
            start = time.perf_counter()
            builder.download_and_prepare()
            sizes = ", ".join(f"{split} {info.num_examples}"
                              for split, info in sorted(builder.info.splits.items()))
            print(f"built {full_name} in {time.perf_counter() - start:.0f} s ({sizes} "
                  "examples)", file=sys.stderr, flush=True)
    return builder


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS without its progress bars, its stdout messages and absl records below ERROR
    (unless ``--verbose``); errors still raise."""
    if verbose_requested():
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils

    absl_logger = logging.getLogger("absl")
    bars, level = tqdm_utils._active, absl_logger.level
    tfds.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)
        absl_logger.setLevel(level)
