"""COCO panoptic segmentation with UViM + GIVT.

    python -m tasks.panoptic train                      # embedded default, tiny config
    python -m tasks.panoptic train --config configs/panoptic.py:size=paper \
        --data tfds:coco/2017_panoptic
    python -m tasks.panoptic predict --ckpt RUN --images DIR --out DIR
    python -m tasks.panoptic eval --ckpt RUN [--oracle]

Labels (two channels, ``vae.model.label_channels``), as published in big_vision's UViM/GIVT
panoptic pipeline (``encode_panoptic``): semantics = category index + 1 for every segment,
crowd included (0 = unlabelled); every segment, stuff and crowd included, gets an instance
id 1.. in canonical order (centre of mass, rows first) computed after the crop, 0 = unlabelled.
Decoding (``decode_panoptic``): argmax instance map, one class per instance by summing its
pixels' semantic logits, optional minimum area fraction, then COCO segments: one per thing
instance, one per stuff category. ``data.panoptic_encoding = "things"`` (the tiny preset,
which measured better with it) selects ``encode_things`` / ``decode_things`` instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from scipy import sparse

from evals.panoptic_io import id_to_rgb, rgb_to_id
from evals.pq import PQAccumulator
from tasks import common
from uvim_givt import rundir, schema
from uvim_givt.data import pipeline
from uvim_givt.data.images import read_image, write_png
from uvim_givt.errors import ConfigError, DataError
from uvim_givt.models import builders

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
COCO_CATEGORIES_FILE = os.path.join(_DATA, "coco_panoptic_categories.json")


# ------------------------------------------------------------------------------ categories
def categories_for(source: str) -> list[dict[str, Any]]:
    """The category list whose positions are the ``label`` values of an embedded or TFDS
    source (a folder's are in its JSON: ``PanopticTask.categories``)."""
    kind, _ = pipeline.parse_source(source)
    if kind == "embedded":
        from tasks.datasets.synthetic_panoptic import CATEGORIES
        return [dict(c) for c in CATEGORIES]
    with open(COCO_CATEGORIES_FILE) as f:
        return json.load(f)  # the 133 COCO panoptic categories, in id order as TFDS labels


# ------------------------------------------------------------------------ label encoding
def _segment_index(ids_map: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Position in ``segment_ids`` of each pixel's id, -1 where the id is not listed."""
    if len(segment_ids) == 0:
        return np.full(ids_map.shape, -1, np.int64)
    order = np.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids_map), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids_map, order[pos], -1)


