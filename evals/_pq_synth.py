"""Synthetic COCO-like panoptic ground truth and perturbed predictions.

Used by the PQ tests and benchmark: stuff regions (a Voronoi partition), thing blobs on top (some
crowd), VOID bands along boundaries, and predictions that shift, erode, dilate, drop, relabel and
split segments and add spurious ones, so that every rule of the metric is exercised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from evals.panoptic_io import OFFSET, VOID, id_to_rgb, write_id_png

Segments = list[dict[str, Any]]


def synthetic_categories(num_things: int = 80, num_stuff: int = 53) -> list[dict[str, Any]]:
    """COCO-shaped categories (things first), for when the real list is not at hand."""
    cats = []
    for i in range(num_things + num_stuff):
        thing = i < num_things
        cats.append(
            {
                "id": i + 1,
                "name": f"{'thing' if thing else 'stuff'}{i + 1}",
                "isthing": int(thing),
                "color": [0, 0, 0],
                "supercategory": "x",
            }
        )
    return cats


def segments_from_map(
    ids: np.ndarray, category: Mapping[int, int], crowd: Sequence[int] = ()
) -> Segments:
    """COCO segments_info (id, category_id, iscrowd, area, bbox) of the ids present in a map."""
    present, inverse, areas = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(ids.shape)
    crowd_set = set(int(c) for c in crowd)
    out = []
    for k, (sid, area) in enumerate(zip(present.tolist(), areas.tolist(), strict=True)):
        if sid == VOID:
            continue
        mask = inverse == k
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out.append(
            {
                "id": sid,
                "category_id": int(category[sid]),
                "iscrowd": int(sid in crowd_set),
                "area": area,
                "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0]) + 1, int(ys[-1] - ys[0]) + 1],
            }
        )
    return out


def _fresh_ids(rng: np.random.Generator, n: int, taken: set[int]) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        sid = int(rng.integers(1, OFFSET))
        if sid not in taken:
            taken.add(sid)
            out.append(sid)
    return out


def _blob(rng: np.random.Generator, h: int, w: int, min_r: int, max_r: int) -> np.ndarray:
    """A random filled ellipse or rectangle."""
    mask = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    ry, rx = (int(v) for v in rng.integers(min_r, max_r + 1, size=2))
    if rng.random() < 0.7:
        cv2.ellipse(mask, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        mask[max(cy - ry, 0) : cy + ry, max(cx - rx, 0) : cx + rx] = 1
    return mask.astype(bool)


def make_ground_truth(
    rng: np.random.Generator,
    categories: Sequence[Mapping[str, Any]],
    height: int = 480,
    width: int = 640,
    num_segments: tuple[int, int] = (10, 30),
    crowd_prob: float = 0.03,
    void_band: int = 2,
) -> tuple[np.ndarray, Segments]:
    """A COCO-like ground-truth id map (int64) and its segments_info."""
    things = [c["id"] for c in categories if c["isthing"] == 1]
    stuff = [c["id"] for c in categories if c["isthing"] != 1]
    total = int(rng.integers(num_segments[0], num_segments[1] + 1))
    n_stuff = min(int(rng.integers(2, 6)), total - 1) if stuff else 0
    taken: set[int] = set()
    category: dict[int, int] = {}
    crowd: list[int] = []

    ids = np.zeros((height, width), np.int64)
    if n_stuff:
        # Voronoi cells of a few seeds, at quarter resolution then upsampled (blocky edges).
        sh, sw = max(height // 4, 1), max(width // 4, 1)
        seeds = rng.uniform([0, 0], [sh, sw], size=(n_stuff, 2))
        yy, xx = np.mgrid[:sh, :sw]
        d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
        cell = cv2.resize(
            d.argmin(0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        )
        for k, sid in enumerate(_fresh_ids(rng, n_stuff, taken)):
            ids[cell == k] = sid
            category[sid] = int(rng.choice(stuff))
    r = max(min(height, width) // 12, 2)
    for sid in _fresh_ids(rng, total - n_stuff, taken):
        is_crowd = rng.random() < crowd_prob
        ids[_blob(rng, height, width, r // 2, r * (4 if is_crowd else 2))] = sid
        category[sid] = int(rng.choice(things))
        if is_crowd:
            crowd.append(sid)
    if void_band:
        # COCO leaves unlabeled bands along many boundaries.
        edge = np.zeros(ids.shape, bool)
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        band = cv2.dilate(edge.astype(np.uint8), np.ones((void_band, void_band), np.uint8))
        ids[(band > 0) & (rng.random(ids.shape) < 0.8)] = VOID
    if rng.random() < 0.5:
        ids[_blob(rng, height, width, r // 2, r * 2)] = VOID
    return ids, segments_from_map(ids, category, crowd)


def perturb_prediction(
    rng: np.random.Generator,
    gt_ids: np.ndarray,
    gt_segments: Segments,
    categories: Sequence[Mapping[str, Any]],
    strength: float = 1.0,
) -> tuple[np.ndarray, Segments]:
    """A plausible prediction from a ground truth: every segment has some chance of being shifted,
    eroded, dilated, dropped, relabeled or (crowd) split; a few spurious blobs are added; ids are
    renumbered. ``strength`` scales the chances."""
    h, w = gt_ids.shape
    cat_ids = [c["id"] for c in categories]
    pred = gt_ids.copy()
    if rng.random() < 0.3 * strength:  # small global misalignment
        pred = np.roll(pred, tuple(int(v) for v in rng.integers(-3, 4, size=2)), axis=(0, 1))
    category = {s["id"]: s["category_id"] for s in gt_segments}
    taken = set(category)
    kernel = np.ones((3, 3), np.uint8)
    for seg in gt_segments:
        sid, u = seg["id"], rng.random() / strength
        mask = pred == sid
        if seg.get("iscrowd") and rng.random() < 0.7:
            # A crowd region predicted as a few instances of its category.
            xs = np.flatnonzero(mask.any(axis=0))
            if len(xs):
                cut = np.quantile(xs, np.sort(rng.uniform(0.2, 0.8, size=2)))
                part = np.digitize(np.arange(w), cut)
                for k, new in enumerate(_fresh_ids(rng, 3, taken)):
                    pred[mask & (part[None, :] == k)] = new
                    category[new] = seg["category_id"]
            continue
        if u < 0.08:
            pred[mask] = VOID  # missed
        elif u < 0.16:
            category[sid] = int(rng.choice(cat_ids))  # wrong class
        elif u < 0.30:
            steps = int(rng.integers(1, 6))
            er = cv2.erode(mask.astype(np.uint8), kernel, iterations=steps).astype(bool)
            pred[mask & ~er] = VOID
        elif u < 0.42:
            steps = int(rng.integers(1, 6))
            pred[cv2.dilate(mask.astype(np.uint8), kernel, iterations=steps) > 0] = sid
        elif u < 0.55:
            # Own misalignment, large enough to push IoU around 0.5 for small segments.
            dy, dx = (int(v) for v in rng.integers(-12, 13, size=2))
            pred[mask] = VOID
            pred[np.roll(mask, (dy, dx), axis=(0, 1))] = sid
    r = max(min(h, w) // 12, 2)
    for new in _fresh_ids(rng, int(rng.integers(0, 5 * strength + 1)), taken):
        pred[_blob(rng, h, w, r // 3, r)] = new  # spurious (some land on VOID)
        category[new] = int(rng.choice(cat_ids))
    # Fresh ids, as a model would number its own segments.
    uniq, inverse = np.unique(pred, return_inverse=True)
    fresh = iter(_fresh_ids(rng, len(uniq), set(uniq.tolist()) | {VOID}))
    new_ids = np.array([VOID if s == VOID else next(fresh) for s in uniq.tolist()], np.int64)
    out = new_ids[inverse].reshape(pred.shape)
    new_cat = {int(n): category[s] for s, n in zip(uniq.tolist(), new_ids, strict=True) if s}
    segs = segments_from_map(out, new_cat)
    for s in segs:  # predictions carry no crowd flag or area in COCO results
        del s["iscrowd"], s["area"]
    return out, segs


def save_png(path: str | os.PathLike, ids: np.ndarray, writer: str = "cv2") -> None:
    """Writes an id map as a panoptic PNG: "cv2" as this project writes predictions, "pil" as
    COCO's own converters wrote the ground truth (zlib level 6, adaptive row filters)."""
    if writer == "pil":
        Image.fromarray(id_to_rgb(ids)).save(os.fspath(path))
    elif writer == "cv2":
        write_id_png(path, ids)
    else:
        raise ValueError(f"unknown PNG writer {writer!r}")


