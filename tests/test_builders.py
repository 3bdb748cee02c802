"""The embedded TFDS datasets: features as the real ones, consistent labels, determinism."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tasks.datasets.digits  # noqa: F401  (importing registers the builders)
import tasks.datasets.synthetic_depth  # noqa: F401
import tasks.datasets.synthetic_panoptic  # noqa: F401
from evals.pq import panoptic_quality
from tasks.datasets.synthetic_depth import DEPTH_RANGE
from tasks.datasets.synthetic_panoptic import (
    CATEGORIES,
    STUFF_LABELS,
    THING_LABELS,
    export_coco_format,
    image_id_for,
    render_panoptic,
    rgb_to_ids,
)
from uvim_givt.data.embedded import embedded_name, ensure_built
from uvim_givt.data.embedded_builder import example_rng

TINY = {"num_train": 16, "num_validation": 8}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two independent data dirs, for the determinism check."""
    return str(tmp_path_factory.mktemp("tfds_a")), str(tmp_path_factory.mktemp("tfds_b"))


@pytest.fixture(scope="module")
def panoptic(data_dirs: tuple[str, str]) -> tfds.core.DatasetBuilder:
    return ensure_built("synthetic_panoptic", data_dir=data_dirs[0], **TINY)


@pytest.fixture(scope="module")
def depth(data_dirs: tuple[str, str]) -> tfds.core.DatasetBuilder:
    return ensure_built("synthetic_depth", data_dir=data_dirs[0], **TINY)


@pytest.fixture(scope="module")
def digits(data_dirs: tuple[str, str]) -> tfds.core.DatasetBuilder:
    return ensure_built("digits", data_dir=data_dirs[0])


def _examples(builder: tfds.core.DatasetBuilder, split: str) -> list[dict[str, Any]]:
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _signature(feature: Any, exact_shapes: bool = True) -> Any:
    """Structure of a feature: classes, dtypes, shapes (or ranks), image encodings.

    ClassLabel sizes are left out: the class lists differ by design.
    """
    if isinstance(feature, tfds.features.FeaturesDict):
        return {k: _signature(v, exact_shapes) for k, v in feature.items()}
    if isinstance(feature, tfds.features.Sequence):
        return ("Sequence", _signature(feature.feature, exact_shapes))
    shape = tuple(feature.shape) if exact_shapes else len(feature.shape)
    sig = (type(feature).__name__, repr(feature.dtype), shape)
    if isinstance(feature, tfds.features.Image):
        sig += (feature.encoding_format,)
    return sig


def _real_info(name: str, tmp_path: Path) -> tfds.core.DatasetInfo:
    # DatasetInfo of a real builder is available offline; nothing is downloaded.
    return tfds.builder(name, data_dir=str(tmp_path)).info


# --- configs and features -------------------------------------------------------------------


def test_default_configs_promise_full_sizes(tmp_path: Path) -> None:
    for name in ("synthetic_panoptic", "synthetic_depth"):
        config = tfds.builder(name, data_dir=str(tmp_path)).builder_config
        assert config.name == "default"
        assert config.num_train >= 2000 and config.num_validation >= 200
    assert (
        tfds.builder("synthetic_panoptic", data_dir=str(tmp_path)).builder_config.image_size == 64
    )
    nyu = tfds.builder("synthetic_depth/nyu_size", data_dir=str(tmp_path))
    assert not nyu.is_prepared()
    assert _signature(nyu.info.features) == _signature(
        _real_info("nyu_depth_v2", tmp_path).features
    )


def test_features_match_real_datasets(tmp_path: Path) -> None:
    pairs = [
        ("synthetic_panoptic", "coco/2017_panoptic", True),
        ("synthetic_depth", "nyu_depth_v2", False),  # same up to the (configurable) frame size
        ("digits", "imagenet2012", True),
    ]
    for ours, real, exact in pairs:
        ours_info = tfds.builder(ours, data_dir=str(tmp_path)).info
        real_info = _real_info(real, tmp_path)
        assert _signature(ours_info.features, exact) == _signature(real_info.features, exact), ours
        assert ours_info.supervised_keys == real_info.supervised_keys, ours
    # imagenette is imagenet2012 without file_name.
    imagenette = _signature(_real_info("imagenette", tmp_path).features)
    digits_sig = _signature(tfds.builder("digits", data_dir=str(tmp_path)).info.features)
    assert {k: digits_sig[k] for k in imagenette} == imagenette


