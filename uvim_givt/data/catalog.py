"""The data catalog: where a task's examples come from, opened in one place.

A run names its data by one string, ``data.source`` (the ``--data`` flag):

* ``embedded``: the task's embedded default, a TFDS builder generated locally on first use
  (``tasks/datasets/``; nothing is downloaded);
* ``tfds:NAME``: a prepared TFDS dataset (``TFDS_DATA_DIR`` or ``data.data_dir``);
* ``folder:PATH``: a folder in the dataset's native format (COCO PNG + JSON, NYU HDF5, an
  ImageNet-style class folder), read by the task's folder reader.

A task declares how it reads each kind (:class:`Readers`); :func:`load` opens a source
with one error path (a source that cannot be read is a :class:`DataError` naming it and
saying how to prepare it) and maps every kind to the same raw fields, so the routes after
it (``task.preprocess``) never know where an example came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ml_collections

from uvim_givt.errors import DataError

if TYPE_CHECKING:  # the catalog itself runs without TensorFlow (tests/test_no_tensorflow.py)
    import tensorflow as tf


def parse_source(spec: str | None) -> tuple[str, str]:
    """``'embedded'`` / ``'tfds:NAME'`` / ``'folder:PATH'`` -> (kind, argument)."""
    spec = spec or "embedded"
    if spec == "embedded":
        return "embedded", ""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in ("tfds", "folder") or not arg:
        raise DataError(f"data.source (--data) {spec!r}: expected embedded, tfds:NAME or "
                        "folder:PATH")
    return kind, arg


@dataclasses.dataclass(frozen=True)
class Readers:
    """How one task reads each kind of source.

    embedded: the embedded default: a TFDS builder's class or name (``tasks/datasets/``,
      registered when its module is imported), built on first use; or a function
      (cfg, split) -> ``tf.data.Dataset`` for data made in memory (a toy task).
    embedded_config: cfg -> the builder-config overrides the config asks for (size,
      number of examples).
    folder: (cfg, path, split) -> a ``tf.data.Dataset`` of raw examples; None when the
      task reads no folders.
    fields: (dataset, split) -> the dataset with the task's raw fields only, applied to
      every kind (the embedded and TFDS datasets carry more features than the task reads).
    prepare_hint: how to prepare the real TFDS dataset, said when it is missing.
    """

    embedded: str | type | Callable[[ml_collections.ConfigDict, str], tf.data.Dataset]
    embedded_config: Callable[[ml_collections.ConfigDict], dict[str, Any]] = lambda cfg: {}
    folder: Callable[[ml_collections.ConfigDict, str, str], tf.data.Dataset] | None = None
    fields: Callable[[tf.data.Dataset, str], tf.data.Dataset] | None = None
    prepare_hint: str = "`tfds build NAME`"


def data_dir(cfg: ml_collections.ConfigDict) -> str | None:
    """``data.data_dir`` when the config sets one, else TFDS's usual."""
    return str(cfg.data.data_dir) or None


def load(readers: Readers, cfg: ml_collections.ConfigDict, source: str | None, split: str
         ) -> tf.data.Dataset:
    """The raw examples of ``split`` of ``source``, in a fixed order."""
    kind, arg = parse_source(source)
    if kind == "embedded" and callable(readers.embedded) and not isinstance(
            readers.embedded, type):
        ds = readers.embedded(cfg, split)
    elif kind == "embedded":
        from uvim_givt.data.embedded import ensure_built  # TFDS's builder machinery

        builder = ensure_built(readers.embedded, data_dir=data_dir(cfg),
                               **readers.embedded_config(cfg))
        ds = _split_of(builder, split, "embedded")
    elif kind == "tfds":  # as_dataset, not is_prepared, decides (tfds.testing.mock_data)
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(arg, data_dir=data_dir(cfg))
        except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
            raise DataError(f"data.source tfds:{arg}: no such TFDS dataset ({e})") from None
        ds = _split_of(builder, split, f"tfds:{arg}",
                       "Prepare it first: " + readers.prepare_hint.replace("NAME", arg))
    else:
        if readers.folder is None:
            raise DataError(f"data.source folder:{arg}: this task reads no folders")
        ds = readers.folder(cfg, arg, split)
    return readers.fields(ds, split) if readers.fields is not None else ds


def _split_of(builder: Any, split: str, what: str, hint: str = "") -> tf.data.Dataset:
    try:  # TFDS split syntax included: "train[4096:]", "validation[:10%]"
        return builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
        if hint and not builder.is_prepared():
            raise DataError(f"data.source {what}: not prepared in {builder.data_dir}. "
                            f"{hint}") from None
        splits = ", ".join(sorted(builder.info.splits.keys()))
        raise DataError(f"{what}: cannot read split {split!r} (its splits: {splits}; "
                        f"{type(e).__name__}: {e})") from None
