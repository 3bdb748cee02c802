"""The published (big_vision UViM/GIVT) COCO panoptic label encoding and decoding.

Encoding (big_vision pp ops ``coco_panoptic`` then ``make_canonical``): every segment, stuff,
thing and crowd alike, gets semantics = category index + 1 and an instance id 1.. ordered by
centre of mass (key ``cx + H * cy``) over the segments present after the crop; unlisted
pixels are (0, 0). Decoding (``panoptic_predictions_from_logits`` + panopticapi's 2-channel
converter): argmax instances, one class per instance from its summed semantic logits, an
optional minimum area fraction, then one COCO segment per thing instance and per stuff class.
The encoding is checked on its NumPy reference (tests/panoptic_reference.py), which the
task's graph encoders equal bit for bit (tests/test_panoptic_task.py).

Most tests read the real COCO annotations in ../shared/data/coco_panoptic_sample (two val2017
images with stuff, things and crowd segments); CI clones without that folder and skips them.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from evals.pq import PQAccumulator
from tasks import panoptic as P
from tasks import panoptic_decoding as D
from tests import panoptic_reference as R
from uvim_givt.data.images import resize_nearest
from uvim_givt.errors import DataError


def _encode(ids, segs, cats, num_instances=100):
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    return R.encode_panoptic(ids, np.array([s["id"] for s in segs]),
                             np.array([label_of[s["category_id"]] for s in segs]),
                             num_instances, len(cats))


def _brute_force_ranks(ids, segment_ids):
    """Published canonical rank of each segment id present in ``ids``: sorted by
    cx + H * cy of its centre of mass, recomputed pixel by pixel."""
    h = ids.shape[0]
    keys = []
    for sid in segment_ids:
        yx = np.argwhere(ids == sid)
        if len(yx):
            cy, cx = yx.mean(0)
            keys.append((cx + h * cy, sid))
    return {sid: rank for rank, (_, sid) in enumerate(sorted(keys), start=1)}


def _one_hot(x, n):
    return (x[..., None] == np.arange(n)).astype(np.float32)


def _pq(ids, segs, cats, pred_ids, pred_segs):
    gt = [dict(s) for s in segs]
    acc = PQAccumulator(cats)
    acc.add(ids, gt, pred_ids, pred_segs)
    return acc


# ------------------------------------------------------------------------------- encoding
@R.needs_sample
def test_every_segment_kind_is_encoded():
    """Stuff, things and crowd all keep their class and get their own instance id."""
    (examples, cats) = R.coco_sample()
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    kinds = set()
    for ids, segs, _ in examples:
        labels = _encode(ids, segs, cats)
        seen = set()
        for s in segs:
            m = ids == s["id"]
            sem, inst = np.unique(labels[m][:, 0]), np.unique(labels[m][:, 1])
            assert sem.tolist() == [label_of[s["category_id"]] + 1]  # crowd too
            assert len(inst) == 1 and inst[0] > 0  # one id each, stuff and crowd too
            seen.add(int(inst[0]))
            thing = cats[label_of[s["category_id"]]]["isthing"] == 1
            kinds.add("crowd" if s["iscrowd"] else "thing" if thing else "stuff")
        assert seen == set(range(1, len(segs) + 1))  # 1..N, all distinct
        unlisted = ~np.isin(ids, [s["id"] for s in segs])
        assert unlisted.any() and not labels[unlisted].any()  # void stays (0, 0)
    assert kinds == {"stuff", "thing", "crowd"}  # the sample has every kind


@R.needs_sample
def test_canonical_order_is_centre_of_mass_as_published():
    (examples, cats) = R.coco_sample()
    for ids, segs, _ in examples:
        labels = _encode(ids, segs, cats)
        ranks = _brute_force_ranks(ids, [s["id"] for s in segs])
        for sid, rank in ranks.items():
            assert np.all(labels[ids == sid, 1] == rank)
        # Independent of the order of segments_info (the order COCO happens to list them).
        shuffled = [segs[i] for i in np.random.RandomState(0).permutation(len(segs))]
        np.testing.assert_array_equal(_encode(ids, shuffled, cats), labels)


def test_canonical_key_is_rows_first_within_a_one_pixel_band():
    """``cx + H * cy``: a centre half a row lower but far to the left comes first, so the
    order is by rows only up to one pixel, exactly as big_vision's make_canonical."""
    ids = np.zeros((8, 8), np.int64)
    ids[2, 6:8] = 1  # centre (2.0, 6.5): key 6.5 + 16 = 22.5
    ids[2:4, 0] = 2  # centre (2.5, 0.0): key 0 + 20 = 20
    ids[6, 0] = 3  # centre (6, 0): key 48
    labels = R.encode_panoptic(ids, np.array([1, 2, 3]), np.array([0, 0, 0]), 10)
    assert [labels[ids == k, 1][0] for k in (1, 2, 3)] == [2, 1, 3]