def test_config_names_and_errors(tmp_path: Path) -> None:
    assert embedded_name("synthetic_panoptic") == "synthetic_panoptic/default"
    assert embedded_name("synthetic_panoptic", num_train=2000) == "synthetic_panoptic/default"
    name = embedded_name("synthetic_depth/tiny", seed=3, height=30, width=40)
    assert name == "synthetic_depth/tiny-height30-seed3-width40"
    config = tfds.builder(name, data_dir=str(tmp_path)).builder_config
    assert (config.height, config.width, config.seed, config.num_train) == (30, 40, 3, 32)
    assert (
        embedded_name(name, num_train=4) == "synthetic_depth/tiny-height30-num_train4-seed3-width40"
    )
    assert embedded_name("synthetic_depth/tiny-seed3", seed=0) == "synthetic_depth/tiny"
    with pytest.raises(ValueError, match="image_sise"):
        embedded_name("synthetic_panoptic", image_sise=32)
    with pytest.raises(ValueError, match="nope"):
        embedded_name("nope")
    with pytest.raises(ValueError, match="huge"):
        embedded_name("digits/huge")


# --- synthetic_panoptic ---------------------------------------------------------------------


def _check_panoptic_example(ex: dict[str, Any]) -> np.ndarray:
    """Checks PNG ids against panoptic_objects; returns the labels of the segments."""
    ids = rgb_to_ids(ex["panoptic_image"])
    h, w = ids.shape
    assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
    objects = ex["panoptic_objects"]
    obj_ids = [int(i) for i in objects["id"]]
    assert len(set(obj_ids)) == len(obj_ids) and min(obj_ids) > 0
    assert set(np.unique(ids[ids > 0]).tolist()) == set(obj_ids)
    for k, seg_id in enumerate(obj_ids):
        mask = ids == seg_id
        assert int(objects["area"][k]) == int(mask.sum())
        ys, xs = np.nonzero(mask)
        expected = [ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w]
        np.testing.assert_allclose(objects["bbox"][k], expected, atol=1e-6)
    labels = objects["label"]
    num_things = int(np.isin(labels, THING_LABELS).sum())
    assert 1 <= num_things <= 6
    # Stuff classes are merged per category, as in COCO.
    stuff = labels[np.isin(labels, STUFF_LABELS)]
    assert len(set(stuff.tolist())) == len(stuff)
    return labels


def test_panoptic_png_matches_objects(panoptic: tfds.core.DatasetBuilder) -> None:
    used: set[int] = set()
    has_void = 0
    for split, n in (("train", 16), ("validation", 8)):
        examples = _examples(panoptic, split)
        assert len(examples) == n
        for ex in examples:
            used |= set(_check_panoptic_example(ex).tolist())
            has_void += int((rgb_to_ids(ex["panoptic_image"]) == 0).any())
            name = ex["image/filename"].decode()
            assert name == f"{int(ex['image/id']):012d}.jpg"
            assert ex["panoptic_image/filename"].decode() == name.replace(".jpg", ".png")
    assert len(used & set(STUFF_LABELS)) >= 3 and len(used & set(THING_LABELS)) >= 5
    assert has_void > 0
    assert panoptic.info.metadata["categories"] == CATEGORIES
    assert panoptic.info.features["panoptic_objects"]["label"].names == [
        c["name"] for c in CATEGORIES
    ]


def test_panoptic_examples_are_independent_of_split_size(
    panoptic: tfds.core.DatasetBuilder,
) -> None:
    # Example i depends only on (seed, split, i): re-rendering it alone gives the same labels.
    wanted = image_id_for("validation", 4)
    ex = next(e for e in _examples(panoptic, "validation") if int(e["image/id"]) == wanted)
    _, pan, segments = render_panoptic(example_rng(0, "validation", 4), 64)
    np.testing.assert_array_equal(rgb_to_ids(ex["panoptic_image"]), pan)
    assert [s["id"] for s in segments] == ex["panoptic_objects"]["id"].tolist()


def test_panoptic_crowd_and_shapes() -> None:
    crowd = 0
    counts = np.zeros(len(CATEGORIES), int)
    for i in range(300):
        image, pan, segments = render_panoptic(example_rng(7, "train", i), 48)
        assert image.shape == (48, 48, 3) and pan.shape == (48, 48)
        crowd += sum(s["is_crowd"] for s in segments)
        for s in segments:
            counts[s["label"]] += 1
            assert not s["is_crowd"] or CATEGORIES[s["label"]]["isthing"]
    assert 3 <= crowd <= 40  # ~5% of images hold one crowd segment
    assert (counts > 0).all()
    _, _, segments = render_panoptic(example_rng(0, "train", 0), 64, crowd_percent=100)
    assert sum(s["is_crowd"] for s in segments) == 1


