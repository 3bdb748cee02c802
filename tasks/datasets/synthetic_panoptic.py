"""`synthetic_panoptic`: a COCO-panoptic-shaped dataset of textured stuff and shaped things.

Features are those of TFDS `coco/2017_panoptic` key for key, so one input pipeline reads
both. Stuff: sky (gradient), floor (perspective checker), grass (noise), wall (bricks).
Things: circle, square, triangle, cross, star, ring; each instance takes a colour from one
shared palette, so only its *shape* tells its class. Instances overlap (later ones occlude
earlier ones), some carry a 1-px outline labelled void (as COCO leaves boundaries
unlabelled), and about 5% of images hold one crowd segment (a cluster of small copies).
Segment ids are unique random 24-bit integers, stored RGB-encoded as in COCO:
id = R + 256 * G + 256**2 * B.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from uvim_givt.data.embedded_builder import (
    SPLIT_CODES,
    EmbeddedBuilder,
    EmbeddedConfig,
    encode_jpeg,
    encode_png,
    example_rng,
)

# COCO panoptic categories format. Ids are not contiguous, as in COCO (things first, then
# stuff, each list sorted by id); the TFDS label is the index in this list, exactly as the
# real builder maps `category_id` to `label`. The stuff ids are COCO's own for these classes.
CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "supercategory": "shape", "isthing": 1, "color": [0, 0, 142]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "isthing": 1, "color": [255, 140, 0]},
    {"id": 4, "name": "cross", "supercategory": "shape", "isthing": 1, "color": [0, 128, 0]},
    {"id": 5, "name": "star", "supercategory": "shape", "isthing": 1, "color": [255, 215, 0]},
    {"id": 6, "name": "ring", "supercategory": "shape", "isthing": 1, "color": [148, 0, 211]},
    {"id": 187, "name": "sky", "supercategory": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 190, "name": "floor", "supercategory": "floor", "isthing": 0, "color": [96, 96, 96]},
    {"id": 193, "name": "grass", "supercategory": "plant", "isthing": 0, "color": [152, 251, 152]},
    {"id": 199, "name": "wall", "supercategory": "wall", "isthing": 0, "color": [102, 102, 156]},
]
CATEGORY_NAMES: list[str] = [c["name"] for c in CATEGORIES]
THING_LABELS: list[int] = [i for i, c in enumerate(CATEGORIES) if c["isthing"]]
STUFF_LABELS: list[int] = [i for i, c in enumerate(CATEGORIES) if not c["isthing"]]
_L = {name: i for i, name in enumerate(CATEGORY_NAMES)}

# One palette for every thing class, so colour carries no class information.
THING_PALETTE = (
    np.array(
        [
            [230, 40, 40],
            [245, 130, 30],
            [250, 220, 40],
            [150, 220, 40],
            [40, 170, 70],
            [40, 200, 200],
            [40, 90, 230],
            [130, 60, 220],
            [230, 60, 200],
            [250, 160, 180],
            [240, 240, 240],
            [120, 80, 40],
        ],
        dtype=np.float32,
    )
    / 255.0
)

_VERSION = tfds.core.Version("1.0.0")
_DESCRIPTION = (
    "Synthetic panoptic segmentation with the features of coco/2017_panoptic: 4 textured stuff "
    "classes and 6 thing classes told apart by shape (colours come from one shared palette)."
)


@dataclasses.dataclass(eq=False)
class SyntheticPanopticConfig(EmbeddedConfig):
    """Size of the images and splits, seed, and how often an image holds a crowd segment."""

    image_size: int = 64
    crowd_percent: int = 5


def _render_thing_mask(
    cls: int, dx: np.ndarray, dy: np.ndarray, r: float, theta: float
) -> np.ndarray:
    """Boolean mask of one thing of class `cls` centred at dx = dy = 0, circumradius ~r."""
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's rotated frame
    name = CATEGORY_NAMES[cls]
    if name == "circle":
        return u * u + v * v <= r * r
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if name == "cross":
        w, au, av = 0.3 * r, np.abs(u), np.abs(v)
        return ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))
    if name == "triangle":
        inside = np.ones(dx.shape, bool)
        for k in range(3):  # equilateral: three half-planes at distance r/2 (the inradius)
            a = 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * r
        return inside
    if name == "star":
        # Fold the angle into one half spike: [0, pi/5], tip at 0, inner vertex at pi/5.
        rho, phi = np.hypot(u, v), np.mod(np.arctan2(v, u), 2 * np.pi / 5)
        phi = np.minimum(phi, 2 * np.pi / 5 - phi)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        tip, inner = np.array([r, 0.0]), 0.42 * r * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])
        # Inside if on the origin's side of the tip-inner edge.
        ex, ey = inner - tip
        side = lambda x, y: ex * (y - tip[1]) - ey * (x - tip[0])
        return side(px, py) * side(0.0, 0.0) >= 0
    raise ValueError(f"not a thing class: {cls}")


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel."""
    out = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return out.astype(bool)


