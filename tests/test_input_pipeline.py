"""The panoptic label encodings as TensorFlow graph ops (``encode_panoptic_tf`` /
``encode_things_tf``, what the input pipeline runs) against their numpy reference
(``encode_panoptic`` / ``encode_things``, what it ran in ``tf.numpy_function`` before):
the same int32 maps bit for bit on random scenes (ties, unlisted ids, crowd, empty lists,
capped instance channels), on the real COCO samples in ../shared/data (skipped when absent),
through ``PanopticTask.preprocess``, and the same one-line errors for bad fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from evals.panoptic_io import rgb_to_id
from tasks import panoptic as P
from uvim_givt import errors

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "sample_data").is_dir(),
    reason="needs ../shared/data/coco_panoptic_sample (real COCO annotations; not in CI)")


def _random_scene(rng: np.random.RandomState) -> tuple:
    """A small id map (pixel noise or blocks, some ids unlisted, 0 = void) and its fields."""
    h, w = rng.randint(1, 33, 2)
    n = rng.randint(0, 14)
    listed = rng.choice(np.arange(1, 300), n, replace=False)
    pool = np.concatenate([listed, [0, 301, 302]])  # 0 and 30x: never listed
    kind = rng.randint(3)
    if kind == 0:
        ids = rng.choice(pool, (h, w))
    elif kind == 1:  # blocks
        b = rng.randint(1, 6)
        ids = np.kron(rng.choice(pool, (h // b + 1, w // b + 1)), np.ones((b, b), int))[:h, :w]
    else:  # symmetric about both axes: every centre is the middle, all keys tie
        ids = rng.choice(pool, (h, w))
        ids = np.maximum(ids, ids[::-1])
        ids = np.maximum(ids, ids[:, ::-1])
    labels = rng.randint(0, 12, n)
    crowd = rng.rand(n) < 0.25
    isthing = rng.rand(12) < 0.6
    return ids.astype(np.int32), listed, labels, crowd, isthing, int(rng.randint(1, 10))


def _both(ids, oid, lab, crowd, isthing, num_instances, num_categories=12):
    """[(numpy reference, graph version)] of both encodings."""
    return [(P.encode_panoptic(ids, oid, lab, num_instances, num_categories),
             P.encode_panoptic_tf(ids, oid, lab, num_instances, num_categories).numpy()),
            (P.encode_things(ids, oid, lab, crowd, isthing, num_instances),
             P.encode_things_tf(ids, oid, lab, crowd, isthing, num_instances).numpy())]


def test_graph_encodings_equal_numpy_on_random_scenes():
    rng = np.random.RandomState(0)
    ties = 0
    for _ in range(120):
        scene = _random_scene(rng)
        for want, got in _both(*scene):
            assert got.dtype == want.dtype == np.int32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        # Count scenes whose canonical keys tie, so the tie-break is really exercised.
        ids, oid = scene[:2]
        keys = [np.argwhere(ids == s).mean(0) @ [ids.shape[0], 1] for s in oid if (ids == s).any()]
        ties += len(keys) != len(set(keys))
    assert ties >= 10


def test_ties_keep_the_row_major_first_appearance():
    """A ring and the blob at its centre share a centre of mass: the one met first in a
    row-major scan (the ring) is ranked first, in both orders."""
    ids = np.zeros((7, 7), np.int32)
    ids[1:6, 1:6] = 5  # ring: rows 1..5, columns 1..5, centre (3, 3)
    ids[2:5, 2:5] = 0
    ids[3, 3] = 9  # blob: centre (3, 3)
    oid, lab = np.array([9, 5]), np.array([1, 1])
    for want, got in _both(ids, oid, lab, np.zeros(2, bool), np.ones(12, bool), 10):
        np.testing.assert_array_equal(got, want)
        assert got[1, 1, 1] == 1 and got[3, 3, 1] == 2


def test_empty_lists_and_capped_instance_channels():
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    none = np.zeros(0, np.int64)
    for want, got in _both(ids, none, none, np.zeros(0, bool), np.ones(12, bool), 5):
        np.testing.assert_array_equal(got, want)
        assert not got.any()
    oid = np.arange(12)
    for want, got in _both(ids, oid, oid % 12, oid % 3 == 0, np.ones(12, bool), 4):
        np.testing.assert_array_equal(got, want)
        assert got[..., 1].max() == 3  # ranks 4.. do not fit 4 instance channels


def _coco_sample():
    doc = json.loads((SAMPLE / "sample_data" / "panoptic_examples.json").read_text())
    cats = doc["categories"]
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    isthing = np.array([c["isthing"] == 1 for c in cats])
    out = []
    for ann in doc["annotations"]:
        png = SAMPLE / "sample_data" / "panoptic_examples" / ann["file_name"]
        ids = rgb_to_id(cv2.imread(str(png))[..., ::-1]).astype(np.int32)
        segs = ann["segments_info"]
        out.append((ids, np.array([s["id"] for s in segs]),
                    np.array([label_of[s["category_id"]] for s in segs]),
                    np.array([bool(s["iscrowd"]) for s in segs])))
    return out, cats, isthing


@needs_sample
def test_graph_encodings_equal_numpy_on_real_coco():
    """Whole frames, the paper's 512 px, crops (fewer segments) and a short instance
    channel, on both COCO samples (stuff, things and crowd)."""
    examples, cats, isthing = _coco_sample()
    for ids, oid, lab, crowd in examples:
        views = [ids, P.resize_nearest(ids, (512, 512)), ids[60:260, 300:560],
                 P.resize_nearest(ids[100:400, 50:300], (512, 512))]
        for view in views:
            for n_inst in (100, 8):
                for want, got in _both(view, oid, lab, crowd, isthing, n_inst, len(cats)):
                    np.testing.assert_array_equal(got, want)


def _bad_fields_message(fields: dict, encoding: str) -> str | None:
    """The one-line message a bad example gives through a tf.data pipeline."""
    ids = tf.constant([[1, 2], [2, 0]], tf.int32)
    isthing = np.ones(3, bool)

    def encode(f):
        if encoding == "published":
            return P.encode_panoptic_tf(ids, f["id"], f["label"], 4, 3)
        return P.encode_things_tf(ids, f["id"], f["label"], f["is_crowd"], isthing, 4)

    ds = tf.data.Dataset.from_tensors(fields).map(encode)
    with pytest.raises(tf.errors.OpError) as e:
        list(ds.as_numpy_iterator())
    return errors.user_error_message(e.value)


@pytest.mark.parametrize("encoding", ["published", "things"])
def test_bad_fields_give_the_reference_message(encoding):
    cases = [
        ({"id": [1, 2], "label": [0], "is_crowd": [False, False]}, "disagree in length"),
        ({"id": [1, 1], "label": [0, 0], "is_crowd": [False, False]}, "twice"),
        ({"id": [1, 2], "label": [0, 5], "is_crowd": [False, False]},
         r"label 5 is not a category index \(0..3 - 1\)"),
        ({"id": [1, 2], "label": [-1, 0], "is_crowd": [False, False]}, "label -1 is not"),
    ]
    if encoding == "things":
        cases.append(({"id": [1, 2], "label": [0, 1], "is_crowd": [False]}, "is_crowd 1"))
    for fields, match in cases:
        fields = {"id": np.array(fields["id"], np.int64),
                  "label": np.array(fields["label"], np.int64),
                  "is_crowd": np.array(fields["is_crowd"], bool)}
        with pytest.raises(P.DataError, match=match) as want:
            if encoding == "published":
                P.encode_panoptic(np.zeros((2, 2)), fields["id"], fields["label"], 4, 3)
            else:
                P.encode_things(np.zeros((2, 2)), fields["id"], fields["label"],
                                fields["is_crowd"], np.ones(3, bool), 4)
        assert _bad_fields_message(fields, encoding) == str(want.value)


@pytest.mark.parametrize("encoding", ["published", "things"])
def test_task_preprocess_equals_the_numpy_pipeline(encoding):
    """``PanopticTask.preprocess`` (a training view: crop, flip, resize) gives the same
    image and labels as the former numpy-encoded pipeline, example for example."""
    from uvim_givt.config import load_config

    cfg = load_config("configs/panoptic.py:size=tiny")
    cfg.data.panoptic_encoding = encoding
    cfg.data.crop_area_min = 0.3
    task = P.PanopticTask()
    rng = np.random.RandomState(1)
    for i in range(6):
        ids, oid, lab, crowd, _, _ = _random_scene(rng)
        ids = np.kron(ids, np.ones((3, 3), np.int32))  # bigger than the 64 px input
        lab = lab % 10
        ex = {"image": rng.randint(0, 256, ids.shape + (3,)).astype(np.uint8),
              "panoptic_image": np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                                         -1).astype(np.uint8),
              "panoptic_objects": {"id": oid.astype(np.int64), "label": lab.astype(np.int64),
                                   "is_crowd": crowd}}
        seed = tf.constant([7, i], tf.int64)
        got = task.preprocess(cfg, ex, train=True, seed=seed)
        want = task.preprocess(cfg, ex, train=True, seed=seed, numpy_encoding=True)
        np.testing.assert_array_equal(got["labels"].numpy(), want["labels"].numpy())
        np.testing.assert_array_equal(got["image"].numpy(), want["image"].numpy())