def test_export_coco_format(panoptic: tfds.core.DatasetBuilder, tmp_path: Path) -> None:
    paths = export_coco_format(panoptic, str(tmp_path / "coco"), split="validation")
    with open(paths["json"]) as f:
        gt = json.load(f)
    assert paths["png_dir"] == paths["json"][: -len(".json")]  # where panopticapi looks
    category_ids = {c["id"] for c in gt["categories"]}
    assert {c["id"] for c in CATEGORIES} == category_ids
    assert all({"id", "name", "isthing", "color"} <= set(c) for c in gt["categories"])
    assert len(gt["images"]) == len(gt["annotations"]) == 8
    image_ids = {im["id"] for im in gt["images"]}
    for image, ann in zip(gt["images"], gt["annotations"], strict=True):
        assert ann["image_id"] in image_ids
        assert os.path.exists(os.path.join(paths["image_dir"], image["file_name"]))
        png = cv2.imread(os.path.join(paths["png_dir"], ann["file_name"]))[..., ::-1]
        assert png.shape[:2] == (image["height"], image["width"])
        ids = rgb_to_ids(png)
        segs = ann["segments_info"]
        assert set(np.unique(ids[ids > 0]).tolist()) == {s["id"] for s in segs}
        for s in segs:
            assert s["category_id"] in category_ids and s["iscrowd"] in (0, 1)
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum()
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
    # The PQ evaluator (equal to panopticapi's pq_compute: tests/test_eval_panoptic.py) reads
    # it as COCO's: ground truth scored against itself is perfect.
    results = panoptic_quality(paths["json"], paths["png_dir"], paths["json"], paths["png_dir"])
    assert results["All"]["pq"] == pytest.approx(1.0) and results["All"]["n"] >= 5
    # A decoded tf.data split exports the same annotations.
    again = export_coco_format(
        panoptic.as_dataset(split="validation", shuffle_files=False), str(tmp_path / "coco2")
    )
    with open(again["json"]) as f:
        assert json.load(f)["annotations"] == gt["annotations"]


# --- synthetic_depth ------------------------------------------------------------------------


def test_depth_frames(depth: tfds.core.DatasetBuilder) -> None:
    for split, n in (("train", 16), ("validation", 8)):
        examples = _examples(depth, split)
        assert len(examples) == n
        for ex in examples:
            assert ex["image"].shape == (60, 80, 3) and ex["image"].dtype == np.uint8
            d = ex["depth"]
            assert d.shape == (60, 80) and d.dtype == np.float16
            assert np.isfinite(d).all()
            assert DEPTH_RANGE[0] < d.min() and d.max() < DEPTH_RANGE[1]
            assert d.max() - d.min() > 0.5 and ex["image"].std() > 5  # a scene, not a blank


# --- digits ---------------------------------------------------------------------------------


def test_digits(digits: tfds.core.DatasetBuilder) -> None:
    assert set(digits.info.splits) == {"train", "validation"}
    assert digits.info.features["label"].names == [str(i) for i in range(10)]
    train, val = _examples(digits, "train"), _examples(digits, "validation")
    assert len(train) + len(val) == 1797
    assert 0.18 < len(val) / 1797 < 0.22
    names = {ex["file_name"] for ex in train} | {ex["file_name"] for ex in val}
    assert len(names) == 1797  # disjoint splits
    for split in (train, val):
        assert set(int(ex["label"]) for ex in split) == set(range(10))
    image = train[0]["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.max() > 128


# --- determinism ----------------------------------------------------------------------------


def _record_digest(builder: tfds.core.DatasetBuilder) -> dict[str, str]:
    files = sorted(p for p in os.listdir(builder.data_dir) if ".tfrecord" in p)
    assert files
    return {p: hashlib.sha256(Path(builder.data_dir, p).read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("name", ["synthetic_panoptic", "synthetic_depth"])
def test_builds_are_deterministic(
    name: str, data_dirs: tuple[str, str], panoptic: Any, depth: Any
) -> None:
    first = {"synthetic_panoptic": panoptic, "synthetic_depth": depth}[name]
    second = ensure_built(name, data_dir=data_dirs[1], **TINY)
    assert first.data_dir != second.data_dir
    assert _record_digest(first) == _record_digest(second)  # same bytes
    other_seed = ensure_built(name, data_dir=data_dirs[1], seed=1, **TINY)
    assert _record_digest(other_seed) != _record_digest(first)
