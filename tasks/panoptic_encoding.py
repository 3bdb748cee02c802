"""The panoptic label encodings as TensorFlow graph ops: what the input pipeline runs.

Two channels (semantics, instances), ``vae.model.label_channels``:

* ``published`` (``encode_panoptic_tf``), as big_vision's UViM/GIVT ``coco_panoptic`` +
  ``make_canonical`` ops: every listed segment (thing, stuff or crowd alike) gets semantics
  ``label + 1`` and an instance id 1.. in canonical order: by ``cx + H * cy`` of its centre
  of mass (pixel indices), ties in row-major order of first appearance, over the segments
  present in the (cropped, resized) map; unlisted pixels are (0, 0). Ids that do not fit the
  instance channel (>= ``num_instances``) become 0, the class unlabelled pixels have; the
  semantics stay. (Published, such ids are an all-zero one-hot with no loss; our
  cross-entropy would read them out of range.)
* ``things`` (``encode_things_tf``, the tiny preset, which measured better with it): only
  non-crowd thing segments get instance ids, ranked by (cy, cx); stuff has instance 0 and
  crowd pixels are void (0, 0), as PQ ignores crowd regions anyway.

Their NumPy reference (the same output bit for bit) lives with the tests
(``tests/panoptic_reference.py``). Per pixel these make four passes (unique ids, two
histograms, one table lookup); the per-segment work is on arrays of a few dozen. The NumPy
code in ``tf.numpy_function`` took twice the CPU time and ran under the Python GIL, which
serialises the tf.data threads (``benchmarks/bench_input.py``).

Bad ``panoptic_objects`` fields raise a ``DataError`` naming the first problem
(``check_fields`` / ``check_crowd``, shared with the reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from uvim_givt.errors import DataError

#: the values of ``data.panoptic_encoding``
ENCODINGS = ("published", "things")


def check_fields(segment_ids: Any, segment_labels: Any, num_categories: int | None
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


def check_crowd(segment_ids: Any, is_crowd: Any) -> np.ndarray:
    """``is_crowd`` as bool, checked against the ids' length."""
    is_crowd = np.asarray(is_crowd).astype(bool)
    if len(is_crowd) != len(segment_ids):
        raise DataError(f"panoptic_objects fields disagree in length: id {len(segment_ids)}, "
                        f"is_crowd {len(is_crowd)}")
    return is_crowd


def _fail_fields(segment_ids: np.ndarray, segment_labels: np.ndarray, is_crowd: np.ndarray,
                 num_categories: int, with_crowd: bool) -> np.ndarray:
    """Raises the ``DataError`` of bad fields (called only when the graph's checks fail)."""
    if with_crowd:
        check_crowd(segment_ids, is_crowd)
    check_fields(segment_ids, segment_labels, num_categories if num_categories >= 0 else None)
    raise AssertionError("the graph and numpy checks of panoptic_objects disagree")


def _checked_fields_tf(segment_ids: Any, segment_labels: Any, is_crowd: Any | None,
                       num_categories: int | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(ids, labels, is_crowd) as int64, int64, bool, checked in the graph as
    ``check_fields`` / ``check_crowd`` check them. Everything after reads these outputs,
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
    instance ids among the ``ranked`` ones (the canonical order), 0 elsewhere.

    Works per distinct pixel id: ``tf.unique`` numbers the ids in row-major order of first
    appearance (the canonical order's tie-break), per-row and per-column histograms
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
    """COCO id map [H, W] + its segments -> int32 labels [H, W, 2], the ``published``
    encoding (module doc). Call it after cropping: the order depends on the crop."""
    ids, labels, _ = _checked_fields_tf(segment_ids, segment_labels, None, num_categories)
    every = tf.ones_like(ids, tf.bool)
    return _encode_tf(ids_map, ids, labels, every, every, num_instances, strict_rows=False)


def encode_things_tf(ids_map: Any, segment_ids: Any, segment_labels: Any, is_crowd: Any,
                     isthing: np.ndarray, num_instances: int) -> tf.Tensor:
    """COCO id map [H, W] + its segments -> int32 labels [H, W, 2], the ``things``
    encoding (module doc); ``isthing``: per category index."""
    isthing = np.asarray(isthing, bool)
    ids, labels, crowd = _checked_fields_tf(segment_ids, segment_labels, is_crowd, len(isthing))
    counted = ~crowd
    things = counted & tf.gather(tf.constant(isthing), labels)
    return _encode_tf(ids_map, ids, labels, counted, things, num_instances, strict_rows=True)

