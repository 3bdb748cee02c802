"""The data catalog: a source opened in one place, every failure one DataError naming it."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from uvim_givt.data import catalog
from uvim_givt.errors import DataError


def _cfg(data_dir: str = "") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": {"data_dir": data_dir}})


def _made(cfg, split):
    n = 3 if split == "train" else 2
    return tf.data.Dataset.from_tensor_slices({"x": np.arange(n), "extra": np.zeros(n)})


READERS = catalog.Readers(embedded=_made, prepare_hint="`tfds build NAME` (needs a download)",
                          fields=lambda ds, split: ds.map(lambda ex: {"x": ex["x"]}))


def test_embedded_functions_and_fields_apply_to_every_kind():
    got = list(catalog.load(READERS, _cfg(), "embedded", "train").as_numpy_iterator())
    assert got == [{"x": 0}, {"x": 1}, {"x": 2}]  # the task's raw fields only


@pytest.mark.parametrize("source,words", [
    ("tfds", "expected embedded, tfds:NAME or folder:PATH"),
    ("hub:x", "expected embedded, tfds:NAME or folder:PATH"),
    ("folder:/data/x", "folder:/data/x: this task reads no folders"),
    ("tfds:no_such_dataset_xyz", "tfds:no_such_dataset_xyz: no such TFDS dataset"),
])
def test_bad_sources_are_one_data_error(source, words):
    with pytest.raises(DataError, match=words):
        catalog.load(READERS, _cfg(), source, "train")


def test_an_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError) as err:
        catalog.load(READERS, _cfg(str(tmp_path)), "tfds:mnist", "train")
    msg = str(err.value)
    assert "tfds:mnist: not prepared in" in msg and str(tmp_path) in msg
    assert "Prepare it first: `tfds build mnist` (needs a download)" in msg