def _check_fields(segment_ids: Any, segment_labels: Any, num_categories: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of ``panoptic_objects`` as int64, checked: a ``DataError`` names the
    first problem."""
    segment_ids = np.asarray(segment_ids).astype(np.int64)
    segment_labels = np.asarray(segment_labels).astype(np.int64)
    if len(segment_ids) != len(segment_labels):
        raise DataError(f"panoptic_objects fields disagree in length: id {len(segment_ids)}, "
                        f"label {len(segment_labels)}")
    if len(np.unique(segment_ids)) != len(segment_ids):
        raise DataError("panoptic_objects lists a segment id twice")
    bad = segment_labels < 0
    if num_categories is not None:
        bad |= segment_labels >= num_categories
    if bad.any():
        raise DataError(f"panoptic_objects label {int(segment_labels[bad][0])} is not a "
                        f"category index (0..{num_categories or 'N'} - 1)")
    return segment_ids, segment_labels


def _check_crowd(segment_ids: Any, is_crowd: Any) -> np.ndarray:
    """``is_crowd`` as bool, checked against the ids' length."""
    is_crowd = np.asarray(is_crowd).astype(bool)
    if len(is_crowd) != len(segment_ids):
        raise DataError(f"panoptic_objects fields disagree in length: id {len(segment_ids)}, "
                        f"is_crowd {len(is_crowd)}")
    return is_crowd


def _segments(ids_map: np.ndarray, segment_ids: Any, segment_labels: Any,
              num_categories: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment index per pixel, ids, labels) of checked ``panoptic_objects`` fields."""
    segment_ids, segment_labels = _check_fields(segment_ids, segment_labels, num_categories)
    seg = _segment_index(np.asarray(ids_map).astype(np.int64), segment_ids)
    return seg, segment_ids, segment_labels


def canonical_order(seg: np.ndarray, num_segments: int, strict_rows: bool = False
                    ) -> np.ndarray:
    """Canonical rank (1..) of each segment present in ``seg`` [H, W] (segment index per
    pixel, -1 = none); 0 for absent segments.

    big_vision's ``make_canonical``: segments sorted by ``cx + H * cy`` of their centre of
    mass (pixel indices), i.e. rows first and, within a one-pixel band of rows, columns;
    ties keep the order of first appearance in a row-major scan. ``strict_rows``: sorted
    by (cy, cx) instead, the ``things`` encoding's order.
    """
    h, w = seg.shape
    flat = seg.ravel()
    where = np.flatnonzero(flat >= 0)
    s = flat[where]
    counts = np.bincount(s, minlength=num_segments)
    rank = np.zeros(num_segments, np.int64)
    if len(where) == 0:
        return rank
    ys, xs = np.divmod(where, w)
    cy = np.bincount(s, weights=ys, minlength=num_segments)
    cx = np.bincount(s, weights=xs, minlength=num_segments)
    present, first = np.unique(s, return_index=True)
    present = present[np.argsort(first, kind="stable")]  # row-major first appearance
    cy, cx = cy[present] / counts[present], cx[present] / counts[present]
    order = np.lexsort((cx, cy)) if strict_rows else np.argsort(cx + h * cy, kind="stable")
    ranked = present[order]
    rank[ranked] = np.arange(1, len(ranked) + 1)
    return rank


def encode_panoptic(ids_map: np.ndarray, segment_ids: np.ndarray, segment_labels: np.ndarray,
                    num_instances: int, num_categories: int | None = None) -> np.ndarray:
    """COCO id map [H, W] + its segments -> int32 label map [H, W, 2] (semantics, instances).

    As big_vision's ``coco_panoptic`` + ``make_canonical`` ops: every listed segment (thing,
    stuff or crowd alike) gets semantics ``label + 1`` and an instance id 1.. in canonical
    order (``canonical_order``) over the segments present in this (cropped, resized) map;
    pixels whose id is not listed are (0, 0). Call it after cropping: the order depends on
    the crop. Ids that do not fit the instance channel (>= ``num_instances``) become 0, the
    class unlabelled pixels have; the semantics stay. (Published, such ids are an all-zero
    one-hot with no loss; our cross-entropy would read them out of range.)
    """
    seg, segment_ids, segment_labels = _segments(ids_map, segment_ids, segment_labels,
                                                 num_categories)
    valid = seg >= 0
    sem = np.zeros(seg.shape, np.int32)
    inst = np.zeros(seg.shape, np.int32)
    sem[valid] = segment_labels[seg[valid]] + 1
    rank = canonical_order(seg, len(segment_ids))
    rank[rank >= num_instances] = 0
    inst[valid] = rank[seg[valid]]
    return np.stack([sem, inst], -1)


# ------------------------------------------------------------------------ label decoding
def vote_instances(semantics: np.ndarray, instances: np.ndarray,
                   min_area_fraction: float = 0.0) -> np.ndarray:
    """Per-pixel logits -> int32 two-channel map [H, W, 2] (semantics, instances).

    big_vision's ``panoptic_predictions_from_logits``: instance = argmax of the instance
    logits; each instance takes the class whose semantic logits, summed over its pixels, are
    largest (so an instance is never split across classes); instances covering at most
    ``min_area_fraction`` of the pixels become (0, 0). Integer maps [H, W] in place of
    logits are read as one-hot logits, i.e. a per-instance majority vote of pixel classes.
    """
    if instances.ndim == 3:
        n = instances.shape[-1]
        ins = np.argmax(instances, -1)
    else:
        ins = instances.astype(np.int64)
        n = int(ins.max()) + 1
    flat = ins.ravel()
    if semantics.ndim == 3:
        # Sum per instance as a sparse (instance x pixel) product: one pass over the logits,
        # whatever the number of instances (a 512 x 512 x 134 map in ~0.1 s).
        c = semantics.shape[-1]
        member = sparse.csr_matrix((np.ones(flat.size, np.float32), (flat, np.arange(flat.size))),
                                   shape=(n, flat.size))
        sums = np.asarray(member @ semantics.reshape(-1, c).astype(np.float32, copy=False))
    else:
        c = int(semantics.max()) + 1
        sums = np.bincount(flat * c + semantics.ravel().astype(np.int64),
                           minlength=n * c).reshape(n, c).astype(np.float64)
    label = np.argmax(sums, -1)
    fraction = np.bincount(flat, minlength=n) / flat.size
    keep = (fraction > min_area_fraction)[ins]
    return np.stack([np.where(keep, label[ins], 0), np.where(keep, ins, 0)], -1).astype(np.int32)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [H, W, ...] with half-pixel centres, as
    ``jax.image.resize(..., "nearest")`` that the published evaluator uses."""
    h, w = labels.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[rows][:, cols]