def annotation(image_id: int, segments: Segments) -> dict[str, Any]:
    """A COCO panoptic annotation; its PNG is ``{image_id:012d}.png``."""
    return {"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segments}


def write_json(
    path: str | os.PathLike,
    annotations: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    **extra: Any,
) -> None:
    """A COCO panoptic JSON (images, annotations, categories, and any extra top-level keys)."""
    images = [
        {"id": a["image_id"], "file_name": a["file_name"].replace(".png", ".jpg")}
        for a in annotations
    ]
    doc = {"images": images, "annotations": list(annotations), "categories": list(categories)}
    with open(path, "w") as f:
        json.dump(doc | extra, f)


def write_panoptic_set(
    root: str | os.PathLike,
    name: str,
    entries: Sequence[tuple[int, np.ndarray, Segments]],
    categories: Sequence[Mapping[str, Any]],
    writer: str = "cv2",
) -> tuple[str, str]:
    """Writes ``root/name.json`` and ``root/name/*.png`` (COCO panoptic format); returns both."""
    png_dir = os.path.join(os.fspath(root), name)
    os.makedirs(png_dir, exist_ok=True)
    annotations = []
    for image_id, ids, segments in entries:
        ann = annotation(image_id, segments)
        save_png(os.path.join(png_dir, ann["file_name"]), ids, writer)
        annotations.append(ann)
    write_json(png_dir + ".json", annotations, categories)
    return png_dir + ".json", png_dir
