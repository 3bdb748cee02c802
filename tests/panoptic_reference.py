"""The NumPy reference of the panoptic label encodings (``encode_panoptic`` /
``encode_things``): what the input pipeline ran in ``tf.numpy_function`` before the graph
encoders of ``tasks/panoptic_encoding.py``, which must give the same int32 maps bit for bit
(tests/test_panoptic_task.py; ``benchmarks/bench_input.py`` times both).

``NumpyEncodedPanoptic``: the panoptic task with the labels encoded by this reference in
``tf.numpy_function`` (the former pipeline, for the comparisons and the benchmark).
``coco_sample``: the real COCO annotations of ../shared/data/coco_panoptic_sample (two val2017
images with stuff, things and crowd segments; CI clones without that folder: ``needs_sample``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tensorflow as tf

from evals.panoptic_io import rgb_to_id
from tasks.panoptic import PanopticTask
from tasks.panoptic_encoding import check_crowd, check_fields
from uvim_givt.models import builders

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "sample_data").is_dir(),
    reason="needs ../shared/data/coco_panoptic_sample (real COCO annotations; not in CI)")


def coco_sample() -> tuple[list[tuple[np.ndarray, list[dict], str]], list[dict]]:
    """[(image id map, segments_info, file name)] and the 133 categories of the sample."""
    doc = json.loads((SAMPLE / "sample_data" / "panoptic_examples.json").read_text())
    out = []
    for ann in doc["annotations"]:
        bgr = cv2.imread(str(SAMPLE / "sample_data" / "panoptic_examples" / ann["file_name"]))
        out.append((rgb_to_id(bgr[..., ::-1]), ann["segments_info"], ann["file_name"]))
    return out, doc["categories"]


def _segment_index(ids_map: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Position in ``segment_ids`` of each pixel's id, -1 where the id is not listed."""
    if len(segment_ids) == 0:
        return np.full(ids_map.shape, -1, np.int64)
    order = np.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids_map), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids_map, order[pos], -1)



def _segments(ids_map: np.ndarray, segment_ids: Any, segment_labels: Any,
              num_categories: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment index per pixel, ids, labels) of checked ``panoptic_objects`` fields."""
    segment_ids, segment_labels = check_fields(segment_ids, segment_labels, num_categories)
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



def encode_things(ids_map: np.ndarray, segment_ids: np.ndarray, segment_labels: np.ndarray,
                  is_crowd: np.ndarray, isthing: np.ndarray, num_instances: int) -> np.ndarray:
    """The ``things`` encoding: like ``encode_panoptic`` but only non-crowd thing segments
    get instance ids (canonical order among them); stuff has instance 0 and crowd pixels
    are void (0, 0), as PQ ignores crowd regions anyway."""
    is_crowd = check_crowd(segment_ids, is_crowd)
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


class NumpyEncodedPanoptic(PanopticTask):
    """``PanopticTask`` whose labels are encoded by the NumPy reference in
    ``tf.numpy_function`` (the same crop, flip and resize: only ``encode_labels`` differs)."""

    def encode_labels(self, cfg, ids: tf.Tensor, objects: dict) -> tf.Tensor:
        cats = self._cats(cfg)
        isthing = np.array([c["isthing"] == 1 for c in cats])
        n_inst = builders.label_channels(cfg)["instances"][1]
        published = cfg.data.panoptic_encoding == "published"

        def encode(i, oid, lab, crowd):
            if published:
                return encode_panoptic(i, oid, lab, n_inst, len(cats))
            return encode_things(i, oid, lab, crowd, isthing, n_inst)

        return tf.numpy_function(encode, [ids, objects["id"], objects["label"],
                                          objects["is_crowd"]], tf.int32, stateful=False)