def two_channels_to_coco(labels: np.ndarray, categories: Sequence[Mapping[str, Any]]
                         ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Two-channel map [H, W, 2] (semantics, instances) -> COCO id map + segments_info.

    As panopticapi's 2-channel converter that the published evaluator runs: semantics 0 is
    void whatever the instance; every (class, instance) pair of a thing class is a segment;
    a stuff class is one segment (the converter gives all its instances the category's
    colour, i.e. one id). Ids are 1.. in (class, instance) order: PQ does not depend on
    them (published ones are random colour codes).
    """
    sem = labels[..., 0].astype(np.int64)
    ins = labels[..., 1].astype(np.int64)
    bad = (sem < 0) | (sem > len(categories))
    if bad.any():
        raise ValueError(f"semantic class {int(sem[bad][0])} is neither void (0) nor one of "
                         f"the {len(categories)} categories (1..{len(categories)})")
    isthing = np.array([False] + [c["isthing"] == 1 for c in categories])
    stride = int(ins.max()) + 1 if ins.size else 1
    key = np.where(sem == 0, -1, sem * stride + np.where(isthing[sem], ins, 0))
    uniq, inverse, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    number = np.zeros(len(uniq), np.int32)
    segments = []
    for u, (k, n) in enumerate(zip(uniq, counts, strict=True)):
        if k < 0:
            continue
        number[u] = len(segments) + 1
        segments.append({"id": int(number[u]),
                         "category_id": int(categories[int(k // stride) - 1]["id"]),
                         "iscrowd": 0, "area": int(n)})
    ids = number[inverse.ravel()].reshape(sem.shape)
    _add_bboxes(ids, segments)
    return ids, segments


def _add_bboxes(ids: np.ndarray, segments: list[dict[str, Any]]) -> None:
    """COCO ``bbox`` [x, y, w, h] of each segment, in one pass over the pixels."""
    if not segments:
        return
    n = len(segments) + 1
    ys, xs = np.indices(ids.shape)
    flat = ids.ravel()
    big = np.iinfo(np.int64).max
    x0 = np.full(n, big)
    y0 = np.full(n, big)
    x1 = np.full(n, -1)
    y1 = np.full(n, -1)
    np.minimum.at(x0, flat, xs.ravel())
    np.minimum.at(y0, flat, ys.ravel())
    np.maximum.at(x1, flat, xs.ravel())
    np.maximum.at(y1, flat, ys.ravel())
    for s in segments:
        i = s["id"]
        s["bbox"] = [int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)]


def decode_panoptic(outputs: Mapping[str, np.ndarray] | np.ndarray,
                    categories: Sequence[Mapping[str, Any]], min_area_fraction: float = 0.0,
                    size: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decoder output -> (COCO id map, segments_info), the published decoding.

    ``outputs``: ``{"semantics": [H, W, C], "instances": [H, W, N]}`` logits, or an int
    two-channel map [H, W, 2] (read as one-hot logits). ``vote_instances`` runs at the
    model's resolution (so ``min_area_fraction`` is of its pixels), the two-channel map is
    then resized to ``size`` (the raw image's (H, W)) and converted by
    ``two_channels_to_coco``, in the published evaluator's order.
    """
    if isinstance(outputs, Mapping):
        sem, ins = np.asarray(outputs["semantics"]), np.asarray(outputs["instances"])
    else:
        sem, ins = outputs[..., 0], outputs[..., 1]
    labels = vote_instances(sem, ins, min_area_fraction)
    if size is not None and tuple(size) != labels.shape[:2]:
        labels = resize_nearest(labels, (int(size[0]), int(size[1])))
    return two_channels_to_coco(labels, categories)


# ------------------------------------------- the "things" coding (tiny preset, measured better)
ENCODINGS = ("published", "things")


def encode_things(ids_map: np.ndarray, segment_ids: np.ndarray, segment_labels: np.ndarray,
                  is_crowd: np.ndarray, isthing: np.ndarray, num_instances: int) -> np.ndarray:
    """The ``things`` encoding: like ``encode_panoptic`` but only non-crowd thing segments
    get instance ids (canonical order among them); stuff has instance 0 and crowd pixels
    are void (0, 0), as PQ ignores crowd regions anyway."""
    is_crowd = _check_crowd(segment_ids, is_crowd)
    seg, segment_ids, segment_labels = _segments(ids_map, segment_ids, segment_labels,
                                                 len(isthing))
    if len(segment_ids) == 0:
        return np.zeros((*seg.shape, 2), np.int32)
    safe = np.maximum(seg, 0)
    counted = (seg >= 0) & ~is_crowd[safe]
    sem = np.where(counted, segment_labels[safe] + 1, 0)
    thing_seg = np.where(counted & isthing[segment_labels][safe], seg, -1)
    rank = canonical_order(thing_seg, len(segment_ids), strict_rows=True)
    rank[rank >= num_instances] = 0
    inst = np.where(thing_seg >= 0, rank[np.maximum(thing_seg, 0)], 0)
    return np.stack([sem, inst], -1).astype(np.int32)


def decode_things(outputs: Mapping[str, np.ndarray], categories: Sequence[Mapping[str, Any]],
                  min_area_fraction: float = 0.0, size: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The ``things`` decoding: per-pixel argmax of both channels (no vote), resized to
    ``size``; stuff: one segment per class; things: one per (class, instance), thing
    pixels of instance 0 are void; segments of at most ``min_area_fraction`` of the
    pixels are void."""
    sem = np.argmax(outputs["semantics"], -1)
    ins = np.argmax(outputs["instances"], -1)
    if size is not None and tuple(size) != sem.shape:
        two = resize_nearest(np.stack([sem, ins], -1), (int(size[0]), int(size[1])))
        sem, ins = two[..., 0], two[..., 1]
    isthing = np.array([False] + [c["isthing"] == 1 for c in categories])
    thing = isthing[sem]
    two = np.stack([np.where(thing & (ins == 0), 0, sem), np.where(thing, ins, 0)], -1)
    ids, segments = two_channels_to_coco(two, categories)
    small = [s["id"] for s in segments if s["area"] / ids.size <= min_area_fraction]
    if small:
        ids = np.where(np.isin(ids, small), 0, ids)
        kept = [s for s in segments if s["id"] not in set(small)]
        renumber = np.zeros(len(segments) + 1, np.int32)
        for k, s in enumerate(kept, start=1):
            renumber[s["id"]] = k
            s["id"] = k
        ids = renumber[ids]
        segments = kept
    return ids, segments


# ------------------------------------------- both encodings as TensorFlow graph ops (training)
# The input pipeline runs these; the numpy functions above are their reference (the same
# output bit for bit: tests/test_input_pipeline.py). Per pixel they make four passes (unique
# ids, two histograms, one table lookup); the per-segment work is on arrays of a few dozen.
# The numpy code in tf.numpy_function took more CPU time (panoptic training preprocessing:
# half the examples per CPU second) and ran under the Python GIL, which serialises the
# tf.data threads running it: it cannot scale with a GPU host's cores (bench_input.py).
def _fail_fields(segment_ids: np.ndarray, segment_labels: np.ndarray, is_crowd: np.ndarray,
                 num_categories: int, check_crowd: bool) -> np.ndarray:
    """Raises the ``DataError`` of bad fields (called only when the graph's checks fail)."""
    if check_crowd:
        _check_crowd(segment_ids, is_crowd)
    _check_fields(segment_ids, segment_labels, num_categories if num_categories >= 0 else None)
    raise AssertionError("the graph and numpy checks of panoptic_objects disagree")


def _checked_fields_tf(segment_ids: Any, segment_labels: Any, is_crowd: Any | None,
                       num_categories: int | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(ids, labels, is_crowd) as int64, int64, bool, checked in the graph as
    ``_check_fields`` / ``_check_crowd`` check them. Everything after reads these outputs,
    so it runs on checked fields only; a bad example goes to Python, to raise their
    ``DataError`` (tf.data re-raises it, ``errors.user_error_message`` reports one line)."""
    ids, labels = tf.cast(segment_ids, tf.int64), tf.cast(segment_labels, tf.int64)
    crowd = tf.zeros_like(ids, tf.bool) if is_crowd is None else tf.cast(is_crowd, tf.bool)
    n = tf.size(ids)
    ok = tf.equal(n, tf.size(labels)) & tf.equal(n, tf.size(crowd))
    ok &= tf.equal(tf.size(tf.unique(ids).y), n)
    in_range = labels >= 0
    if num_categories is not None:
        in_range &= labels < num_categories
    ok &= tf.reduce_all(in_range)
    args = (-1 if num_categories is None else int(num_categories), is_crowd is not None)

    def fail() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        out = tf.numpy_function(lambda i, lab, c: _fail_fields(i, lab, c, *args),
                                [ids, labels, crowd], tf.int64, stateful=False)
        return out, out, tf.cast(out, tf.bool)

    ids, labels, crowd = tf.cond(ok, lambda: (ids, labels, crowd), fail)
    for t in (ids, labels, crowd):
        t.set_shape([None])
    return ids, labels, crowd


def _index_in(values: tf.Tensor, segment_ids: tf.Tensor) -> tf.Tensor:
    """Position in ``segment_ids`` of each of ``values`` [U], -1 where it is not listed."""
    values = tf.cast(values, tf.int64)
    order = tf.argsort(segment_ids, stable=True)
    # A sentinel past the end (no id reaches it) spares a clip and the empty case.
    sorted_ids = tf.concat([tf.gather(segment_ids, order), [np.iinfo(np.int64).max]], 0)
    pos = tf.searchsorted(sorted_ids, values)
    return tf.where(tf.gather(sorted_ids, pos) == values,
                    tf.gather(tf.concat([order, [-1]], 0), pos), -1)


def _encode_tf(ids_map: Any, segment_ids: tf.Tensor, segment_labels: tf.Tensor,
               counted: tf.Tensor, ranked: tf.Tensor, num_instances: int, strict_rows: bool
               ) -> tf.Tensor:
    """int32 [H, W, 2]: semantics ``label + 1`` on pixels of ``counted`` segments, canonical
    instance ids among the ``ranked`` ones (``canonical_order``), 0 elsewhere.

    Works per distinct pixel id: ``tf.unique`` numbers the ids in row-major order of first
    appearance (the tie order ``canonical_order`` keeps), per-row and per-column histograms
    of those numbers give each id's pixel count and centre of mass, and a table [ids, 2]
    looked up per pixel writes the result.
    """
    shape = tf.shape(ids_map)
    h, w = shape[0], shape[1]
    uniq = tf.unique(tf.reshape(ids_map, [-1]), out_idx=tf.int32)
    num = tf.size(uniq.y)
    idx = tf.reshape(uniq.idx, [h, w])
    per_row = tf.cast(tf.math.bincount(idx, minlength=num, maxlength=num, axis=-1), tf.int64)
    per_col = tf.cast(tf.math.bincount(tf.transpose(idx), minlength=num, maxlength=num,
                                       axis=-1), tf.int64)
    count = tf.reduce_sum(per_row, 0)
    # Integer sums, exact, then one float64 division each: bit-identical to numpy's centres.
    sum_y = tf.reduce_sum(per_row * tf.range(tf.cast(h, tf.int64))[:, None], 0)
    sum_x = tf.reduce_sum(per_col * tf.range(tf.cast(w, tf.int64))[:, None], 0)
    cy = tf.cast(sum_y, tf.float64) / tf.cast(count, tf.float64)
    cx = tf.cast(sum_x, tf.float64) / tf.cast(count, tf.float64)

    seg = _index_in(uniq.y, segment_ids)  # segment of each distinct id, -1 = unlisted
    # Per-segment values padded with the unlisted ids' value (also spares the empty case).
    at = tf.where(seg >= 0, seg, tf.size(segment_ids))

    def of_ids(per_segment: tf.Tensor, void: Any) -> tf.Tensor:
        return tf.gather(tf.concat([per_segment, [void]], 0), at)

    sem = tf.where(of_ids(counted, False), of_ids(segment_labels + 1, 0), 0)
    # Candidates in order of first appearance; stable sorts, least significant key first.
    cand = tf.where(of_ids(ranked, False))[:, 0]
    cy, cx = tf.gather(cy, cand), tf.gather(cx, cand)
    perm = tf.range(tf.size(cand))
    keys = (cx, cy) if strict_rows else (cx + tf.cast(h, tf.float64) * cy,)
    for key in keys:
        perm = tf.gather(perm, tf.argsort(tf.gather(key, perm), stable=True))
    ordered = tf.gather(cand, perm)
    rank = tf.scatter_nd(ordered[:, None], tf.range(1, tf.size(ordered, tf.int64) + 1),
                         tf.cast(num, tf.int64)[None])
    rank = tf.where(rank >= num_instances, tf.zeros_like(rank), rank)
    table = tf.cast(tf.stack([sem, rank], -1), tf.int32)
    return tf.gather(table, idx)


def encode_panoptic_tf(ids_map: Any, segment_ids: Any, segment_labels: Any,
                       num_instances: int, num_categories: int | None = None) -> tf.Tensor:
    """``encode_panoptic`` in TensorFlow graph ops: the same int32 [H, W, 2], bit for bit."""
    ids, labels, _ = _checked_fields_tf(segment_ids, segment_labels, None, num_categories)
    every = tf.ones_like(ids, tf.bool)
    return _encode_tf(ids_map, ids, labels, every, every, num_instances, strict_rows=False)


def encode_things_tf(ids_map: Any, segment_ids: Any, segment_labels: Any, is_crowd: Any,
                     isthing: np.ndarray, num_instances: int) -> tf.Tensor:
    """``encode_things`` in TensorFlow graph ops: the same int32 [H, W, 2], bit for bit."""
    isthing = np.asarray(isthing, bool)
    ids, labels, crowd = _checked_fields_tf(segment_ids, segment_labels, is_crowd, len(isthing))
    counted = ~crowd
    things = counted & tf.gather(tf.constant(isthing), labels)
    return _encode_tf(ids_map, ids, labels, counted, things, num_instances, strict_rows=True)


# ------------------------------------------------------------------------------ the reader
def _folder_paths(root: str, split: str) -> tuple[str, str, str]:
    names = {"validation": ("validation", "val2017", "val"), "train": ("train", "train2017")}
    for name in names.get(split, (split,)):
        js = os.path.join(root, "annotations", f"panoptic_{name}.json")
        if os.path.isfile(js):
            return js, os.path.join(root, "annotations", f"panoptic_{name}"), \
                os.path.join(root, name)
    raise DataError(
        f"folder:{root}: no annotations/panoptic_<split>.json for split {split!r} "
        f"(looked for {', '.join(names.get(split, (split,)))})")


def read_coco_folder(root: str, split: str, skip_bad: bool = False
                     ) -> tuple[list[dict], Iterator[dict[str, Any]]]:
    """COCO panoptic folder -> (categories, examples as TFDS-like numpy dicts).

    Every problem names the file: ids in the JSON missing from the PNG or the
    reverse, unknown categories, unreadable images. With ``skip_bad`` such
    examples are skipped and counted instead (printed at the end).
    """
    js, png_dir, img_dir = _folder_paths(root, split)
    with open(js) as f:
        doc = json.load(f)
    categories = doc["categories"]
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    images = {im["id"]: im for im in doc.get("images", [])}

    def examples():
        skipped = []
        for ann in doc["annotations"]:
            try:
                yield _folder_example(ann, images, png_dir, img_dir, label_of)
            except DataError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
        if skipped:
            print(f"warning: skipped {len(skipped)} bad examples in {root}; first: {skipped[0]}",
                  file=sys.stderr)

    return categories, examples()


def _folder_example(ann, images, png_dir, img_dir, label_of) -> dict[str, Any]:
    png = os.path.join(png_dir, ann["file_name"])
    im_info = images.get(ann["image_id"], {})
    stem = os.path.splitext(ann["file_name"])[0]
    jpg = os.path.join(img_dir, im_info.get("file_name", stem + ".jpg"))
    image = read_image(jpg)
    pan = read_image(png)[..., ::-1]
    if pan.shape[:2] != image.shape[:2]:
        raise DataError(f"{png}: size {pan.shape[:2]} differs from image "
                                 f"{jpg} {image.shape[:2]}")
    ids_png = set(np.unique(rgb_to_id(pan)).tolist()) - {0}
    segs = ann["segments_info"]
    ids_json = {s["id"] for s in segs}
    if ids_json - ids_png:
        raise DataError(f"{png}: segment ids {sorted(ids_json - ids_png)[:10]} are in "
                                 "the JSON but not in the PNG")
    if ids_png - ids_json:
        raise DataError(f"{png}: segment ids {sorted(ids_png - ids_json)[:10]} are in "
                                 "the PNG but not in the JSON segments_info")
    for s in segs:
        if s["category_id"] not in label_of:
            raise DataError(f"{png}: segment {s['id']} has unknown category_id "
                                     f"{s['category_id']}")
    return {
        "image": image[..., ::-1].copy(),
        "image/id": np.int64(ann["image_id"]),
        "panoptic_image": pan.copy(),
        "panoptic_objects": {
            "id": np.array([s["id"] for s in segs], np.int64),
            "label": np.array([label_of[s["category_id"]] for s in segs], np.int64),
            "is_crowd": np.array([bool(s.get("iscrowd", 0)) for s in segs], bool),
        },
    }


# -------------------------------------------------------------------------------- the task
class PanopticTask:
    """COCO panoptic: reading, the label encoding, decoding to segments, PQ."""

    #: The choices and ranges of the panoptic keys (uvim_givt/schema.py).
    config_rules: schema.Rules = (
        (r"data\.panoptic_encoding", schema.OneOf(ENCODINGS)),
        # a fraction of the decoded map's pixels; 0 = keep every instance
        (r"data\.min_area_fraction", schema.FRACTION_BELOW_1),
    )

    name = "panoptic"
    mirror_equivariant = False  # canonical instance ids depend on position

    def check_config(self, cfg) -> None:
        """The data's categories must fit the semantics channel (categories + void), checked
        before a run directory is written (a mismatch used to surface as a NaN loss)."""
        n_cats = len(self._cats(cfg))  # cached: preprocess and the metric read them too
        n_sem = builders.label_channels(cfg)["semantics"][1]
        if n_sem != n_cats + 1:
            raise ConfigError(
                f"{cfg.data.source} has {n_cats} categories, but vae.model.label_channels."
                f"semantics has {n_sem} classes (categories + void): pass --set "
                f"vae.model.label_channels.semantics=(0,{n_cats + 1})")

    def categories(self, cfg) -> list[dict[str, Any]]:
        kind, arg = pipeline.parse_source(cfg.data.source)
        if kind == "folder":
            js, _, _ = _folder_paths(arg, cfg.data.val_split)
            with open(js) as f:
                return json.load(f)["categories"]
        return categories_for(cfg.data.source)

    def load(self, cfg, source: str, split: str) -> tf.data.Dataset:
        kind, arg = pipeline.parse_source(source)
        if kind == "embedded":
            from tasks.datasets.synthetic_panoptic import SyntheticPanoptic
            from uvim_givt.data.embedded import ensure_built
            builder = ensure_built(SyntheticPanoptic, **embedded_overrides(cfg))
            ds = builder.as_dataset(split=split, shuffle_files=False)
        elif kind == "tfds":
            import tensorflow_datasets as tfds
            try:
                ds = tfds.load(arg, split=split, shuffle_files=False, download=False)
            except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
                raise DataError(
                    f"tfds:{arg} split {split!r} is not available ({e}). Prepare it first "
                    f"(e.g. `tfds build {arg}`; COCO needs its download)") from None
        else:
            _, gen = read_coco_folder(arg, split, skip_bad=bool(cfg.data.skip_bad))
            sig = {
                "image": tf.TensorSpec((None, None, 3), tf.uint8),
                "image/id": tf.TensorSpec((), tf.int64),
                "panoptic_image": tf.TensorSpec((None, None, 3), tf.uint8),
                "panoptic_objects": {"id": tf.TensorSpec((None,), tf.int64),
                                     "label": tf.TensorSpec((None,), tf.int64),
                                     "is_crowd": tf.TensorSpec((None,), tf.bool)},
            }
            ds = tf.data.Dataset.from_generator(
                lambda: read_coco_folder(arg, split, bool(cfg.data.skip_bad))[1],
                output_signature=sig)
            del gen
        return ds.map(_keep_fields)

    def preprocess(self, cfg, example, train, seed=None, *, numpy_encoding: bool = False):
        """Model inputs {image, labels}. ``numpy_encoding``: encode the labels with the numpy
        reference in ``tf.numpy_function``, as the pipeline did before the graph encoders
        (the same output, slower and under the GIL; for tests and bench_input.py)."""
        size = int(cfg.data.image_size)
        image = example["image"]
        pan = tf.cast(example["panoptic_image"], tf.int32)
        ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        if train:
            image, ids = common.random_train_view(cfg, seed, image, ids)
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
        ids = tf.image.resize(ids[..., None], (size, size), method="nearest")[..., 0]
        cats = self._cats(cfg)
        isthing = np.array([c["isthing"] == 1 for c in cats])
        n_inst = builders.label_channels(cfg)["instances"][1]
        published = cfg.data.panoptic_encoding == "published"
        objs = example["panoptic_objects"]

        # After the crop and resize: the canonical order is over the segments still present.
        if numpy_encoding:
            def enc(i, oid, lab, crowd):
                if published:
                    return encode_panoptic(i, oid, lab, n_inst, len(cats))
                return encode_things(i, oid, lab, crowd, isthing, n_inst)

            labels = tf.numpy_function(enc, [ids, objs["id"], objs["label"], objs["is_crowd"]],
                                       tf.int32, stateful=False)
        elif published:
            labels = encode_panoptic_tf(ids, objs["id"], objs["label"], n_inst, len(cats))
        else:
            labels = encode_things_tf(ids, objs["id"], objs["label"], objs["is_crowd"], isthing,
                                      n_inst)
        labels = tf.ensure_shape(labels, (size, size, 2))
        return {"image": image / 127.5 - 1.0, "labels": labels}

    def postprocess(self, cfg, logits, example=None):
        size = example["image"].shape[:2] if example is not None and "image" in example else None
        decode = decode_panoptic if cfg.data.panoptic_encoding == "published" else decode_things
        ids, segments = decode(logits, self._cats(cfg), float(cfg.data.min_area_fraction), size)
        return {"ids": ids, "segments_info": segments}

    def _cats(self, cfg):
        if not hasattr(self, "_cat_cache"):
            self._cat_cache = {}
        key = cfg.data.source
        if key not in self._cat_cache:
            self._cat_cache[key] = self.categories(cfg)
        return self._cat_cache[key]

    def metric(self, cfg, kind: str) -> PanopticMetric:
        if kind != "panoptic":
            raise ConfigError(f"the panoptic task has no {kind!r} metric (evals.*.kind)")
        return PanopticMetric(self._cats(cfg))

    def draw(self, cfg, example, prediction) -> np.ndarray:
        cats = {c["id"]: c for c in self._cats(cfg)}
        image = example["image"]
        panels = [image]
        if "panoptic_image" in example:
            gt_ids = rgb_to_id(example["panoptic_image"])
            labels = {int(i): self._cats(cfg)[int(lab)]
                      for i, lab in zip(example["panoptic_objects"]["id"],
                                        example["panoptic_objects"]["label"], strict=True)}
            panels.append(colorize(image, gt_ids, labels))
        pred_cats = {s["id"]: cats[s["category_id"]] for s in prediction["segments_info"]}
        panels.append(colorize(image, prediction["ids"], pred_cats))
        return np.concatenate(panels, axis=1)


def embedded_overrides(cfg) -> dict[str, int]:
    """Builder-config overrides of the embedded dataset asked for by the config."""
    out = {}
    if int(cfg.data.image_size) != 64:
        out["image_size"] = int(cfg.data.image_size)
    for key in ("num_train", "num_validation"):
        if int(cfg.data[f"embedded_{key}"]):
            out[key] = int(cfg.data[f"embedded_{key}"])
    return out


def _keep_fields(ex):
    objs = ex["panoptic_objects"]
    return {"image": ex["image"], "image/id": ex["image/id"],
            "panoptic_image": ex["panoptic_image"],
            "panoptic_objects": {"id": objs["id"], "label": objs["label"],
                                 "is_crowd": objs["is_crowd"]}}


def colorize(image: np.ndarray, ids: np.ndarray, cat_of: dict[int, dict]) -> np.ndarray:
    """Blends category colours (things jittered per instance) and white boundaries."""
    out = image.astype(np.float32) * 0.35
    rng = np.random.RandomState(0)
    for sid, cat in cat_of.items():
        m = ids == sid
        if not m.any():
            continue
        color = np.array(cat.get("color", [200, 200, 200]), np.float32)
        if cat.get("isthing"):
            color = np.clip(color + rng.randint(-60, 60, 3), 0, 255)
        out[m] += 0.65 * color
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    out[edge] = 255
    return np.clip(out, 0, 255).astype(np.uint8)


class PanopticMetric:
    """PQ/SQ/RQ with panopticapi's definition (evals.pq), fed in memory."""

    def __init__(self, categories: list[dict]):
        self.categories = categories
        self.acc = PQAccumulator(categories)

    def add(self, example, prediction) -> None:
        objs = example["panoptic_objects"]
        gt_segments = [
            {"id": int(i), "category_id": int(self.categories[int(lab)]["id"]),
             "iscrowd": int(bool(c))}
            for i, lab, c in zip(objs["id"], objs["label"], objs["is_crowd"], strict=True)]
        gt_ids = rgb_to_id(example["panoptic_image"])
        for s in gt_segments:
            s["area"] = int((gt_ids == s["id"]).sum())
        self.acc.add(gt_ids, gt_segments, prediction["ids"], prediction["segments_info"],
                     image=int(example.get("image/id", self.acc.num_images)))

    def result(self) -> dict[str, float]:
        r = self.acc.result()
        out = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for k in ("pq", "sq", "rq"):
                out[k.upper() + suffix] = 100.0 * float(r[group][k])
        out["num_images"] = float(self.acc.num_images)
        return out

    def details(self) -> dict[str, Any]:
        """Per-class PQ/SQ/RQ (x100) and TP/FP/FN, for the eval record."""
        return {"per_class": {str(cid): {k: (100.0 * v if k in ("pq", "sq", "rq") else v)
                                         for k, v in r.items()}
                              for cid, r in self.acc.result()["per_class"].items()}}


TASK = PanopticTask()


# ----------------------------------------------------------------------- prediction files
def write_coco_prediction(out_dir: str, name: str, image_id, prediction: dict) -> dict:
    """Writes one prediction PNG; returns its COCO annotation entry."""
    file_name = f"{name}.png"
    write_png(os.path.join(out_dir, "panoptic_pred", file_name), id_to_rgb(prediction["ids"]))
    return {"image_id": image_id, "file_name": file_name,
            "segments_info": prediction["segments_info"]}


def write_predictions(task: PanopticTask, run: Any, args: common.PredictArgs,
                      predictions: Iterator, flush_every: int = 64) -> str:
    """``predict``: COCO panoptic PNGs + panoptic_pred.json (COCO image ids), and overlays.

    The JSON is rewritten every ``flush_every`` images and when anything fails, so it
    always lists the PNGs already written: ``evals.panoptic`` can score a partial run.
    """
    out, annotations = args.out, []
    json_path = os.path.join(out, "panoptic_pred.json")

    def flush():
        rundir.write_json(json_path, {"annotations": annotations,
                                      "categories": task._cats(run.cfg), "step": run.givt_step})
    try:
        for name, ex, pred in predictions:
            image_id, stem = args.image_ids(name)
            annotations.append(write_coco_prediction(out, stem, image_id, pred))
            write_png(os.path.join(out, "overlays", f"{stem}.png"), task.draw(run.cfg, ex, pred))
            if len(annotations) % flush_every == 0:
                flush()
    except BaseException:
        flush()
        print(f"{json_path}: the {len(annotations)} predictions done before the failure are "
              "saved", file=sys.stderr)
        raise
    flush()
    return (f"wrote {len(annotations)} predictions to {out} (panoptic_pred.json, "
            "panoptic_pred/, overlays/)")


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / predict); returns the exit status."""
    return common.main(TASK, [common.predict_command(
        "predict COCO panoptic PNG+JSON and overlays for images", write_predictions)], argv)


if __name__ == "__main__":
    sys.exit(main())