def _stuff_layout(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stuff label per pixel (a top and a bottom region, sometimes split) and the horizon."""
    horizon = rng.uniform(0.25, 0.65) * size + rng.uniform(-0.35, 0.35) * (xx - size / 2)
    top = yy < horizon
    top_cls, other_top = (_L["sky"], _L["wall"]) if rng.random() < 0.5 else (_L["wall"], _L["sky"])
    bot_cls, other_bot = (
        (_L["grass"], _L["floor"]) if rng.random() < 0.5 else (_L["floor"], _L["grass"])
    )
    stuff = np.where(top, top_cls, bot_cls)
    if rng.random() < 0.5:  # a building beside the sky, or sky beside a wall
        split_x = rng.uniform(0.2, 0.8) * size
        band = xx < split_x if rng.random() < 0.5 else xx > split_x
        stuff[top & band] = other_top
    if rng.random() < 0.35:  # a path of the other ground class
        angle = rng.uniform(0, 2 * np.pi)
        px, py = rng.uniform(0, size), rng.uniform(0.6, 1.0) * size
        region = (xx - px) * np.cos(angle) + (yy - py) * np.sin(angle) > 0
        stuff[~top & region] = other_bot
    return stuff, horizon


def _stuff_textures(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, horizon: np.ndarray, size: int
) -> dict[int, np.ndarray]:
    """One full-image texture (float RGB in [0, 1]) per stuff class."""
    shape = yy.shape
    jitter = lambda: 1.0 + rng.uniform(-0.12, 0.12, 3)
    t = (yy / size)[..., None]
    # Sky: a vertical gradient from deep blue to a pale horizon.
    sky_top, sky_low = np.array([0.25, 0.45, 0.85]) * jitter(), np.array([0.7, 0.82, 0.95])
    sky = sky_top * (1 - t) + sky_low * jitter() * t
    # Grass: green with strong per-pixel noise and vertical blade streaks.
    grass = np.array([0.25, 0.55, 0.18]) * jitter()
    streaks = rng.normal(0, 0.08, (1, shape[1], 1))
    grass = grass * (1 + rng.normal(0, 0.22, shape + (1,)) + streaks)
    # Wall: bricks, rows offset by half a brick, with light mortar lines.
    bh = size / rng.integers(6, 10)
    bw = bh * rng.uniform(1.8, 2.6)
    row = np.floor(yy / bh)
    xo = xx + (row % 2) * bw / 2
    col = np.floor(xo / bw)
    brick_tone = rng.uniform(0.8, 1.2, (int(size / bh) + 2, int((size + bw) / bw) + 2))
    brick = (
        np.array([0.62, 0.3, 0.2])
        * jitter()
        * brick_tone[row.astype(int), col.astype(int)][..., None]
    )
    mortar = ((yy % bh) < 1.0) | ((xo % bw) < 1.0)
    wall = np.where(mortar[..., None], np.array([0.78, 0.76, 0.7]), brick)
    # Floor: a checker in perspective under the horizon line.
    # Offset below the horizon caps the checker frequency there (less aliasing).
    dy = np.maximum(yy - horizon, 0.0) + 0.08 * size
    ku, kv = rng.uniform(1.5, 3.0), rng.uniform(0.4, 0.9) * size / 8
    checker = (np.floor((xx - size / 2) / dy * ku) + np.floor(size / dy * kv)) % 2
    tile_a, tile_b = np.array([0.85, 0.78, 0.62]) * jitter(), np.array([0.4, 0.28, 0.18]) * jitter()
    floor = np.where(checker[..., None] > 0, tile_a, tile_b)
    return {_L["sky"]: sky, _L["grass"]: grass, _L["wall"]: wall, _L["floor"]: floor}


def _sample_things(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int, crowd_percent: int
) -> list[dict[str, Any]]:
    """1 to 6 thing segments in painting order (back to front); at most one is a crowd."""
    crowd = rng.random() * 100 < crowd_percent
    num_regular = int(rng.integers(0 if crowd else 1, 6 if crowd else 7))
    things = []
    for _ in range(num_regular):
        cls = int(rng.choice(THING_LABELS))
        r = rng.uniform(0.07, 0.2) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        mask = _render_thing_mask(cls, xx - cx, yy - cy, r, rng.uniform(0, 2 * np.pi))
        things.append(
            {"label": cls, "mask": mask, "center": (cx, cy), "radius": r, "is_crowd": False}
        )
    if crowd:
        cls = int(rng.choice(THING_LABELS))
        gx, gy = rng.uniform(0.2, 0.8, 2) * size
        mask = np.zeros(yy.shape, bool)
        for _ in range(int(rng.integers(3, 6))):
            ox, oy = rng.uniform(-0.12, 0.12, 2) * size
            r = rng.uniform(0.04, 0.06) * size
            mask |= _render_thing_mask(cls, xx - gx - ox, yy - gy - oy, r, rng.uniform(0, 6.3))
        crowd_thing = {
            "label": cls,
            "mask": mask,
            "center": (gx, gy),
            "radius": 0.15 * size,
            "is_crowd": True,
        }
        things.insert(int(rng.integers(0, len(things) + 1)), crowd_thing)
    for thing in things:
        thing["color"] = THING_PALETTE[rng.integers(len(THING_PALETTE))] * rng.uniform(0.85, 1.1)
        thing["light"] = rng.normal(size=2)
        thing["outline"] = bool(rng.random() < 0.5)
    return things


def _paint(
    background: np.ndarray, things: list[dict[str, Any]], yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paints things back to front; returns the image and the owner map.

    Owner: -1 = stuff, -2 = void (outlines), k >= 0 = things[k].
    """
    image = background.copy()
    owner = np.full(yy.shape, -1, np.int32)
    for k, thing in enumerate(things):
        mask = thing["mask"]
        if thing["outline"]:
            ring = _dilate(mask) & ~mask
            image[ring] = thing["color"] * 0.25
            owner[ring] = -2
        # Lambertian-looking gradient across the shape so it reads as a solid object.
        lx, ly = thing["light"] / (np.linalg.norm(thing["light"]) + 1e-6)
        cx, cy = thing["center"]
        shade = 0.85 + 0.3 * ((xx - cx) * lx + (yy - cy) * ly) / thing["radius"]
        shaded = thing["color"] * np.clip(shade, 0.55, 1.2)[..., None]
        image[mask] = shaded[mask]
        owner[mask] = k
    return image, owner


def render_panoptic(
    rng: np.random.Generator, size: int, crowd_percent: int = 5
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Renders one image.

    Returns (image uint8 [S, S, 3], segment-id map int64 [S, S] with 0 = void, segments), where
    each segment is {id, label, category_id, is_crowd, area, bbox=[x, y, w, h]} (COCO pixels).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    stuff, horizon = _stuff_layout(rng, yy, xx, size)
    textures = _stuff_textures(rng, yy, xx, horizon, size)
    background = np.zeros((size, size, 3), np.float32)
    for cls, texture in textures.items():
        background[stuff == cls] = texture[stuff == cls]
    things = _sample_things(rng, yy, xx, size, crowd_percent)
    min_thing_area = max(4, int(0.004 * size * size))
    image, owner = _paint(background, things, yy, xx)
    # Drop things occluded to slivers; removing one only uncovers others, so one repaint is enough.
    kept = [t for k, t in enumerate(things) if (owner == k).sum() >= min_thing_area]
    if len(kept) != len(things):
        things = kept
        image, owner = _paint(background, things, yy, xx)
    # The last-painted regular thing is never occluded, so `things` is only empty if every
    # shape fell almost entirely outside the image: paint a guaranteed one in the middle.
    if not things:
        cls = int(rng.choice(THING_LABELS))
        r = 0.15 * size
        mask = _render_thing_mask(cls, xx - size / 2, yy - size / 2, r, rng.uniform(0, 6.3))
        things = [
            {
                "label": cls,
                "mask": mask,
                "center": (size / 2, size / 2),
                "radius": r,
                "is_crowd": False,
                "color": THING_PALETTE[0],
                "light": np.ones(2),
                "outline": False,
            }
        ]
        image, owner = _paint(background, things, yy, xx)

    segments: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    for k, thing in enumerate(things):
        segments.append({"label": thing["label"], "is_crowd": thing["is_crowd"]})
        masks.append(owner == k)
    min_stuff_area = max(2, int(0.002 * size * size))
    for cls in STUFF_LABELS:
        mask = (owner == -1) & (stuff == cls)
        area = int(mask.sum())
        if area >= min_stuff_area:
            segments.append({"label": cls, "is_crowd": False})
            masks.append(mask)
        elif area:
            owner[mask] = -2  # stuff slivers become void, as COCO drops tiny stuff regions

    ids = _unique_ids(rng, len(segments))
    pan = np.zeros((size, size), np.int64)
    for seg, mask, seg_id in zip(segments, masks, ids, strict=True):
        pan[mask] = seg_id
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        seg.update(
            id=int(seg_id),
            category_id=CATEGORIES[seg["label"]]["id"],
            area=int(mask.sum()),
            bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        )

    image = image + rng.normal(0, 0.015, image.shape)  # sensor noise
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image, pan, segments


def _unique_ids(rng: np.random.Generator, n: int) -> list[int]:
    """n distinct nonzero 24-bit ids (they fill all three PNG channels)."""
    ids: list[int] = []
    while len(ids) < n:
        candidate = int(rng.integers(1, 2**24))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def ids_to_rgb(pan: np.ndarray) -> np.ndarray:
    """Segment ids -> COCO RGB encoding (id = R + 256 G + 256^2 B)."""
    pan = pan.astype(np.int64)
    return np.stack([pan % 256, (pan // 256) % 256, pan // 65536], -1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """COCO RGB encoding -> segment ids (int64)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def image_id_for(split: str, index: int) -> int:
    """COCO-style image id, unique across splits."""
    return SPLIT_CODES[split] * 100_000_000 + index + 1


class SyntheticPanoptic(EmbeddedBuilder):
    """Synthetic panoptic segmentation, features as `coco/2017_panoptic`."""

    name = "synthetic_panoptic"
    VERSION = _VERSION
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticPanopticConfig(
            name="default", version=_VERSION, description="64x64 images, 2000/200 examples."
        ),
        SyntheticPanopticConfig(
            name="128px",
            version=_VERSION,
            image_size=128,
            description="128x128 images, 2000/200 examples.",
        ),
        SyntheticPanopticConfig(
            name="tiny",
            version=_VERSION,
            num_train=32,
            num_validation=16,
            description="64x64 images, 32/16 examples, for smoke tests.",
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        """Features mirror coco/2017_panoptic (see tensorflow_datasets/object_detection/coco.py)."""
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "image/id": np.int64,
                    "panoptic_image": tfds.features.Image(encoding_format="png"),
                    "panoptic_image/filename": tfds.features.Text(),
                    "panoptic_objects": tfds.features.Sequence(
                        {
                            "id": np.int64,
                            "area": np.int64,
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(names=CATEGORY_NAMES),
                            "is_crowd": np.bool_,
                        }
                    ),
                }
            ),
            metadata=tfds.core.MetadataDict(categories=CATEGORIES),
            homepage="https://cocodataset.org/#panoptic-2018",
        )

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[str, dict]]:
        cfg = self.builder_config
        size = cfg.image_size
        for index in range(num_examples):
            rng = example_rng(cfg.seed, split, index)
            image, pan, segments = render_panoptic(rng, size, cfg.crowd_percent)
            image_id = image_id_for(split, index)
            filename = f"{image_id:012d}.jpg"
            objects = [
                {
                    "id": seg["id"],
                    "area": seg["area"],
                    "bbox": _coco_bbox_to_tfds(seg["bbox"], size, size),
                    "label": seg["label"],
                    "is_crowd": seg["is_crowd"],
                }
                for seg in segments
            ]
            yield (
                filename,
                {
                    "image": encode_jpeg(image),
                    "image/filename": filename,
                    "image/id": image_id,
                    "panoptic_image": encode_png(ids_to_rgb(pan)),
                    "panoptic_image/filename": f"{image_id:012d}.png",
                    "panoptic_objects": objects,
                },
            )


def _coco_bbox_to_tfds(bbox: list[int], height: int, width: int) -> tfds.features.BBox:
    """COCO [x, y, w, h] pixels -> TFDS normalised BBox, as the real coco builder does."""
    x, y, w, h = bbox
    return tfds.features.BBox(
        ymin=y / height, xmin=x / width, ymax=(y + h) / height, xmax=(x + w) / width
    )


def tfds_bbox_to_coco(bbox: np.ndarray, height: int, width: int) -> list[int]:
    """TFDS normalised [ymin, xmin, ymax, xmax] -> COCO [x, y, w, h] integer pixels."""
    ymin, xmin, ymax, xmax = (float(v) for v in bbox)
    x, y = round(xmin * width), round(ymin * height)
    return [x, y, round(xmax * width) - x, round(ymax * height) - y]


def _iter_examples(
    builder_or_split: Any, split: str, categories: list[dict[str, Any]] | None
) -> tuple[Iterable[dict[str, Any]], list[dict[str, Any]]]:
    """Examples (numpy dicts, images possibly still encoded) and the categories to write."""
    if isinstance(builder_or_split, tfds.core.DatasetBuilder):
        builder = builder_or_split
        if not builder.is_prepared():
            raise ValueError(
                f"{builder.name}/{builder.builder_config.name} is not built in "
                f"{builder.data_dir}; build it first (uvim_givt.data.embedded.ensure_built)"
            )
        if categories is None and builder.info.metadata is not None:
            categories = builder.info.metadata.get("categories")
        # Encoded bytes are copied as they are: no JPEG re-encoding.
        decoders = {
            "image": tfds.decode.SkipDecoding(),
            "panoptic_image": tfds.decode.SkipDecoding(),
        }
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        examples: Iterable[dict[str, Any]] = tfds.as_numpy(ds)
    elif isinstance(builder_or_split, tf.data.Dataset):
        examples = tfds.as_numpy(builder_or_split)
    else:
        examples = builder_or_split
    return examples, list(categories if categories is not None else CATEGORIES)


def _as_bytes_and_array(value: Any, encode: Any) -> tuple[bytes, np.ndarray]:
    """(encoded bytes, decoded RGB array) from either form."""
    if isinstance(value, bytes | np.bytes_):
        array = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        return bytes(value), array
    array = np.asarray(value, np.uint8)
    return encode(array), array


def export_coco_format(
    builder_or_split: Any,
    out_dir: str,
    split: str = "validation",
    categories: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Writes a split as COCO panoptic files; returns their paths.

    `builder_or_split` is a built `synthetic_panoptic` (or `coco/2017_panoptic`) builder whose
    `split` is exported, a `tf.data.Dataset` of its examples, or an iterable of numpy example
    dicts. Layout, as COCO's (panopticapi finds the PNG folder from the JSON name):

        out_dir/annotations/panoptic_<split>.json   images, annotations, categories
        out_dir/annotations/panoptic_<split>/*.png  RGB-encoded segment ids
        out_dir/<split>/*.jpg                       the images

    `categories` (COCO format, in label order) defaults to the builder's metadata, else
    `CATEGORIES`; pass the real list when exporting `coco/2017_panoptic`.
    """
    examples, categories = _iter_examples(builder_or_split, split, categories)
    ann_dir = os.path.join(out_dir, "annotations")
    png_dir = os.path.join(ann_dir, f"panoptic_{split}")
    image_dir = os.path.join(out_dir, split)
    os.makedirs(png_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for ex in examples:
        image_id = int(ex["image/id"])
        image_name = _text(ex["image/filename"]) or f"{image_id:012d}.jpg"
        png_name = _text(ex["panoptic_image/filename"]) or f"{image_id:012d}.png"
        image_bytes, _ = _as_bytes_and_array(ex["image"], encode_jpeg)
        png_bytes, pan_rgb = _as_bytes_and_array(ex["panoptic_image"], encode_png)
        height, width = pan_rgb.shape[:2]
        with open(os.path.join(image_dir, image_name), "wb") as f:
            f.write(image_bytes)
        with open(os.path.join(png_dir, png_name), "wb") as f:
            f.write(png_bytes)
        objects = ex["panoptic_objects"]
        segments_info = [
            {
                "id": int(objects["id"][k]),
                "category_id": int(categories[int(objects["label"][k])]["id"]),
                "area": int(objects["area"][k]),
                "bbox": tfds_bbox_to_coco(objects["bbox"][k], height, width),
                "iscrowd": int(bool(objects["is_crowd"][k])),
            }
            for k in range(len(objects["id"]))
        ]
        images.append(
            {"id": image_id, "file_name": image_name, "height": int(height), "width": int(width)}
        )
        annotations.append(
            {"image_id": image_id, "file_name": png_name, "segments_info": segments_info}
        )
    json_path = os.path.join(ann_dir, f"panoptic_{split}.json")
    with open(json_path, "w") as f:
        json.dump(
            {
                "info": {"description": f"exported by uvim_givt ({split})"},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [dict(c) for c in categories],
            },
            f,
        )
    return {"json": json_path, "png_dir": png_dir, "image_dir": image_dir}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
