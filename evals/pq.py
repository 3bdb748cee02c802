"""Panoptic quality (PQ, SQ, RQ), exactly as panopticapi's ``pq_compute`` defines it, only faster.

Definition (panopticapi, Kirillov et al. 2019), per image:

- a ground-truth and a predicted segment of the same category match when their IoU > 0.5, where
  the union leaves out the predicted pixels that fall on VOID (id 0) in the ground truth; the
  ground-truth area is the ``area`` of its ``segments_info`` entry (the pixel count when absent),
  the predicted area is always counted in the PNG;
- crowd ground-truth segments (``iscrowd=1``) never match; an unmatched prediction is not a false
  positive when more than half of it lies on VOID plus the (last listed) crowd segment of its own
  category;
- unmatched non-crowd ground-truth segments are false negatives.

Per class ``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP``,
``RQ = TP / (TP + FP/2 + FN/2)``; the All/Things/Stuff figures average the classes that have
``TP + FP + FN > 0``. Values are fractions, as in panopticapi (the tables print them x100).

Speed (where panopticapi's time goes: PIL decoding, a uint32 copy of each map and two
``np.unique`` sorts of every pixel): the maps are never sorted. A PNG whose rows all use the
None/Sub filters (OpenCV's, hence this project's predictions) is inflated with libdeflate and
read as horizontal runs straight from the sparse filtered bytes; others (COCO's ground truth,
written by PIL with Up/Paeth rows) are decoded by libspng and cut into runs. The two maps'
runs are merged, one weighted ``np.bincount`` over the joint runs gives the whole gt x pred
intersection matrix, and matching is a few array operations on that small matrix. Images run
in forked worker processes (libspng holds the GIL, so threads overlapped little); threads where
forking is unsafe (a process running JAX or TensorFlow threads).

"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pickle
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evals.panoptic_io import (
    OFFSET,
    VOID,
    IdRuns,
    PanopticEvalError,
    _annotations,
    _json_doc,
    _listing,
    _png_dir,
    load_categories,
    read_id_runs,
    rgb_to_id,
)

# --------------------------------------------------------------------------------------------
# one image


@dataclass(frozen=True)
class _Names:
    """What error messages call the pieces of one image."""

    image: str
    gt_json: str = "ground truth"
    gt_png: str = "ground-truth id map"
    pred_json: str = "prediction"
    pred_png: str = "predicted id map"


def _segment_arrays(
    segments: Any, cat_index: Mapping[int, int], json_name: str, image: str, is_gt: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """segments_info -> (ids, category indices, iscrowd, JSON area or NaN)."""
    if not isinstance(segments, Sequence) or isinstance(segments, str):
        raise PanopticEvalError(f"{json_name}: segments_info of image {image} is not a list")
    n = len(segments)
    ids = np.empty(n, np.int64)
    cats = np.empty(n, np.int64)
    crowd = np.zeros(n, bool)
    area = np.full(n, np.nan)
    seen: set[int] = set()
    for i, seg in enumerate(segments):
        try:
            sid, cid = int(seg["id"]), int(seg["category_id"])
            if is_gt and seg.get("area") is not None:
                area[i] = float(seg["area"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PanopticEvalError(
                f"{json_name}: segment #{i} of image {image} needs integer 'id' and 'category_id'"
                f" (and a numeric 'area' if any): {seg!r}"
            ) from None
        if not 0 < sid < OFFSET:
            raise PanopticEvalError(
                f"{json_name}: image {image} has segment id {sid}; ids must lie in [1, {OFFSET})"
                " (0 is VOID)"
            )
        if sid in seen:
            raise PanopticEvalError(f"{json_name}: image {image} lists segment id {sid} twice")
        seen.add(sid)
        if cid not in cat_index:
            raise PanopticEvalError(
                f"{json_name}: in image {image} segment id {sid} has unknown category_id {cid}"
            )
        ids[i] = sid
        cats[i] = cat_index[cid]
        if is_gt:
            crowd[i] = seg.get("iscrowd", 0) == 1
    return ids, cats, crowd, area


def _joint_runs(gt: IdRuns, pred: IdRuns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt id, pred id, length) of each horizontal run where neither map changes: the union of
    the two maps' run starts (panoptic maps are piecewise constant, so an image has ~30x fewer
    runs than pixels and all later work happens on the runs)."""
    size = gt.shape[0] * gt.shape[1]
    # 1 where the gt changes, 2 where the prediction does, 3 where both do; then each map's
    # run index at a joint start is the running count of its own starts.
    mark = np.zeros(size, np.uint8)
    mark[gt.starts] = 1
    mark[pred.starts] |= 2
    starts = np.flatnonzero(mark)
    kind = mark[starts]
    lengths = np.diff(starts, append=size)
    g = gt.values[np.cumsum(kind & 1) - 1]
    p = pred.values[np.cumsum(kind >> 1) - 1]
    return g, p, lengths


