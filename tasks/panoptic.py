"""COCO panoptic segmentation with UViM + GIVT.

    python -m tasks.panoptic train                      # embedded default, tiny config
    python -m tasks.panoptic train --config configs/panoptic.py:size=paper \
        --data tfds:coco/2017_panoptic
    python -m tasks.panoptic predict --ckpt RUN --images DIR --out DIR
    python -m tasks.panoptic eval --ckpt RUN [--oracle]

Labels (two channels, ``vae.model.label_channels``): semantics = category index + 1
(0 = void) and instance
ids of thing segments, numbered from 1 in canonical order (by centre of mass,
row-major) so the VAE sees a stable ordering; stuff, void and crowd pixels
have instance 0 (crowd regions are void for training and ignored by PQ).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from evals.panoptic_io import id_to_rgb, rgb_to_id
from evals.pq import PQAccumulator
from tasks import common
from uvim_givt.data import pipeline
from uvim_givt.data.images import write_png
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
        from uvim_givt.data.builders.synthetic_panoptic import CATEGORIES
        return [dict(c) for c in CATEGORIES]
    with open(COCO_CATEGORIES_FILE) as f:
        return json.load(f)  # the 133 COCO panoptic categories, in id order as TFDS labels


# ---------------------------------------------------------------------------- label coding
def encode_labels(ids: np.ndarray, obj_ids: np.ndarray, obj_labels: np.ndarray,
                  obj_crowd: np.ndarray, isthing: np.ndarray, num_instances: int) -> np.ndarray:
    """Panoptic id map [H, W] + segments -> int32 [H, W, 2] (semantics, canonical instance).

    Thing instances are numbered 1.. by their centre of mass in row-major order
    (y first, then x); ids beyond ``num_instances - 1`` are dropped to 0.
    """
    if not len(obj_ids) == len(obj_labels) == len(obj_crowd):
        raise DataError(
            f"panoptic_objects fields disagree in length: id {len(obj_ids)}, label "
            f"{len(obj_labels)}, is_crowd {len(obj_crowd)}")
    if len(obj_labels) and (obj_labels.min() < 0 or obj_labels.max() >= len(isthing)):
        raise DataError(f"panoptic_objects label {int(obj_labels.max())} is not one of "
                                 f"the {len(isthing)} categories")
    h, w = ids.shape
    sem = np.zeros((h, w), np.int32)
    inst = np.zeros((h, w), np.int32)
    if len(obj_ids) == 0:
        return np.stack([sem, inst], -1)
    order = np.argsort(obj_ids)
    sorted_ids = obj_ids[order]
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    known = sorted_ids[pos] == ids
    seg = np.where(known, order[pos], -1)  # index of each pixel's segment, -1 = void
    valid = seg >= 0
    crowd = np.zeros((h, w), bool)
    crowd[valid] = obj_crowd[seg[valid]].astype(bool)
    labeled = valid & ~crowd
    sem[labeled] = obj_labels[seg[labeled]] + 1
    # Canonical instance order: centre of mass of each thing segment present in the crop.
    is_thing_seg = isthing[obj_labels] & ~obj_crowd.astype(bool)
    counts = np.bincount(seg[labeled], minlength=len(obj_ids))
    ys, xs = np.nonzero(labeled)
    sy = np.bincount(seg[labeled], weights=ys, minlength=len(obj_ids))
    sx = np.bincount(seg[labeled], weights=xs, minlength=len(obj_ids))
    present = np.flatnonzero(is_thing_seg & (counts > 0))
    if len(present):
        cy, cx = sy[present] / counts[present], sx[present] / counts[present]
        ranked = present[np.lexsort((cx, cy))]
        number = np.zeros(len(obj_ids), np.int32)
        number[ranked] = np.arange(1, len(ranked) + 1)
        number[number >= num_instances] = 0
        inst[labeled] = number[seg[labeled]]
    return np.stack([sem, inst], -1)


def labels_to_panoptic(sem: np.ndarray, inst: np.ndarray, categories: list[dict],
                       min_area: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(semantics, instances) maps -> COCO id map + segments_info.

    Stuff: one segment per class. Things: one segment per (class, instance);
    thing pixels with instance 0 are void. Segments below ``min_area`` pixels
    become void.
    """
    isthing = np.array([c["isthing"] == 1 for c in categories] + [False])
    cat = sem.astype(np.int64) - 1  # -1 = void
    thing = (cat >= 0) & isthing[np.where(cat >= 0, cat, len(categories))]
    key = np.where(cat < 0, -1, np.where(thing, cat * 4096 + inst, cat * 4096))
    key = np.where(thing & (inst == 0), -1, key)
    uniq, inverse, counts = np.unique(key.ravel(), return_inverse=True, return_counts=True)
    ids = np.zeros(key.size, np.int32)
    segments = []
    next_id = 1
    for u, (k, n) in enumerate(zip(uniq, counts, strict=True)):
        if k < 0 or n < min_area:
            continue
        ids[inverse == u] = next_id
        segments.append({"id": next_id, "category_id": int(categories[k // 4096]["id"]),
                         "iscrowd": 0, "area": int(n)})
        next_id += 1
    ids = ids.reshape(key.shape)
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)]
    return ids, segments


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
    image = cv2.imread(jpg, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{jpg}: missing, truncated or not an image")
    pan = cv2.imread(png, cv2.IMREAD_COLOR)
    if pan is None:
        raise DataError(f"{png}: missing, truncated or not a PNG")
    pan = pan[..., ::-1]
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
            from uvim_givt.data.embedded import ensure_built
            builder = ensure_built("synthetic_panoptic", **embedded_overrides(cfg))
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

    def preprocess(self, cfg, example, train, seed=None):
        size = int(cfg.data.image_size)
        image = example["image"]
        pan = tf.cast(example["panoptic_image"], tf.int32)
        ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        if train:
            image, ids = common.random_train_view(cfg, seed, image, ids)
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
        ids = tf.image.resize(ids[..., None], (size, size), method="nearest")[..., 0]
        isthing = np.array([c["isthing"] == 1 for c in self._cats(cfg)])
        n_inst = builders.label_channels(cfg)["instances"][1]
        objs = example["panoptic_objects"]

        def enc(i, oid, lab, crowd):
            return encode_labels(i, oid, lab, crowd, isthing, n_inst)

        labels = tf.numpy_function(enc, [ids, objs["id"], objs["label"], objs["is_crowd"]],
                                   tf.int32, stateful=False)
        labels = tf.ensure_shape(labels, (size, size, 2))
        return {"image": image / 127.5 - 1.0, "labels": labels}

    def postprocess(self, cfg, logits, example=None):
        sem = np.argmax(logits["semantics"], -1)
        inst = np.argmax(logits["instances"], -1)
        if example is not None and "image" in example:
            h, w = example["image"].shape[:2]
            if (h, w) != sem.shape:
                sem = cv2.resize(sem.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
                inst = cv2.resize(inst.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        ids, segments = labels_to_panoptic(sem, inst, self._cats(cfg),
                                           int(cfg.data.min_segment_area))
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
    png_dir = os.path.join(out_dir, "panoptic_pred")
    os.makedirs(png_dir, exist_ok=True)
    file_name = f"{name}.png"
    rgb = id_to_rgb(prediction["ids"])
    cv2.imwrite(os.path.join(png_dir, file_name), rgb[..., ::-1])
    return {"image_id": image_id, "file_name": file_name,
            "segments_info": prediction["segments_info"]}


def write_predictions(task: PanopticTask, run: Any, out: str, predictions: Iterator) -> str:
    """``predict``: COCO panoptic PNGs + panoptic_pred.json, and overlays."""
    annotations = []
    for stem, ex, pred in predictions:
        annotations.append(write_coco_prediction(out, stem, stem, pred))
        write_png(os.path.join(out, "overlays", f"{stem}.png"), task.draw(run.cfg, ex, pred))
    with open(os.path.join(out, "panoptic_pred.json"), "w") as f:
        json.dump({"annotations": annotations, "categories": task._cats(run.cfg),
                   "step": run.givt_step}, f)
    return (f"wrote {len(annotations)} predictions to {out} (panoptic_pred.json, "
            "panoptic_pred/, overlays/)")


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / predict); returns the exit status."""
    return common.main(TASK, [common.predict_command(
        "predict COCO panoptic PNG+JSON and overlays for images", write_predictions)], argv)


if __name__ == "__main__":
    sys.exit(main())