@R.needs_sample
def test_crop_then_encode_numbers_only_the_segments_left():
    """The published pipeline crops (and resizes) before make_canonical: the ids are the
    ranks among the segments present in the crop, 1..n without gaps."""
    (examples, cats) = R.coco_sample()
    ids, segs, _ = examples[1]
    crop = ids[60:260, 300:560]
    labels = _encode(crop, segs, cats)
    present = [s["id"] for s in segs if (crop == s["id"]).any()]
    assert 0 < len(present) < len(segs)
    ranks = _brute_force_ranks(crop, present)
    for sid, rank in ranks.items():
        assert np.all(labels[crop == sid, 1] == rank)
    assert set(np.unique(labels[..., 1])) - {0} == set(range(1, len(present) + 1))
    # Not the same as cropping the full image's encoding.
    assert not np.array_equal(labels, _encode(ids, segs, cats)[60:260, 300:560])


@R.needs_sample
def test_ids_beyond_the_instance_channel_become_zero_keeping_semantics():
    (examples, cats) = R.coco_sample()
    ids, segs, _ = examples[0]  # 18 segments
    full = _encode(ids, segs, cats, num_instances=100)
    capped = _encode(ids, segs, cats, num_instances=8)
    np.testing.assert_array_equal(capped[..., 0], full[..., 0])
    np.testing.assert_array_equal(capped[..., 1], np.where(full[..., 1] >= 8, 0, full[..., 1]))


def test_encoding_refuses_inconsistent_segments():
    ids = np.ones((2, 2), np.int64)
    with pytest.raises(DataError, match="disagree in length"):
        R.encode_panoptic(ids, np.array([1, 2]), np.array([0]), 4)
    with pytest.raises(DataError, match="twice"):
        R.encode_panoptic(ids, np.array([1, 1]), np.array([0, 0]), 4)
    with pytest.raises(DataError, match=r"label 5 is not a category index \(0..3 - 1\)"):
        R.encode_panoptic(ids, np.array([1]), np.array([5]), 4, num_categories=3)
    with pytest.raises(DataError, match="label -1 is not a category index"):
        R.encode_panoptic(ids, np.array([1, 2]), np.array([0, -1]), 4)


# ------------------------------------------------------------------------------- decoding
CATS = [{"id": 1, "isthing": 1, "name": "a"}, {"id": 7, "isthing": 1, "name": "b"},
        {"id": 20, "isthing": 0, "name": "s"}]


def _logits(sem, inst, n_sem=4, n_inst=4):
    return {"semantics": _one_hot(np.array(sem), n_sem), "instances": _one_hot(np.array(inst),
                                                                               n_inst)}


