"""COCO panoptic on disk: the category list, a COCO panoptic folder read into raw examples,
and prediction files in COCO's format.

A folder (``--data folder:PATH``) holds ``annotations/panoptic_<split>.json``, its PNGs in
``annotations/panoptic_<split>/`` and the images in ``<split>/`` (``val2017`` and ``train2017``
are read for ``validation`` and ``train``). The examples carry the TFDS
``coco/2017_panoptic`` fields the task reads.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from evals.panoptic_io import id_to_rgb, rgb_to_id
from uvim_givt.data import catalog
from uvim_givt.data.images import read_image, write_png
from uvim_givt.errors import DataError

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
COCO_CATEGORIES_FILE = os.path.join(_DATA, "coco_panoptic_categories.json")

#: the raw fields of one example, as TFDS's coco/2017_panoptic has them
EXAMPLE_SIGNATURE = {
    "image": tf.TensorSpec((None, None, 3), tf.uint8),
    "image/id": tf.TensorSpec((), tf.int64),
    "panoptic_image": tf.TensorSpec((None, None, 3), tf.uint8),
    "panoptic_objects": {"id": tf.TensorSpec((None,), tf.int64),
                         "label": tf.TensorSpec((None,), tf.int64),
                         "is_crowd": tf.TensorSpec((None,), tf.bool)},
}


def categories_for(source: str, split: str = "validation") -> list[dict[str, Any]]:
    """The category list whose positions are the ``label`` values of ``source``: the
    embedded dataset's, a folder's (from its ``split``'s JSON), else COCO's 133."""
    kind, arg = catalog.parse_source(source)
    if kind == "embedded":
        from tasks.datasets.synthetic_panoptic import CATEGORIES
        return [dict(c) for c in CATEGORIES]
    path = _folder_paths(arg, split)[0] if kind == "folder" else COCO_CATEGORIES_FILE
    with open(path) as f:
        doc = json.load(f)  # COCO's: the 133 panoptic categories, in id order as TFDS labels
    return doc["categories"] if kind == "folder" else doc


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
    if not doc.get("annotations"):
        raise DataError(f"folder:{root}: {js} lists no annotations, so split {split!r} has no "
                        "examples")
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


def folder_dataset(root: str, split: str, skip_bad: bool = False) -> tf.data.Dataset:
    """The examples of a COCO panoptic folder as a dataset (the folder's JSON is read now,
    so a missing split is said at once)."""
    read_coco_folder(root, split, skip_bad)
    return tf.data.Dataset.from_generator(lambda: read_coco_folder(root, split, skip_bad)[1],
                                          output_signature=EXAMPLE_SIGNATURE)


def write_coco_prediction(out_dir: str, name: str, image_id, prediction: dict) -> dict:
    """Writes one prediction PNG; returns its COCO annotation entry."""
    file_name = f"{name}.png"
    write_png(os.path.join(out_dir, "panoptic_pred", file_name), id_to_rgb(prediction["ids"]))
    return {"image_id": image_id, "file_name": file_name,
            "segments_info": prediction["segments_info"]}

