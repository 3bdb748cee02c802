"""Panoptic task: label coding round trips (the published coding on real COCO annotations is
in test_panoptic_published.py), the graph encoders against their NumPy reference, the
routes (meta, postprocess into the box, predict over a folder), the COCO folder reader, a
tiny two-stage run."""

import json
import os
from unittest import mock

import cv2
import numpy as np
import pytest
import tensorflow as tf

from evals.panoptic_io import id_to_rgb, rgb_to_id
from tasks import panoptic as P
from tasks import panoptic_encoding as E
from tasks.panoptic_coco import read_coco_folder
from tasks.panoptic_decoding import decode_panoptic, decode_things
from tests import panoptic_reference as R
from tests.panoptic_reference import encode_panoptic, encode_things
from uvim_givt import config as config_lib
from uvim_givt import errors
from uvim_givt.data import catalog
from uvim_givt.data.images import resize_nearest
from uvim_givt.errors import DataError

CATS = [{"id": 1, "isthing": 1, "name": "a", "color": [255, 0, 0]},
        {"id": 7, "isthing": 1, "name": "b", "color": [0, 255, 0]},
        {"id": 20, "isthing": 0, "name": "s", "color": [0, 0, 255]},
        {"id": 21, "isthing": 0, "name": "t", "color": [9, 9, 9]}]