def test_each_instance_takes_one_class_by_summed_logits():
    # Instance 1: three pixels say class 1, one says class 2 -> all four are class 1.
    out = D.vote_instances(**_logits([[1, 1, 1, 2]], [[1, 1, 1, 1]]))
    assert out[..., 0].tolist() == [[1, 1, 1, 1]] and out[..., 1].tolist() == [[1, 1, 1, 1]]
    # The vote sums logits (published), not per-pixel argmaxes: one confident pixel wins.
    sem = _logits([[1, 1, 1, 2]], [[1, 1, 1, 1]])["semantics"]
    sem[0, 3, 2] = 10.0
    out = D.vote_instances(sem, _one_hot(np.ones((1, 4), int), 4))
    assert out[..., 0].tolist() == [[2, 2, 2, 2]]
    # Integer maps are read as one-hot logits: a majority vote.
    out = D.vote_instances(np.array([[1, 2, 2, 3]]), np.array([[1, 1, 1, 2]]))
    assert out[..., 0].tolist() == [[2, 2, 2, 3]]


def test_min_area_fraction_drops_small_instances_to_void():
    sem = [[1, 1, 1, 1], [1, 1, 2, 2]]
    inst = [[1, 1, 1, 1], [1, 1, 2, 3]]  # instance 2 and 3: 1/8 of the pixels each
    kept = D.vote_instances(**_logits(sem, inst), min_area_fraction=0.1)
    assert kept[..., 1].tolist() == [[1, 1, 1, 1], [1, 1, 2, 3]]
    # Published keeps fraction > threshold: exactly 1/8 is dropped, both channels to 0.
    dropped = D.vote_instances(**_logits(sem, inst), min_area_fraction=0.125)
    assert dropped[..., 0].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert dropped[..., 1].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_conversion_to_coco_segments():
    """Things: one segment per instance; stuff: one per class; semantics 0 is void whatever
    its instance; instance 0 is an ordinary instance."""
    sem = np.array([[1, 1, 1, 1, 3, 3, 0, 2]])
    ins = np.array([[0, 0, 1, 1, 2, 3, 4, 5]])
    ids, segs = D.two_channels_to_coco(np.stack([sem, ins], -1), CATS)
    cat_of = {s["id"]: s["category_id"] for s in segs}
    assert [cat_of.get(int(i), 0) for i in ids[0]] == [1, 1, 1, 1, 20, 20, 0, 7]
    assert len({*ids[0, :2]}) == 1 and ids[0, 0] != ids[0, 2]  # two "a" instances
    assert ids[0, 4] == ids[0, 5]  # stuff instances 2 and 3 merge
    assert ids[0, 6] == 0
    for s in segs:
        m = ids == s["id"]
        assert s["area"] == int(m.sum()) and s["iscrowd"] == 0
        ys, xs = np.nonzero(m)
        assert s["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                             int(np.ptp(ys)) + 1]
    assert sorted(s["id"] for s in segs) == list(range(1, len(segs) + 1))


def test_resize_is_nearest_with_half_pixel_centres_like_jax():
    """The resize postprocess puts the decoded map back with (the library's) is jax's."""
    import jax
    x = np.random.RandomState(0).randint(0, 50, (13, 17, 2)).astype(np.int32)
    for size in ((31, 40), (5, 7), (13, 17)):
        want = np.asarray(jax.image.resize(x, size + (2,), "nearest"))
        np.testing.assert_array_equal(resize_nearest(x, size), want)


@R.needs_sample
def test_converter_matches_panopticapis_own_two_channel_samples():
    """panopticapi ships the same two images in 2-channel format (stuff instance 0, crowd
    255): converting them gives exactly the COCO segments."""
    (examples, cats) = R.coco_sample()
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    remap = np.zeros(256, np.int64)
    for cid, i in label_of.items():
        remap[cid] = i + 1
    for ids, segs, name in examples:
        two = cv2.imread(str(R.SAMPLE / "sample_data" / "panoptic_examples_2ch_format" / name),
                         cv2.IMREAD_UNCHANGED)[..., ::-1]
        pred, pred_segs = D.two_channels_to_coco(
            np.stack([remap[two[..., 0]], two[..., 1].astype(np.int64)], -1), cats)
        acc = _pq(ids, segs, cats, pred, pred_segs)
        r = acc.result()
        assert r["All"]["pq"] == 1.0 and len(pred_segs) == len(segs)


# ----------------------------------------------------------------------------- round trip
@R.needs_sample
def test_round_trip_of_real_ground_truth_is_pq_100():
    """GT -> encode -> one-hot logits -> decode -> PQ against the GT: 100 (All, Things,
    Stuff). Nothing is lost: ids fit 100 channels, each instance has one class, the crowd
    segment comes back as a prediction of its own category on the crowd region, which PQ
    neither matches nor counts as a false positive."""
    (examples, cats) = R.coco_sample()
    for ids, segs, _ in examples:
        labels = _encode(ids, segs, cats)
        logits = {"semantics": _one_hot(labels[..., 0], len(cats) + 1),
                  "instances": _one_hot(labels[..., 1], 100)}
        pred, pred_segs = D.decode_panoptic(logits, cats, 0.0)
        r = _pq(ids, segs, cats, pred, pred_segs).result()
        for group in ("All", "Things", "Stuff"):
            assert r[group]["pq"] == pytest.approx(1.0)
        assert len(pred_segs) == len(segs)  # crowd included


@R.needs_sample
def test_round_trip_with_a_small_instance_channel_loses_the_late_segments():
    """With 8 instance channels, segments ranked 8.. are instance 0: instance 0 (void plus
    those segments) takes one class by the vote, so they are lost (FN) and PQ < 100, while
    the segments ranked 1..7 come back pixel for pixel."""
    (examples, cats) = R.coco_sample()
    ids, segs, _ = examples[0]
    labels = _encode(ids, segs, cats, num_instances=8)
    logits = {"semantics": _one_hot(labels[..., 0], len(cats) + 1),
              "instances": _one_hot(labels[..., 1], 8)}
    pred, pred_segs = D.decode_panoptic(logits, cats, 0.0)
    ranks = _brute_force_ranks(ids, [s["id"] for s in segs])
    for sid, rank in ranks.items():
        if rank < 8:
            pixels = ids == sid
            assert len(np.unique(pred[pixels])) == 1 and (pred == pred[pixels][0]).sum() \
                == pixels.sum()
    r = _pq(ids, segs, cats, pred, pred_segs).result()
    assert r["All"]["pq"] < 1.0


@R.needs_sample
def test_task_preprocess_and_postprocess_round_trip():
    """PanopticTask end to end on a real example (paper config at 512 px): preprocess ->
    one-hot logits -> postprocess at the raw size. Every segment is found again (RQ 100);
    SQ is below 100 only by the nearest-neighbour down- and up-sampling of the maps."""
    from uvim_givt.config import load_config

    cfg = load_config("configs/panoptic.py:size=paper")
    (examples, cats) = R.coco_sample()
    task = P.PanopticTask()
    assert [c["id"] for c in task.categories(cfg)] == [c["id"] for c in cats]
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    metric = task.metric(cfg, "panoptic")
    for ids, segs, _ in examples:
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        ex = {"image": np.zeros(ids.shape + (3,), np.uint8), "panoptic_image": rgb,
              "panoptic_objects": {
                  "id": np.array([s["id"] for s in segs], np.int64),
                  "label": np.array([label_of[s["category_id"]] for s in segs], np.int64),
                  "is_crowd": np.array([bool(s["iscrowd"]) for s in segs])}}
        inputs = task.preprocess(cfg, ex, "eval")
        labels = np.asarray(inputs["labels"])
        assert labels.shape == (512, 512, 2)
        n_sem, n_inst = cfg.vae.model.label_channels["semantics"][1], \
            cfg.vae.model.label_channels["instances"][1]
        logits = {"semantics": _one_hot(labels[..., 0], n_sem),
                  "instances": _one_hot(labels[..., 1], n_inst)}
        meta = {k: np.asarray(v) for k, v in inputs["meta"].items()}
        assert meta["size"].tolist() == list(ids.shape) and not meta["flip"]
        pred = task.postprocess(cfg, logits, meta)
        assert pred["ids"].shape == ids.shape
        metric.add(ex, pred)
    r = metric.result()
    assert r["RQ"] == pytest.approx(100.0) and r["SQ"] > 95.0