def _index_of(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each value among ``[VOID, *ids]`` plus 1 (so VOID -> 1, ids[k] -> k + 2);
    0 for values that are neither."""
    keys = np.concatenate([[VOID], ids])
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], values).clip(max=len(keys) - 1)
    found = keys[order][pos] == values
    return np.where(found, order[pos] + 1, 0)


def _intersections(
    gt_map: IdRuns, gt_ids: np.ndarray, pred_map: IdRuns, pred_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts ``m[g, p]`` (index 0 = an id not in segments_info, 1 = VOID, 2+ = segments)
    and the predicted ids of the runs that are not in segments_info (for the error message)."""
    run_gt, run_pred, lengths = _joint_runs(gt_map, pred_map)
    rows = _index_of(run_gt, gt_ids)
    cols = _index_of(run_pred, pred_ids)
    ncols = len(pred_ids) + 2
    counts = np.bincount(rows * ncols + cols, weights=lengths, minlength=(len(gt_ids) + 2) * ncols)
    # float64 sums of integer run lengths are exact (images have far fewer than 2**53 pixels).
    m = counts.astype(np.int64).reshape(len(gt_ids) + 2, ncols)
    return m, run_pred[cols == 0]


@dataclass
class _ImageStats:
    """One image's contribution: category indices with their counts and IoU sums."""

    tp_cats: np.ndarray
    tp_iou: np.ndarray
    fp_cats: np.ndarray
    fn_cats: np.ndarray


def _image_stats(
    gt_map: IdRuns,
    gt_segments: Any,
    pred_map: IdRuns,
    pred_segments: Any,
    cat_index: Mapping[int, int],
    names: _Names,
) -> _ImageStats:
    """panopticapi's ``pq_compute_single_core`` body for one image, on arrays."""
    if gt_map.shape != pred_map.shape:
        raise PanopticEvalError(
            f"image {names.image}: {names.pred_png} is {_hw(pred_map)} but {names.gt_png} is"
            f" {_hw(gt_map)}"
        )
    gt_ids, gt_cat, gt_crowd, gt_area = _segment_arrays(
        gt_segments, cat_index, names.gt_json, names.image, is_gt=True
    )
    pred_ids, pred_cat, _, _ = _segment_arrays(
        pred_segments, cat_index, names.pred_json, names.image, is_gt=False
    )
    m, stray = _intersections(gt_map, gt_ids, pred_map, pred_ids)

    # Prediction sanity checks (panopticapi's, with names).
    if stray.size:
        stray = np.unique(stray)
        colours = [f"{s} (RGB {s & 255},{(s >> 8) & 255},{s >> 16})" for s in stray.tolist()]
        raise PanopticEvalError(
            f"image {names.image}: segment id(s) {_listing(colours)} are in the PNG"
            f" {names.pred_png} but not in its segments_info in {names.pred_json}"
        )
    pred_area = m[:, 2:].sum(axis=0)
    if not pred_area.all():
        missing = pred_ids[pred_area == 0].tolist()
        raise PanopticEvalError(
            f"image {names.image}: segment id(s) {_listing(missing)} are in segments_info in"
            f" {names.pred_json} but not in the PNG {names.pred_png}"
        )

    inter = m[2:, 2:]
    void = m[1, 2:]
    # The JSON area where given (panopticapi uses it), else the pixel count.
    gt_area = np.where(np.isnan(gt_area), m[2:, :].sum(axis=1), gt_area)

    # Matching: same category, gt not crowd, IoU > 0.5 with VOID pixels left out of the union.
    cand = (inter > 0) & ~gt_crowd[:, None] & (gt_cat[:, None] == pred_cat[None, :])
    gi, pj = np.nonzero(cand)
    hit = inter[gi, pj]
    # Same operation order as panopticapi, so the float IoUs are bit-identical.
    union = pred_area[pj] + gt_area[gi] - hit - void[pj]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = hit / union
    ok = iou > 0.5
    gi, pj, iou = gi[ok], pj[ok], iou[ok]
    gt_matched = np.zeros(len(gt_ids), bool)
    gt_matched[gi] = True
    pred_matched = np.zeros(len(pred_ids), bool)
    pred_matched[pj] = True

    fn_cats = gt_cat[~gt_matched & ~gt_crowd]

    # False positives: unmatched predictions, unless mostly on VOID + the same-category crowd
    # region (panopticapi keeps one crowd segment per category: the last one listed).
    crowd_of_cat = {int(gt_cat[g]): g for g in np.flatnonzero(gt_crowd)}
    fp = np.flatnonzero(~pred_matched)
    ignored_px = void[fp].astype(np.float64)
    for k, p in enumerate(fp):
        g = crowd_of_cat.get(int(pred_cat[p]))
        if g is not None:
            ignored_px[k] += inter[g, p]
    with np.errstate(divide="ignore", invalid="ignore"):
        is_fp = ~(ignored_px / pred_area[fp] > 0.5)
    return _ImageStats(gt_cat[gi], iou, pred_cat[fp[is_fp]], fn_cats)


def _hw(a: IdRuns) -> str:
    return "x".join(str(d) for d in a.shape)


def _as_id_runs(ids: np.ndarray, what: str) -> IdRuns:
    """Checks an in-memory id map (2-D integers in [0, 2**24), or an RGB panoptic image) and
    cuts it into runs."""
    ids = np.asarray(ids)
    if ids.ndim == 3 and ids.shape[2] in (3, 4) and ids.dtype == np.uint8:
        return IdRuns.of_map(rgb_to_id(ids))
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise PanopticEvalError(
            f"{what}: expected a 2-D integer id map, got {ids.dtype} {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise PanopticEvalError(
            f"{what}: ids must lie in [0, {OFFSET}), got {ids.min()}..{ids.max()}"
        )
    return IdRuns.of_map(ids)


# --------------------------------------------------------------------------------------------
# accumulation and averages


class PQAccumulator:
    """Per-class TP/FP/FN/IoU sums over images, fed in memory (no PNGs needed).

    ``add`` takes, per image, the ground-truth and predicted (H, W) id maps (or RGB panoptic
    images) and their COCO ``segments_info`` lists; ``result()`` gives the same dict as
    ``panoptic_quality``. Accumulators of shards can be combined with ``merge``.
    """

    def __init__(self, categories: Any) -> None:
        self.categories = load_categories(categories)
        self._cat_ids = list(self.categories)
        self._cat_index = {cid: i for i, cid in enumerate(self._cat_ids)}
        self._isthing = np.array([c["isthing"] == 1 for c in self.categories.values()])
        n = len(self._cat_ids)
        self.tp = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.fn = np.zeros(n, np.int64)
        self.iou = np.zeros(n, np.float64)
        self.num_images = 0

    def add(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        *,
        image: str | int | None = None,
    ) -> None:
        """Adds one image. ``image`` (an id or name) is only used in error messages."""
        name = str(self.num_images if image is None else image)
        gt = _as_id_runs(gt_ids, f"image {name}: ground-truth id map")
        pred = _as_id_runs(pred_ids, f"image {name}: predicted id map")
        self._add_stats(
            _image_stats(gt, gt_segments, pred, pred_segments, self._cat_index, _Names(name))
        )

    def _add_stats(self, s: _ImageStats) -> None:
        n = len(self._cat_ids)
        self.tp += np.bincount(s.tp_cats, minlength=n)
        self.iou += np.bincount(s.tp_cats, weights=s.tp_iou, minlength=n)
        self.fp += np.bincount(s.fp_cats, minlength=n)
        self.fn += np.bincount(s.fn_cats, minlength=n)
        self.num_images += 1

    def merge(self, other: PQAccumulator) -> None:
        """Adds another accumulator's sums (same categories) into this one."""
        if other._cat_ids != self._cat_ids:
            raise PanopticEvalError("cannot merge PQ accumulators over different categories")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        self.num_images += other.num_images

    def result(self) -> dict[str, Any]:
        """``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {cat_id: {pq, sq, rq, tp,
        fp, fn}}}`` as fractions; classes with no TP, FP or FN are left out of the averages
        (and an average over no classes is 0 with n=0, where panopticapi divides by zero)."""
        per_class: dict[int, dict[str, Any]] = {}
        counted = []
        for i, cid in enumerate(self._cat_ids):
            tp, fp, fn, iou = int(self.tp[i]), int(self.fp[i]), int(self.fn[i]), float(self.iou[i])
            if tp + fp + fn == 0:
                per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
                continue
            counted.append(i)
            denom = tp + 0.5 * fp + 0.5 * fn
            per_class[cid] = {
                "pq": iou / denom,
                "sq": iou / tp if tp else 0.0,
                "rq": tp / denom,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
        out: dict[str, Any] = {}
        for name, things in (("All", None), ("Things", True), ("Stuff", False)):
            rows = [
                per_class[self._cat_ids[i]]
                for i in counted
                if things is None or bool(self._isthing[i]) == things
            ]
            n = len(rows)
            out[name] = {
                k: (sum(r[k] for r in rows) / n if n else 0.0) for k in ("pq", "sq", "rq")
            } | {"n": n}
        out["per_class"] = per_class
        return out


def evaluate_files(
    gt_json: Any,
    gt_dir: str | os.PathLike | None,
    pred_json: Any,
    pred_dir: str | os.PathLike | None,
    categories: Any = None,
    workers: int | None = None,
) -> tuple[dict[str, Any], PQAccumulator]:
    gt_name, gt_doc = _json_doc(gt_json, "ground-truth")
    pred_name, pred_doc = _json_doc(pred_json, "prediction")
    gt_dir = _png_dir(gt_dir, gt_json, gt_name)
    pred_dir = _png_dir(pred_dir, pred_json, pred_name)
    if categories is None:
        if not isinstance(gt_doc, Mapping) or "categories" not in gt_doc:
            raise PanopticEvalError(f"{gt_name} has no 'categories'; pass categories explicitly")
        categories = gt_doc["categories"]
    acc = PQAccumulator(categories)

    gt_anns = _annotations(gt_doc, gt_name)
    pred_anns = _annotations(pred_doc, pred_name)
    missing = [str(a["file_name"]) for k, a in gt_anns.items() if k not in pred_anns]
    if missing:
        raise PanopticEvalError(
            f"{pred_name} has no prediction for {len(missing)} of the {len(gt_anns)} ground-truth"
            f" images: {_listing(missing)}"
        )
    extra = [f"{k} ({a['file_name']})" for k, a in pred_anns.items() if k not in gt_anns]
    if extra:
        raise PanopticEvalError(
            f"{pred_name} has predictions for {len(extra)} image(s) not in the ground truth"
            f" {gt_name}: {_listing(extra)}"
        )
    for d, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not os.path.isdir(d):
            raise PanopticEvalError(f"{what} PNG folder {d} does not exist")

    def one(item: tuple[Any, Mapping[str, Any]]) -> _ImageStats:
        image_id, gt_ann = item
        pred_ann = pred_anns[image_id]
        gt_png = os.path.join(gt_dir, str(gt_ann["file_name"]))
        pred_png = os.path.join(pred_dir, str(pred_ann["file_name"]))
        names = _Names(str(image_id), gt_name, gt_png, pred_name, pred_png)
        return _image_stats(
            read_id_runs(gt_png),
            gt_ann["segments_info"],
            read_id_runs(pred_png),
            pred_ann["segments_info"],
            acc._cat_index,
            names,
        )

    for stats in _map_parallel(one, list(gt_anns.items()), workers):
        acc._add_stats(stats)
    return acc.result(), acc


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _can_fork() -> bool:
    """Whether worker processes may be forked from this one: a fork copies no other thread,
    so a child of a process whose runtimes run threads (XLA's, TensorFlow's) may wait forever
    on a lock one of them held. The files-mode CLI and the benchmark load none of them."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    return not any(m in sys.modules for m in ("jax", "tensorflow", "torch"))


def _forked_map(fn: Any, items: list[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]`` over this process and ``workers - 1`` forked children.

    Worker k takes items k, k + workers, ...; a child sends back its pickled results (or the
    first error, with its item's index) through a pipe. No pool: forking directly costs a few
    milliseconds, and the parent works too."""
    children = []
    try:
        for k in range(1, workers):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: never returns
                status = 0
                try:
                    os.close(read_end)
                    out: list[Any] = []
                    i = k
                    try:
                        for i in range(k, len(items), workers):
                            out.append(fn(items[i]))
                        data = pickle.dumps(("ok", out), pickle.HIGHEST_PROTOCOL)
                    except BaseException as e:  # noqa: BLE001 - reported to the parent
                        try:
                            data = pickle.dumps(("error", (i, e)))
                        except Exception:  # noqa: BLE001 - an error that does not pickle
                            data = pickle.dumps(("error", (i, RuntimeError(repr(e)))))
                    with os.fdopen(write_end, "wb") as f:
                        f.write(data)
                except BaseException:  # noqa: BLE001 - the parent reports the silence
                    status = 1
                finally:
                    os._exit(status)
            os.close(write_end)
            children.append((k, pid, read_end))
        results: list[Any] = [None] * len(items)
        errors: list[tuple[int, BaseException]] = []
        try:
            for i in range(0, len(items), workers):
                results[i] = fn(items[i])
        except Exception as e:  # noqa: BLE001 - the lowest failing index is raised below
            errors.append((i, e))
        for k, pid, read_end in children:
            with os.fdopen(read_end, "rb") as f:
                data = f.read()
            if not data:
                raise RuntimeError(f"PQ worker process {pid} died without a result")
            kind, payload = pickle.loads(data)
            if kind == "error":
                errors.append(payload)
            else:
                results[k::workers] = payload
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return results
    finally:
        for _, pid, _ in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _map_parallel(fn: Any, items: list[Any], workers: int | None) -> Iterable[Any]:
    """``map`` over forked worker processes (threads where forking is unsafe), in order; an
    error is the one of the first failing item.

    Processes, because the PNG decoder of the ground truth (libspng) holds the GIL: threads
    overlapped little."""
    workers = _default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    if _can_fork():
        yield from _forked_map(fn, items, workers)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pq")
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def panoptic_quality(
    gt_json: str | os.PathLike | Mapping[str, Any],
    gt_dir: str | os.PathLike | None,
    pred_json: str | os.PathLike | Mapping[str, Any],
    pred_dir: str | os.PathLike | None,
    categories: Any = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """PQ/SQ/RQ of COCO panoptic predictions on disk, equal to panopticapi's ``pq_compute``.

    ``gt_json``/``pred_json`` are paths (or loaded dicts); ``*_dir`` default to the JSON path
    without ``.json``, like pq_compute. ``categories`` (path, list or mapping) defaults to the
    ground truth's. Returns ``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {...}}``
    with fractions. Bad input raises ``PanopticEvalError`` naming the file/image/segment.
    """
    return evaluate_files(gt_json, gt_dir, pred_json, pred_dir, categories, workers)[0]


def format_table(results: Mapping[str, Any]) -> str:
    """panopticapi's printed table: PQ SQ RQ (x100) and N for All/Things/Stuff."""
    lines = [
        "{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
        "-" * (10 + 7 * 4),
    ]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(
            "{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
                name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]
            )
        )
    return "\n".join(lines)


def flat_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """PQ / SQ / RQ of All, Things, Stuff under the records' names (PQ, PQ_th, PQ_st, ...),
    x100."""
    out = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for k in ("pq", "sq", "rq"):
            out[k.upper() + suffix] = 100.0 * float(results[group][k])
    return out


def results_json(results: Mapping[str, Any], acc: PQAccumulator) -> dict[str, Any]:
    per_class = {
        str(cid): {
            **r,
            "name": acc.categories[cid].get("name", str(cid)),
            "isthing": acc.categories[cid]["isthing"],
        }
        for cid, r in results["per_class"].items()
    }
    return {
        **{k: results[k] for k in ("All", "Things", "Stuff")},
        "per_class": per_class,
        "num_images": acc.num_images,
    }