def _random_scene(rs, h=40, w=50):
    ids = np.zeros((h, w), np.int64)
    segs = []
    # stuff background in two halves, then random thing rectangles on top
    for sid, lab, sl in ((101, 2, np.s_[:, : w // 2]), (102, 3, np.s_[:, w // 2:])):
        ids[sl] = sid
        segs.append((sid, lab, False))
    for k in range(rs.randint(1, 6)):
        y, x = rs.randint(0, h - 6), rs.randint(0, w - 6)
        ids[y:y + rs.randint(3, 8), x:x + rs.randint(3, 8)] = 200 + k
        segs.append((200 + k, rs.randint(0, 2), False))
    present = set(np.unique(ids).tolist())
    segs = [s for s in segs if s[0] in present]
    ids[0, :3] = 0  # some void
    return ids, segs


def _partition(ids, cat_of):
    """Segmentation as a set of (frozenset of pixels, category)."""
    out = set()
    for sid in np.unique(ids):
        if sid == 0:
            continue
        out.add((frozenset(np.flatnonzero(ids.ravel() == sid).tolist()), cat_of[int(sid)]))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_encode_decode_round_trip(seed):
    """Published encoding -> its two-channel map -> published decoding gives the same
    segmentation (the real-COCO version is in test_panoptic_published.py)."""
    rs = np.random.RandomState(seed)
    ids, segs = _random_scene(rs)
    oid = np.array([s[0] for s in segs])
    lab = np.array([s[1] for s in segs])
    labels = encode_panoptic(ids, oid, lab, num_instances=16)
    out_ids, out_segs = decode_panoptic(labels, CATS, min_area_fraction=0.0)
    gt_cat = {int(i): CATS[int(la)]["id"] for i, la in zip(oid, lab, strict=True)}
    pred_cat = {s["id"]: s["category_id"] for s in out_segs}
    assert _partition(out_ids, pred_cat) == _partition(ids, gt_cat)
    for s in out_segs:
        assert s["area"] == int((out_ids == s["id"]).sum())


def test_instances_are_canonical_by_centre_of_mass():
    rs = np.random.RandomState(3)
    ids, segs = _random_scene(rs, 60, 60)
    oid = np.array([s[0] for s in segs])
    lab = np.array([s[1] for s in segs])
    labels = encode_panoptic(ids, oid, lab, 16)
    inst = labels[..., 1]
    # brute force: every segment (stuff too) sorted by the published key cx + H * cy
    centres = sorted((np.argwhere(ids == s[0]).mean(0) @ [60, 1], s[0]) for s in segs)
    for rank, (_, sid) in enumerate(centres, start=1):
        assert np.all(inst[ids == sid] == rank)
    assert np.all(inst[ids == 0] == 0)
    # a permutation of the segment ids gives the same labels (stable ordering)
    perm = {s[0]: 900 + i for i, s in enumerate(segs[::-1])}
    ids2 = np.vectorize(lambda v: perm.get(v, 0))(ids)
    labels2 = encode_panoptic(ids2, np.array([perm[s[0]] for s in segs]), lab, 16)
    np.testing.assert_array_equal(labels, labels2)


def test_crowd_keeps_its_class_and_instances_beyond_capacity_drop():
    ids = np.array([[1, 1, 2, 2], [3, 3, 4, 4]])
    labels = encode_panoptic(ids, np.array([1, 2, 3, 4]), np.array([0, 0, 0, 1]),
                             num_instances=3)
    # Segment 2 is crowd in COCO: published, it is labelled like any other segment.
    assert labels[..., 0].tolist() == [[1, 1, 1, 1], [1, 1, 2, 2]]
    assert labels[..., 1].tolist() == [[1, 1, 2, 2], [0, 0, 0, 0]]  # ids 3, 4 do not fit


def test_min_area_fraction_drops_to_void():
    labels = np.stack([np.array([[3, 3, 3], [3, 3, 1]]), np.array([[1, 1, 1], [1, 1, 2]])], -1)
    ids, segs = decode_panoptic(labels, CATS, min_area_fraction=1 / 6)
    assert [s["category_id"] for s in segs] == [20] and ids[1, 2] == 0
    ids, segs = decode_panoptic(labels, CATS, min_area_fraction=0.0)
    assert sorted(s["category_id"] for s in segs) == [1, 20]


def test_things_encoding_numbers_only_non_crowd_things():
    """``data.panoptic_encoding = "things"`` (tiny): stuff instance 0, crowd void, things
    ranked by (row, column) of their centre."""
    ids = np.array([[1, 1, 2, 2, 5], [3, 3, 4, 4, 5]])
    labels = encode_things(ids, np.array([1, 2, 3, 4, 5]), np.array([0, 0, 1, 2, 0]),
                           np.array([False, True, False, False, False]),
                           np.array([c["isthing"] == 1 for c in CATS]), num_instances=3)
    assert labels[..., 0].tolist() == [[1, 1, 0, 0, 1], [2, 2, 3, 3, 1]]
    # things 1 (centre row 0), 5 (row 0.5), 3 (row 1): id 3 does not fit 3 channels
    assert labels[..., 1].tolist() == [[1, 1, 0, 0, 2], [0, 0, 0, 0, 2]]


def test_things_decoding_is_per_pixel():
    sem = _one_hot(np.array([[1, 1, 2, 3, 3, 3]]), 5)
    ins = _one_hot(np.array([[1, 1, 1, 0, 1, 2]]), 4)
    ids, segs = decode_things({"semantics": sem, "instances": ins}, CATS, 0.0)
    cat_of = {s["id"]: s["category_id"] for s in segs}
    # pixel 2 is its own (class b, instance 1) segment; stuff ignores the instance
    assert [cat_of.get(int(i), 0) for i in ids[0]] == [1, 1, 7, 20, 20, 20]
    assert len(set(ids[0, 3:])) == 1
    ids, segs = decode_things({"semantics": sem, "instances": ins}, CATS, 1 / 6)
    assert sorted(s["category_id"] for s in segs) == [1, 20] and ids[0, 2] == 0


def _one_hot(x, n):
    return (x[..., None] == np.arange(n)).astype(np.float32)


@pytest.mark.parametrize("size,encoding,fraction", [("tiny", "things", 0.03 ** 2),
                                                    ("base", "published", 0.0),
                                                    ("paper", "published", 0.0)])
def test_presets_choose_the_label_coding(size, encoding, fraction):
    from uvim_givt.config import load_config
    cfg = load_config(f"configs/panoptic.py:size={size}")
    assert cfg.data.panoptic_encoding == encoding and cfg.data.min_area_fraction == fraction
    P.PanopticTask().check_config(cfg)


@pytest.mark.parametrize("setting,words", [
    ("data.panoptic_encoding=stuff",
     "data.panoptic_encoding='stuff': one of ('published', 'things')"),
    ("data.min_area_fraction=1.0", "data.min_area_fraction=1.0: must be in [0, 1)")])
def test_bad_coding_keys_are_refused(setting, words, tmp_path, capsys):
    assert P.main(["train", "--workdir", str(tmp_path / "run"), "--set", setting]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_png_id_encoding_round_trip(tmp_path):
    ids = np.random.RandomState(0).randint(0, 2**24, (7, 9))
    cv2.imwrite(str(tmp_path / "x.png"), id_to_rgb(ids)[..., ::-1])
    back = rgb_to_id(cv2.imread(str(tmp_path / "x.png"))[..., ::-1])
    np.testing.assert_array_equal(back, ids)


# ------------------------------------------------ graph encoders against the NumPy reference
def _noise_scene(rng: np.random.RandomState) -> tuple:
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
    """[(NumPy reference, graph encoder)] of both encodings."""
    return [(encode_panoptic(ids, oid, lab, num_instances, num_categories),
             E.encode_panoptic_tf(ids, oid, lab, num_instances, num_categories).numpy()),
            (encode_things(ids, oid, lab, crowd, isthing, num_instances),
             E.encode_things_tf(ids, oid, lab, crowd, isthing, num_instances).numpy())]


def test_graph_encodings_equal_numpy_on_random_scenes():
    rng = np.random.RandomState(0)
    ties = 0
    for _ in range(120):
        scene = _noise_scene(rng)
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


@R.needs_sample
def test_graph_encodings_equal_numpy_on_real_coco():
    """Whole frames, the paper's 512 px, crops (fewer segments) and a short instance
    channel, on both COCO samples (stuff, things and crowd)."""
    examples, cats = R.coco_sample()
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    isthing = np.array([c["isthing"] == 1 for c in cats])
    for ids, segs, _ in examples:
        ids = ids.astype(np.int32)
        oid = np.array([s["id"] for s in segs])
        lab = np.array([label_of[s["category_id"]] for s in segs])
        crowd = np.array([bool(s["iscrowd"]) for s in segs])
        views = [ids, resize_nearest(ids, (512, 512)), ids[60:260, 300:560],
                 resize_nearest(ids[100:400, 50:300], (512, 512))]
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
            return E.encode_panoptic_tf(ids, f["id"], f["label"], 4, 3)
        return E.encode_things_tf(ids, f["id"], f["label"], f["is_crowd"], isthing, 4)

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
        with pytest.raises(DataError, match=match) as want:
            if encoding == "published":
                encode_panoptic(np.zeros((2, 2)), fields["id"], fields["label"], 4, 3)
            else:
                encode_things(np.zeros((2, 2)), fields["id"], fields["label"],
                              fields["is_crowd"], np.ones(3, bool), 4)
        assert _bad_fields_message(fields, encoding) == str(want.value)


def _raw_example(rng, ids, oid, lab, crowd):
    return {"image": rng.randint(0, 256, ids.shape + (3,)).astype(np.uint8),
            "panoptic_image": np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                                       -1).astype(np.uint8),
            "panoptic_objects": {"id": oid.astype(np.int64), "label": lab.astype(np.int64),
                                 "is_crowd": crowd}}


def _tiny_cfg(**data):
    from uvim_givt.config import load_config
    cfg = load_config("configs/panoptic.py:size=tiny")
    for k, v in data.items():
        cfg.data[k] = v
    return cfg


@pytest.mark.parametrize("encoding", ["published", "things"])
def test_task_preprocess_equals_the_numpy_pipeline(encoding):
    """``PanopticTask.preprocess`` (training views: crop, flip, resize; and the eval view)
    gives the same image, labels and meta as the former numpy-encoded pipeline."""
    cfg = _tiny_cfg(panoptic_encoding=encoding, crop_area_min=0.3)
    task, reference = P.PanopticTask(), R.NumpyEncodedPanoptic()
    rng = np.random.RandomState(1)
    for i in range(6):
        ids, oid, lab, crowd, _, _ = _noise_scene(rng)
        ids = np.kron(ids, np.ones((3, 3), np.int32))  # bigger than the 64 px input
        ex = _raw_example(rng, ids, oid, lab % 10, crowd)
        seed = tf.constant([7, i], tf.int64)
        for mode in ("train", "eval"):
            got = task.preprocess(cfg, ex, mode, seed=seed)
            want = reference.preprocess(cfg, ex, mode, seed=seed)
            for key in ("image", "labels"):
                np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
            for key in ("size", "box", "flip"):
                np.testing.assert_array_equal(got["meta"][key].numpy(), want["meta"][key].numpy())


# ---------------------------------------------------------------------------------- routes
def test_route_meta_says_where_the_input_lies_in_the_frame():
    """eval and predict: the whole frame, no flip, the same image; train: the box and flip
    of meta rebuild the training view's image from the raw frame bit for bit."""
    from tasks import common

    cfg = _tiny_cfg(crop_area_min=0.3, flip=True)
    rng = np.random.RandomState(2)
    ids = np.kron(rng.randint(1, 4, (9, 13)), np.ones((5, 5), int))[:43, :61]
    ex = _raw_example(rng, ids, np.array([1, 2, 3]), np.array([0, 1, 2]), np.zeros(3, bool))
    ev = P.TASK.preprocess(cfg, ex, "eval")
    pr = P.TASK.preprocess(cfg, {"image": ex["image"]}, "predict")
    assert set(pr) == {"image", "meta"} and set(ev) == {"image", "labels", "meta"}
    for out in (ev, pr):
        assert out["meta"]["size"].numpy().tolist() == [43, 61]
        assert out["meta"]["box"].numpy().tolist() == [0, 43, 0, 61]
        assert not out["meta"]["flip"].numpy()
    np.testing.assert_array_equal(pr["image"].numpy(), ev["image"].numpy())
    flips, boxes = set(), set()
    for i in range(8):
        tr = P.TASK.preprocess(cfg, ex, "train", seed=tf.constant([3, i], tf.int64))
        r0, r1, c0, c1 = tr["meta"]["box"].numpy().tolist()
        flip = bool(tr["meta"]["flip"].numpy())
        assert 0 <= r0 < r1 <= 43 and 0 <= c0 < c1 <= 61
        view = ex["image"][r0:r1, c0:c1]
        view = view[:, ::-1] if flip else view
        np.testing.assert_array_equal(tr["image"].numpy(),
                                      common.model_image(view, 64).numpy())
        flips.add(flip)
        boxes.add((r0, r1, c0, c1))
    assert flips == {False, True} and len(boxes) > 1  # the seeds really vary both


def _brute_force_placement(two, size, box, flip):
    """The two-channel map [S, S, 2] on the raw frame, pixel by pixel: each pixel of the
    box takes the model pixel whose (half-pixel) centre is nearest; void elsewhere."""
    s = two.shape[0]
    r0, r1, c0, c1 = box
    out = np.zeros(size + (2,), two.dtype)
    for r in range(r0, r1):
        for c in range(c0, c1):
            i = int((r - r0 + 0.5) * s / (r1 - r0))
            j = int((c - c0 + 0.5) * s / (c1 - c0))
            out[r, c] = two[i, s - 1 - j if flip else j]
    return out


@pytest.mark.parametrize("box,flip", [((0, 50, 0, 70), False), ((5, 45, 10, 61), False),
                                      ((3, 50, 0, 33), True)])
def test_postprocess_places_the_prediction_into_the_box(box, flip):
    """postprocess decodes at the model's 64 px and puts the segments into meta's box at
    meta's size (mirrored back when flipped, void outside): the same COCO map and segments
    as converting the brute-force placement of the two-channel map."""
    from tasks.panoptic_decoding import two_channels_to_coco

    cfg = _tiny_cfg(panoptic_encoding="published", min_area_fraction=0.0)
    cats = P.TASK.categories(cfg)
    n_sem = len(cats) + 1
    rng = np.random.RandomState(4)
    inst = np.kron(rng.randint(0, 6, (8, 8)), np.ones((8, 8), int))  # blocks of 8 px
    sem_of = rng.randint(0, n_sem, 6)  # one class per instance: the vote keeps it
    two = np.stack([sem_of[inst], inst], -1)
    logits = {"semantics": _one_hot(two[..., 0], n_sem), "instances": _one_hot(inst, 16)}
    meta = {"size": np.array([50, 70], np.int32), "box": np.array(box, np.int32),
            "flip": np.array(flip)}
    pred = P.TASK.postprocess(cfg, logits, meta)
    want_ids, want_segs = two_channels_to_coco(
        _brute_force_placement(two, (50, 70), box, flip), cats)
    assert pred["ids"].shape == (50, 70)
    np.testing.assert_array_equal(pred["ids"], want_ids)
    assert pred["segments_info"] == want_segs
    outside = np.ones((50, 70), bool)
    outside[box[0]:box[1], box[2]:box[3]] = False
    assert not pred["ids"][outside].any() and pred["ids"][~outside].any()


class _LeftHalfPredictor:
    """A stand-in for the sampler: class 1 on the left half of the model's input, void on
    the right; it keeps the images it was given."""

    def __init__(self, n_sem):
        self.n_sem, self.images, self.seeds = n_sem, [], []

    def predict(self, images, seed, mirror_equivariant):
        self.images.append(np.array(images))
        self.seeds.append(seed)
        b, s = images.shape[:2]
        sem = np.zeros((b, s, s), int)
        sem[:, :, : s // 2] = 1
        return {"semantics": _one_hot(sem, self.n_sem),
                "instances": _one_hot(np.ones((b, s, s), int), 4)}


def test_predict_over_a_folder_goes_through_the_predict_route(tmp_path):
    """Each image's model input is its predict-route input (the eval route's image, bit for
    bit), and its segments come back at its raw size, placed as meta says."""
    from tasks import common

    cfg = _tiny_cfg()
    sizes = {"a.png": (30, 40), "b.png": (17, 23), "c.png": (64, 50)}
    raws = {}
    for k, (n, hw) in enumerate(sizes.items()):
        raws[n] = np.random.RandomState(k).randint(0, 256, hw + (3,)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / n), raws[n][..., ::-1])
    predictor = _LeftHalfPredictor(len(P.TASK.categories(cfg)) + 1)
    out = list(common.predict_image_folder(P.TASK, cfg, predictor, str(tmp_path), 2))
    assert [n for n, _, _ in out] == sorted(sizes)
    assert [len(b) for b in predictor.images] == [2, 2] and predictor.seeds == [0, 2]
    given = np.concatenate(predictor.images)[:3]
    for k, (name, ex, pred) in enumerate(out):
        np.testing.assert_array_equal(ex["image"], raws[name])
        unlabelled = {"panoptic_image": np.zeros(sizes[name] + (3,), np.uint8),
                      "panoptic_objects": {"id": np.zeros(0, np.int64),
                                           "label": np.zeros(0, np.int64),
                                           "is_crowd": np.zeros(0, bool)}}
        eval_in = P.TASK.preprocess(cfg, {"image": raws[name], **unlabelled}, "eval")
        np.testing.assert_array_equal(given[k], eval_in["image"].numpy())
        h, w = sizes[name]
        assert pred["ids"].shape == (h, w)
        left = (np.arange(w) + 0.5) * 64 / w < 32  # columns whose nearest model pixel is left
        assert (pred["ids"][:, left] > 0).all() and not pred["ids"][:, ~left].any()


def test_predict_over_a_folder_with_a_broken_image(tmp_path):
    """A truncated file: named in a DataError after the images before it, or skipped."""
    from tasks import common

    cfg = _tiny_cfg()
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / n), np.full((20, 24, 3), 90, np.uint8))
    data = (tmp_path / "b.jpg").read_bytes()
    (tmp_path / "b.jpg").write_bytes(data[:60])
    predictor = _LeftHalfPredictor(len(P.TASK.categories(cfg)) + 1)
    done = []
    with pytest.raises(DataError, match=r"b\.jpg.*--skip-bad"):
        for name, _, _ in common.predict_image_folder(P.TASK, cfg, predictor, str(tmp_path), 1):
            done.append(name)
    assert done == ["a.jpg"]
    skipped = []
    out = list(common.predict_image_folder(P.TASK, cfg, predictor, str(tmp_path), 1, skipped))
    assert [n for n, _, _ in out] == ["a.jpg", "c.jpg"] and [n for n, _ in skipped] == ["b.jpg"]


# ----------------------------------------------------------------------- the folder reader
def _write_folder(root, split="validation", break_with=None):
    os.makedirs(root / "annotations" / f"panoptic_{split}", exist_ok=True)
    os.makedirs(root / split, exist_ok=True)
    anns = []
    for k in range(2):
        ids = np.zeros((16, 16), np.int64)
        ids[:8] = 5
        ids[8:] = 9
        segs = [{"id": 5, "category_id": 20, "iscrowd": 0}, {"id": 9, "category_id": 1,
                                                             "iscrowd": 0}]
        if break_with == "json_only" and k == 1:
            segs.append({"id": 77, "category_id": 1, "iscrowd": 0})
        if break_with == "png_only" and k == 1:
            ids[0, 0] = 66
        if break_with == "category" and k == 1:
            segs[0]["category_id"] = 999
        cv2.imwrite(str(root / "annotations" / f"panoptic_{split}" / f"{k}.png"),
                    id_to_rgb(ids)[..., ::-1])
        cv2.imwrite(str(root / split / f"{k}.jpg"), np.full((16, 16, 3), 100, np.uint8))
        anns.append({"image_id": k, "file_name": f"{k}.png", "segments_info": segs})
    if break_with == "truncated":
        data = open(root / split / "1.jpg", "rb").read()
        open(root / split / "1.jpg", "wb").write(data[:40])
    json.dump({"annotations": anns, "categories": CATS,
               "images": [{"id": k, "file_name": f"{k}.jpg"} for k in range(2)]},
              open(root / "annotations" / f"panoptic_{split}.json", "w"))


def test_folder_reader_reads_examples(tmp_path):
    _write_folder(tmp_path)
    cats, examples = read_coco_folder(str(tmp_path), "validation")
    examples = list(examples)
    assert cats == CATS and len(examples) == 2
    assert examples[0]["panoptic_objects"]["label"].tolist() == [2, 0]


@pytest.mark.parametrize("problem,words", [
    ("json_only", "[77] are in the JSON but not in the PNG"),
    ("png_only", "[66] are in the PNG but not in the JSON"),
    ("category", "unknown category_id 999"),
    ("truncated", "1.jpg: .*truncated"),  # the reader names the file and the problem
])
def test_folder_reader_bad_input(tmp_path, problem, words):
    _write_folder(tmp_path, break_with=problem)
    with pytest.raises(DataError, match=words.replace("[", r"\[").replace("]", r"\]")):
        list(read_coco_folder(str(tmp_path), "validation")[1])
    _, kept = read_coco_folder(str(tmp_path), "validation", skip_bad=True)
    assert len(list(kept)) == 1


# -------------------------------------------------------------------- end to end (tiny)
TINY = ["--set", "data.embedded_num_train=48", "--set", "data.embedded_num_validation=8",
        "--set", "vae.train.total_steps=3", "--set", "givt.train.total_steps=3",
        "--set", "vae.train.batch_size=8", "--set", "givt.train.batch_size=8",
        "--set", "vae.model.width=32", "--set", "vae.model.mlp_dim=64",
        "--set", "vae.model.depth=1", "--set", "vae.model.decoder_depth=1",
        "--set", "givt.model.emb_dim=32", "--set", "givt.model.mlp_dim=64",
        "--set", "givt.model.num_layers=1", "--set", "givt.model.num_decoder_layers=1",
        "--set", "vae.model.code_len=16", "--set", "givt.model.seq_len=16",
        "--set", "givt.model.patches=(16,16)",  # a 4x4 encoder grid: encoder_skip fits
        "--set", "givt.sampling.beam_size=1", "--set", "givt.sampling.fan_size=1",
        "--set", "evals.oracle.batch_size=4", "--set", "evals.sampled.batch_size=4",
        "--set", "evals.oracle.overlays=2", "--set", "evals.sampled.overlays=2",
        "--set", "evals.oracle.every=2", "--set", "evals.oracle.num_examples=4"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
    run = str(root / "run")
    assert P.main(["train", "--workdir", run, *TINY]) == 0
    return run


def test_tiny_two_stage_run(tiny_run, capsys):
    records = sorted(os.listdir(os.path.join(tiny_run, "eval")))
    # The declared evaluators: the oracle every 2 steps (on 4 images) and after stage 1 with
    # the held-out VAE loss; after stage 2 the samples (the whole 8-image split), the
    # teacher-forced means and the held-out NLL.
    assert records == ["givt_givt_loss_validation_embedded_step00000003_train.json",
                       "givt_sampled_validation_embedded_step00000003_train.json",
                       "givt_teacher_forced_validation_embedded_step00000003_train.json",
                       "vae_oracle_validation_embedded_step00000002_train.json",
                       "vae_oracle_validation_embedded_step00000003_train.json",
                       "vae_vae_loss_validation_embedded_step00000003_train.json"]
    periodic = json.load(open(os.path.join(tiny_run, "eval", records[3])))
    assert periodic["metrics"]["num_images"] == 4 and periodic["step"] == 2
    assert periodic["extra"]["periodic"] and periodic["evaluator"] == "oracle"
    metrics = [json.loads(x) for x in open(os.path.join(tiny_run, "metrics.jsonl"))]
    assert any("eval/oracle/PQ" in m and m["step"] == 2 for m in metrics)
    rec = json.load(open(os.path.join(tiny_run, "eval", records[1])))
    assert rec["task"] == "panoptic" and rec["metrics"]["num_images"] == 8
    assert rec["origin"] == "train" and rec["prediction"] == "sampled"
    assert 0 <= rec["metrics"]["PQ"] <= 100
    assert len([f for f in os.listdir(os.path.join(tiny_run, "predictions"))]) == 4
    info = json.load(open(os.path.join(tiny_run, "run_info.json")))
    assert set(info["num_params"]) == {"vae", "givt"}


def test_a_run_says_where_it_came_from_and_what_it_scores(tiny_run, tmp_path):
    """Provenance of the training command in run_info.json, the model card, the evaluation
    scalars and pictures in TensorBoard, and the leaderboard linking the card by a
    relative path (no absolute path of this machine in the page)."""
    from evals.leaderboard import cli as leaderboard
    (session,) = json.load(open(os.path.join(tiny_run, "run_info.json")))["sessions"]
    assert session["outcome"] == "finished" and session["ended"] >= session["started"]
    assert " train " in f" {session['command']} " and session["stages"] == ["vae", "givt"]
    assert session["versions"]["jax"] and session["devices"]["count"] >= 1
    assert session["data"] == {"source": "embedded", "train_split": "train", "image_size": 64}
    card = open(os.path.join(tiny_run, "MODEL_CARD.md")).read()
    sampled = json.load(open(os.path.join(
        tiny_run, "eval", "givt_sampled_validation_embedded_step00000003_train.json")))
    pq = sampled["metrics"]["PQ"]
    assert f"| sampled | givt | 3 | `embedded`, validation | 8 | PQ {pq:.4g}" in card
    assert "it is not a model of real images" in card
    scalars, images = set(), set()
    board = os.path.join(tiny_run, "tensorboard", "eval")
    for name in os.listdir(board):  # a file per evaluation written (TensorBoard reads all)
        for event in tf.compat.v1.train.summary_iterator(os.path.join(board, name)):
            for v in event.summary.value:
                (images if v.HasField("image") else scalars).add((v.tag, event.step))
    assert ("sampled/PQ", 3) in scalars and ("givt_loss/nll_per_token", 3) in scalars
    assert ("sampled/sampled_000", 3) in images and ("oracle/oracle_000", 3) in images
    out = tmp_path / "report"
    assert leaderboard.main(["--root", os.path.dirname(tiny_run), "--out", str(out)]) == 0
    page = (out / "leaderboard.html").read_text()
    assert '<a href="../../' in page and 'run/MODEL_CARD.md">run</a>' in page
    assert str(tmp_path.parent) not in page


VTT_TINY = ["--set", "givt.model.seq_len=16", "--set", "givt.model.vocab_size=17",
            "--set", "givt.model.num_layers=1", "--set", "givt.model.emb_dim=16",
            "--set", "givt.model.mlp_dim=32", "--set", "givt.model.num_heads=2",
            "--set", "givt.train.total_steps=3", "--set", "givt.train.batch_size=8",
            "--set", "givt.train.log_every=1",
            "--set", "evals.sampled.batch_size=4", "--set", "evals.sampled.overlays=1",
            "--set", "evals.teacher_forced.batch_size=4", "--set", "evals.givt_loss.batch_size=4"]
VQ_TINY = ["--config", "configs/panoptic.py:tokens=vq", "--stage", "vae", *VTT_TINY,
           "--set", "data.embedded_num_train=48", "--set", "data.embedded_num_validation=8",
           "--set", "vae.train.total_steps=3", "--set", "vae.train.batch_size=8",
           "--set", "vae.model.width=32", "--set", "vae.model.mlp_dim=64",
           "--set", "vae.model.depth=1", "--set", "vae.model.decoder_depth=1",
           "--set", "vae.model.code_len=16", "--set", "vae.model.dict_size=16",
           "--set", "vae.model.codeword_dim=8", "--set", "evals.oracle.batch_size=4",
           "--set", "evals.oracle.overlays=1"]


def test_tiny_vq_stage1_run_and_its_oracle(tiny_run, tmp_path, capsys):
    """tokens=vq: the original UViM's stage 1 trains through the same runner (on the
    embedded data the fixture built), its oracle (ground truth and image -> code ids ->
    labels) is scored by the panoptic evaluator, and the eval command reloads the run (its
    dictionary from the checkpoint's state) and scores the same PQ. Stage 2, the VTT,
    then trains on the code ids, and its sampled and teacher-forced predictions are scored
    by the same evaluators as a GIVT's."""
    run = str(tmp_path / "vq")
    assert P.main(["train", "--workdir", run, *VQ_TINY]) == 0
    records = sorted(os.listdir(os.path.join(run, "eval")))
    assert records == ["vae_oracle_validation_embedded_step00000003_train.json",
                       "vae_vae_loss_validation_embedded_step00000003_train.json"]
    oracle = json.load(open(os.path.join(run, "eval", records[0])))
    assert oracle["metrics"]["num_images"] == 8 and 0 <= oracle["metrics"]["PQ"] <= 100
    loss = json.load(open(os.path.join(run, "eval", records[1])))["metrics"]
    assert {"xent", "commitment", "codebook_perplexity"} <= set(loss)
    metrics = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert all("codebook_max_ratio" in m for m in metrics if "loss" in m)
    assert P.main(["eval", "--ckpt", run, "--oracle"]) == 0
    again = [json.load(open(os.path.join(run, "eval", r)))
             for r in os.listdir(os.path.join(run, "eval")) if r.startswith("vae_oracle")
             and r.endswith("_eval.json")]
    assert len(again) == 1 and again[0]["metrics"] == oracle["metrics"]
    # stage 2: a VTT whose vocabulary disagrees with the VQ-VAE is refused, nothing written
    capsys.readouterr()
    other = str(tmp_path / "vq_other")
    assert P.main(["train", "--workdir", other, *VQ_TINY, "--set", "givt.model.vocab_size=129",
                   "--stage", "all"]) == 2
    assert "givt.model.vocab_size=129" in capsys.readouterr().err
    assert not os.path.exists(other)
    assert P.main(["train", "--workdir", run, *VQ_TINY, "--stage", "givt"]) == 0
    records = {r.split("_validation")[0]: json.load(open(os.path.join(run, "eval", r)))
               for r in os.listdir(os.path.join(run, "eval")) if r.startswith("givt_")}
    assert set(records) == {"givt_sampled", "givt_teacher_forced", "givt_givt_loss"}
    for name in ("givt_sampled", "givt_teacher_forced"):
        assert records[name]["metrics"]["num_images"] == 8
        assert 0 <= records[name]["metrics"]["PQ"] <= 100
    loss = records["givt_givt_loss"]["metrics"]
    assert 0 < loss["nll_per_token"] < 10 and 0 <= loss["accuracy"] <= 1
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r.get("stage") == "givt" and "loss" in r] == [1, 2, 3]
    # the eval command reloads the VTT from the checkpoint (its tree built from code ids)
    assert P.main(["eval", "--ckpt", run, "--evaluator", "givt_loss"]) == 0
    (again,) = [json.load(open(os.path.join(run, "eval", r)))
                for r in os.listdir(os.path.join(run, "eval"))
                if r.startswith("givt_givt_loss") and r.endswith("_eval.json")]
    assert again["metrics"] == loss
    # the research evaluators serve the VTT: the exposure curve (its ends are the sampled
    # and oracle scores, the VTT completing given code ids) and the uncertainty of 8 draws
    assert P.main(["eval", "--ckpt", run, "--max-eval", "4", "--evaluator", "exposure",
                   "--evaluator", "sampled", "--evaluator", "oracle",
                   "--evaluator", "uncertainty",
                   "--set", "evals.exposure.batch_size=4",
                   "--set", "evals.uncertainty.batch_size=4"]) == 0
    tagged = {r.split("_validation")[0]: json.load(open(os.path.join(run, "eval", r)))
              for r in os.listdir(os.path.join(run, "eval")) if "_set-" in r}
    curve = tagged["givt_exposure"]["metrics"]
    assert tagged["givt_exposure"]["extra"]["num_given"] == [0, 4, 8, 12, 16]
    for key in ("PQ", "SQ", "RQ"):
        assert curve[f"keep_0/{key}"] == pytest.approx(tagged["givt_sampled"]["metrics"][key])
        assert curve[f"keep_1/{key}"] == pytest.approx(tagged["vae_oracle"]["metrics"][key])
    assert 0 <= tagged["givt_uncertainty"]["metrics"]["semantics/ECE"] <= 1


def test_eval_commands_run_the_declared_evaluators_without_overwriting(tiny_run, capsys):
    """`tasks.panoptic eval` and `evals.panoptic --ckpt` go through the same evaluator and
    give the same PQ; each writes its own record, tagged with the command."""
    from evals import panoptic as pq_cli
    assert P.main(["eval", "--ckpt", tiny_run]) == 0
    assert pq_cli.main(["--ckpt", tiny_run]) == 0
    records = {r: json.load(open(os.path.join(tiny_run, "eval", r)))
               for r in os.listdir(os.path.join(tiny_run, "eval"))
               if r.startswith("givt_sampled_")}
    by_origin = {r["origin"]: r for r in records.values()}
    assert set(by_origin) == {"train", "eval", "cli"}
    for origin in ("eval", "cli"):
        assert by_origin[origin]["metrics"] == by_origin["train"]["metrics"]


def test_finished_evaluations_are_reused_and_reeval_recomputes(tiny_run, capsys):
    """Rerunning a finished run trains nothing and reuses each final evaluation's record
    (same step, data, settings and example cap); ``--reeval`` recomputes."""
    records = os.path.join(tiny_run, "eval")
    before = {f: os.stat(os.path.join(records, f)).st_mtime_ns for f in os.listdir(records)}
    capsys.readouterr()
    assert P.main(["train", "--workdir", tiny_run, *TINY]) == 0
    out = capsys.readouterr().out
    assert ("sampled: step 3 already evaluated (eval/givt_sampled_validation_embedded_"
            "step00000003_train.json); --reeval recomputes it") in out
    assert {f: os.stat(os.path.join(records, f)).st_mtime_ns for f in before} == before
    loss = "givt_givt_loss_validation_embedded_step00000003_eval.json"
    for reeval, reused in ((["--reeval"], False), ([], True), (["--reeval"], False)):
        assert P.main(["eval", "--ckpt", tiny_run, "--evaluator", "givt_loss", *reeval]) == 0
        assert ("already evaluated" in capsys.readouterr().out) == reused
        assert os.path.isfile(os.path.join(records, loss))


def test_rerun_resumes_and_changed_config_is_refused(tiny_run, capsys):
    assert P.main(["train", "--workdir", tiny_run, "--no-eval", *TINY]) == 0
    lines = open(os.path.join(tiny_run, "metrics.jsonl")).read().splitlines()
    assert max(json.loads(x)["step"] for x in lines) == 3  # nothing retrained
    assert P.main(["train", "--workdir", tiny_run, *TINY, "--set", "vae.beta=0.5"]) == 2
    assert "different config (vae.beta differ" in capsys.readouterr().err


def test_vae_ckpt_of_other_shape_is_refused(tiny_run, tmp_path, capsys):
    code = P.main(["train", "--stage", "givt", "--vae-ckpt", tiny_run, "--workdir",
                   str(tmp_path / "r2"), *TINY, "--set", "vae.model.codeword_dim=4",
                   "--set", "givt.model.out_dim=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not match this config's VAE" in err and "vae.model.codeword_dim" in err
    assert not (tmp_path / "r2").exists()  # refused before anything was written
    # without --vae-ckpt, stage 1 and stage 2 that disagree are refused before training
    assert P.main(["train", "--workdir", str(tmp_path / "r3"), *TINY,
                   "--set", "vae.model.codeword_dim=4"]) == 2
    assert "givt.model.out_dim=16 but the VAE's codes have 4 channels" in capsys.readouterr().err


def test_predict_writes_coco_files(tiny_run, tmp_path):
    os.makedirs(tmp_path / "imgs")
    for k in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"im{k}.jpg"),
                    np.random.RandomState(k).randint(0, 255, (30, 40, 3)).astype(np.uint8))
    assert P.main(["predict", "--ckpt", tiny_run, "--images", str(tmp_path / "imgs"),
                   "--out", str(tmp_path / "out")]) == 0
    doc = json.load(open(tmp_path / "out" / "panoptic_pred.json"))
    assert [a["file_name"] for a in doc["annotations"]] == ["im0.png", "im1.png", "im2.png"]
    png = cv2.imread(str(tmp_path / "out" / "panoptic_pred" / "im0.png"))
    assert png.shape == (30, 40, 3)
    ids = set(np.unique(rgb_to_id(png[..., ::-1])).tolist()) - {0}
    assert ids == {s["id"] for s in doc["annotations"][0]["segments_info"]}


def test_real_tfds_builder_path_with_mock_data():
    """`--data tfds:coco/2017_panoptic` goes through TFDS's real builder (mocked offline)."""
    import tensorflow_datasets as tfds

    from uvim_givt.config import load_config

    cfg = load_config("configs/panoptic.py:size=paper", ["data.image_size=32"])
    # mock_data fakes the examples, not the prepared files the catalog asks for first
    with tfds.testing.mock_data(num_examples=2), mock.patch.object(
            tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        ds = catalog.load(P.TASK.readers, cfg, "tfds:coco/2017_panoptic", "validation")
        ex = next(ds.as_numpy_iterator())
    assert ex["image"].dtype == np.uint8 and ex["panoptic_image"].shape[-1] == 3
    objs = ex["panoptic_objects"]
    n = min(len(v) for v in objs.values())  # mock data draws each field's length separately
    ids = rgb_to_id(ex["panoptic_image"])
    objs = {"id": np.unique(ids)[:n], "label": objs["label"][:n] % 133,
            "is_crowd": objs["is_crowd"][:n]}
    out = P.TASK.preprocess(cfg, dict(ex, panoptic_objects=objs), "train",
                            seed=np.array([0, 1]))
    assert out["image"].shape == (32, 32, 3) and out["labels"].shape == (32, 32, 2)
    assert out["meta"]["size"].numpy().tolist() == list(ex["image"].shape[:2])
    assert float(np.abs(out["image"]).max()) <= 1.0


def test_exposure_curve_ends_at_the_sampled_and_oracle_scores(tiny_run, capsys):
    """The exposure-bias evaluator (run only when named): keeping no true code is the plain
    sampled prediction (same seeds), keeping all of them decodes the true codes (the
    oracle); its per-position NLL averages to the held-out NLL of the posterior means."""
    assert P.main(["eval", "--ckpt", tiny_run, "--max-eval", "4",
                   "--evaluator", "exposure", "--evaluator", "sampled",
                   "--evaluator", "oracle", "--evaluator", "givt_loss",
                   "--set", "evals.givt_loss.codes='mean'",
                   "--set", "evals.exposure.batch_size=4"]) == 0
    tagged = [json.load(open(os.path.join(tiny_run, "eval", r)))
              for r in os.listdir(os.path.join(tiny_run, "eval")) if "_set-" in r]
    rec = {r["evaluator"]: r for r in tagged}
    assert set(rec) == {"exposure", "sampled", "oracle", "givt_loss"}
    curve = rec["exposure"]["metrics"]
    assert rec["exposure"]["extra"]["num_given"] == [0, 4, 8, 12, 16]
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert curve[f"keep_0/{key}"] == pytest.approx(rec["sampled"]["metrics"][key])
        assert curve[f"keep_1/{key}"] == pytest.approx(rec["oracle"]["metrics"][key])
    # (a 3-step model scores about 0 everywhere: tests/test_stages.py checks the
    # completions themselves on arrays)
    per_position = rec["exposure"]["extra"]["nll_per_position"]
    assert len(per_position) == 16
    assert np.mean(per_position) == pytest.approx(
        rec["givt_loss"]["metrics"]["nll_per_token"], rel=1e-4)
    assert rec["givt_loss"]["extra"]["codes"] == "mean"
    # neither training nor a plain eval runs it (one sampled pass per fraction)
    assert not any(r.startswith("givt_exposure_") and "_set-" not in r
                   for r in os.listdir(os.path.join(tiny_run, "eval")))


def test_reproduce_converts_released_checkpoints_and_writes_the_table(tiny_run, tmp_path,
                                                                      capsys):
    """``python -m evals.reproduce`` end to end on synthetic checkpoints in the released
    layout: it converts both, runs the declared evaluators and compares every published
    panoptic value with ours, flagged as other data, with the files' hashes."""
    import hashlib

    from evals import reproduce
    from uvim_givt.compat.big_vision import save_npz
    from uvim_givt.training.checkpoint import load_params
    files = {stage: save_npz(str(tmp_path / f"{stage}.npz"), load_params(tiny_run, stage)[0])
             for stage in ("vae", "givt")}
    sets = [a for k, a in zip(TINY[::2], TINY[1::2], strict=True)]
    out = tmp_path / "repro"
    argv = ["--vae-npz", files["vae"], "--givt-npz", files["givt"],
            "--config", "configs/panoptic.py", "--max-eval", "4", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert reproduce.main(argv) == 0
    result = json.loads((out / "reproduced.json").read_text())
    rows = {(r["model"], r["prediction"]): r for r in result["rows"]}
    assert set(rows) == {("VAE stage 1 (oracle: encode GT, decode)", "oracle"),
                         ("GIVT stage 2", "sampled"),
                         ("UViM (VQ-VAE, discrete)", "sampled")}
    assert rows[("GIVT stage 2", "sampled")]["published"] == 40.2
    records = {r["evaluator"]: r for r in map(
        json.loads, (p.read_text() for p in (out / "run" / "eval").iterdir()))}
    for (_, prediction), row in rows.items():
        assert row["ours"] == records[prediction]["metrics"]["PQ"]
        assert row["difference"] == pytest.approx(row["ours"] - row["published"])
        assert not row["same_data"] and row["num_images"] == 4
    prov = result["provenance"]
    for stage, path in files.items():
        want = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert prov["checkpoints"][stage]["sha256"] == want
    assert "jax" in prov["libraries"] and prov["evaluations"]["sampled"]["num_images"] == 4
    table = (out / "reproduced.md").read_text()
    assert "| GIVT stage 2 | PQ (sampled) | 40.2 |" in table and "not comparable" in table
    assert reproduce.main(argv) == 2  # a second run into the same --out is refused
    assert "already holds checkpoints" in capsys.readouterr().err


def test_overlays_colour_by_class_and_say_what_each_panel_is(monkeypatch):
    """A class has one colour in every panel (instances are told apart by outlines, no
    random shift), panels are titled (the prediction with its PQ on this image), a legend
    names the classes shown, and small inputs are enlarged."""
    from evals import pictures
    cfg = config_lib.load_config("configs/panoptic.py")
    cats = P.TASK._cats(cfg)
    ids = np.zeros((64, 64), np.int64)
    ids[:32], ids[32:, :32], ids[32:, 32:] = 1, 2, 3
    out = P.colorize(np.zeros((64, 64, 3), np.uint8), ids, {1: cats[0], 2: cats[1], 3: cats[1]})
    want = np.clip(0.65 * np.asarray(cats[1]["color"], np.float32), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[40, 10], want)
    np.testing.assert_array_equal(out[40, 50], want)  # the other instance of the class
    assert (out[32, 10] == 255).all() and (out[40, 32] == 255).all()  # outlines
    example = {"image": np.zeros((64, 64, 3), np.uint8), "panoptic_image": id_to_rgb(ids),
               "panoptic_objects": {"id": np.array([1, 2, 3]), "label": np.array([0, 1, 1]),
                                    "is_crowd": np.zeros(3, int)}}
    wrong = ids.copy()
    wrong[:, 40:] = 3  # the first class loses a quarter of its pixels
    pred = {"ids": wrong, "segments_info": [{"id": 1, "category_id": cats[0]["id"]},
                                            {"id": 2, "category_id": cats[1]["id"]},
                                            {"id": 3, "category_id": cats[1]["id"]}]}
    seen = {}
    real = pictures.labelled_panels
    monkeypatch.setattr(pictures, "labelled_panels",
                        lambda panels, legend: seen.update(titles=[t for t, _ in panels],
                                                           legend=legend(600)) or real(
                            panels, legend))
    picture = P.TASK.draw(cfg, example, pred)
    metric = P.PanopticMetric(cats)
    metric.add(example, pred)
    assert seen["titles"] == ["image", "ground truth",
                              f"prediction, PQ {metric.result()['PQ']:.1f}"]
    assert 0 < metric.result()["PQ"] < 100
    assert seen["legend"].shape == (24, 600, 3)  # one row: both class names fit
    assert picture.shape == (pictures.TITLE_H + 192 + 24, 3 * 192 + 2 * pictures.GAP, 3)
