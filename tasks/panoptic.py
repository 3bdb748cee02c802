r"""COCO panoptic segmentation with UViM + GIVT: the task.

    python -m tasks.panoptic train                      # embedded default, tiny config
    python -m tasks.panoptic train --config configs/panoptic.py:size=paper \
        --data tfds:coco/2017_panoptic
    python -m tasks.panoptic predict --ckpt RUN --images DIR --out DIR
    python -m tasks.panoptic eval --ckpt RUN [--oracle]

Labels (two channels, ``vae.model.label_channels``), as published in big_vision's UViM/GIVT
panoptic pipeline: semantics = category index + 1 for every segment, crowd included (0 =
unlabelled); every segment, stuff and crowd included, gets an instance id 1.. in canonical
order (centre of mass, rows first) computed after the crop, 0 = unlabelled
(``tasks/panoptic_encoding.py``). Decoding: argmax instance map, one class per instance by
summing its pixels' semantic logits, optional minimum area fraction, then COCO segments: one
per thing instance, one per stuff category (``tasks/panoptic_decoding.py``).
``data.panoptic_encoding = "things"`` (the tiny preset, which measured better with it)
selects the ``things`` coding instead. COCO folders and prediction files:
``tasks/panoptic_coco.py``.

Routes (``uvim_givt/task.py``): ``train`` crops and flips, ``eval`` takes the whole frame,
``predict`` an image alone; all resize bilinearly to ``data.image_size`` and return ``meta``
(raw size, the box of the frame the input covers, flip), from which ``postprocess`` puts the
decoded segments back at the raw size (void outside the box).
"""

from __future__ import annotations

import sys

from uvim_givt import cli

# The command line comes first: ``--help`` answers before TensorFlow and JAX are imported.
COMMANDS = cli.dense_commands("predict COCO panoptic PNG+JSON and overlays for images")
cli.exit_if_help(__name__, "panoptic", COMMANDS, __doc__)

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from evals import pictures
from evals.panoptic_io import rgb_to_id
from evals.pq import PQAccumulator, flat_metrics
from tasks import common
from tasks.datasets.synthetic_panoptic import SyntheticPanoptic
from tasks.panoptic_coco import categories_for, folder_dataset, write_coco_prediction
from tasks.panoptic_decoding import decode_panoptic, decode_things
from tasks.panoptic_encoding import ENCODINGS, encode_panoptic_tf, encode_things_tf
from uvim_givt import rundir, schema
from uvim_givt.data import catalog
from uvim_givt.data.images import write_png
from uvim_givt.errors import ConfigError
from uvim_givt.models import builders
from uvim_givt.task import ROUTES, MetricFamily, TaskMetadata

PQ_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
COCO_VAL = "COCO 2017 val"


def embedded_overrides(cfg) -> dict[str, int]:
    """Builder-config overrides of the embedded dataset asked for by the config."""
    out = {}
    if int(cfg.data.image_size) != 64:
        out["image_size"] = int(cfg.data.image_size)
    for key in ("num_train", "num_validation"):
        if int(cfg.data[f"embedded_{key}"]):
            out[key] = int(cfg.data[f"embedded_{key}"])
    return out


def raw_fields(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """The fields the task reads, from any source (TFDS's carry more)."""
    def keep(ex):
        objs = ex["panoptic_objects"]
        return {"image": ex["image"], "image/id": ex["image/id"],
                "panoptic_image": ex["panoptic_image"],
                "panoptic_objects": {"id": objs["id"], "label": objs["label"],
                                     "is_crowd": objs["is_crowd"]}}
    return ds.map(keep)


def _folder(cfg, path: str, split: str) -> tf.data.Dataset:
    return folder_dataset(path, split, skip_bad=bool(cfg.data.skip_bad))


class PanopticTask:
    """COCO panoptic: its readers, routes, decoding to segments, PQ and drawings."""

    #: The choices and ranges of the panoptic keys (uvim_givt/schema.py).
    config_rules: schema.Rules = (
        (r"data\.panoptic_encoding", schema.OneOf(ENCODINGS)),
        # a fraction of the decoded map's pixels; 0 = keep every instance
        (r"data\.min_area_fraction", schema.FRACTION_BELOW_1),
    )

    name = "panoptic"
    mirror_equivariant = False  # canonical instance ids depend on position
    readers = catalog.Readers(
        embedded=SyntheticPanoptic, embedded_config=embedded_overrides, folder=_folder,
        fields=raw_fields, prepare_hint="`tfds build NAME` (COCO needs its download)")
    metadata = TaskMetadata(
        title="COCO panoptic segmentation",
        metrics={
            "panoptic": MetricFamily(
                order=PQ_METRICS, primary="PQ", higher_is_better=True,
                units=tuple((m, "%") for m in PQ_METRICS),
                references=common.uvim_givt_references(
                    COCO_VAL, "PQ", oracle=71.0, givt=40.2, uvim=45.8,
                    oracle_model="VAE stage 1 (oracle: encode GT, decode)")),
        },
        datasets=(("embedded", "synthetic shapes (tasks/datasets/synthetic_panoptic.py)"),
                  ("coco/2017_panoptic", COCO_VAL)))

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
        """The categories of ``data.source`` (a folder's from its ``data.val_split`` JSON)."""
        return categories_for(cfg.data.source, cfg.data.val_split)

    def preprocess(self, cfg, example: dict, mode: str, seed: Any = None) -> dict:
        """Model inputs {image, labels (not in ``predict``), meta} by the route ``mode``."""
        if mode not in ROUTES:
            raise ValueError(f"mode {mode!r}: one of {ROUTES}")
        size = int(cfg.data.image_size)
        image = example["image"]
        if mode == "predict":
            return {"image": common.model_image(image, size), "meta": common.frame_meta(image)}
        pan = tf.cast(example["panoptic_image"], tf.int32)
        ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        if mode == "train":
            (view, ids), meta = common.train_view(cfg, seed, image, ids)
        else:
            view, meta = image, common.frame_meta(image)
        ids = tf.image.resize(ids[..., None], (size, size), method="nearest")[..., 0]
        # After the crop and resize: the canonical order is over the segments still present.
        labels = self.encode_labels(cfg, ids, example["panoptic_objects"])
        return {"image": common.model_image(view, size),
                "labels": tf.ensure_shape(labels, (size, size, 2)), "meta": meta}

    def encode_labels(self, cfg, ids: tf.Tensor, objects: dict) -> tf.Tensor:
        """COCO id map [S, S] (cropped, resized) + ``panoptic_objects`` -> int32 [S, S, 2]
        by ``data.panoptic_encoding``."""
        cats = self._cats(cfg)
        n_inst = builders.label_channels(cfg)["instances"][1]
        if cfg.data.panoptic_encoding == "published":
            return encode_panoptic_tf(ids, objects["id"], objects["label"], n_inst, len(cats))
        isthing = np.array([c["isthing"] == 1 for c in cats])
        return encode_things_tf(ids, objects["id"], objects["label"], objects["is_crowd"],
                                isthing, n_inst)

    def postprocess(self, cfg, logits: dict, meta: dict) -> dict[str, Any]:
        """Logits of one example -> {"ids": COCO id map at ``meta["size"]``, "segments_info"}:
        decoded at the model's resolution, placed into ``meta["box"]`` (void elsewhere)."""
        decode = decode_panoptic if cfg.data.panoptic_encoding == "published" else decode_things
        ids, segments = decode(logits, self._cats(cfg), float(cfg.data.min_area_fraction),
                               place=lambda two: common.place_in_box(two, meta, 0))
        return {"ids": ids, "segments_info": segments}

    def _cats(self, cfg):
        if not hasattr(self, "_cat_cache"):
            self._cat_cache = {}
        key = (cfg.data.source, cfg.data.val_split)  # a folder's JSON of that split
        if key not in self._cat_cache:
            self._cat_cache[key] = self.categories(cfg)
        return self._cat_cache[key]

    def metric(self, cfg, kind: str) -> PanopticMetric:
        if kind != "panoptic":
            raise ConfigError(f"the panoptic task has no {kind!r} metric (evals.*.kind)")
        return PanopticMetric(self._cats(cfg))

    def draw(self, cfg, example, prediction) -> np.ndarray:
        """Image, ground truth (when the example has it) and prediction, titled (the
        prediction with its PQ on this image), and a legend of the classes shown. A class has one
        colour in every panel; instances of a class are told apart by their outlines."""
        categories = self._cats(cfg)
        cats = {c["id"]: c for c in categories}
        image = example["image"]
        panels = [("image", image)]
        shown = {s["category_id"] for s in prediction["segments_info"]}
        title = "prediction"
        if "panoptic_image" in example:
            gt_ids = rgb_to_id(example["panoptic_image"])
            labels = {int(i): categories[int(lab)]
                      for i, lab in zip(example["panoptic_objects"]["id"],
                                        example["panoptic_objects"]["label"], strict=True)}
            panels.append(("ground truth", colorize(image, gt_ids, labels)))
            shown |= {c["id"] for c in labels.values()}
            metric = PanopticMetric(categories)
            metric.add(example, prediction)
            title = f"prediction, PQ {metric.result()['PQ']:.1f}"
        pred_cats = {s["id"]: cats[s["category_id"]] for s in prediction["segments_info"]}
        panels.append((title, colorize(image, prediction["ids"], pred_cats)))
        legend = [(cats[c]["name"] + ("" if cats[c].get("isthing") else " (stuff)"),
                   cats[c].get("color", [200, 200, 200])) for c in sorted(shown) if c in cats]
        return pictures.labelled_panels(
            panels, lambda width: pictures.legend_strip(legend, width))


def colorize(image: np.ndarray, ids: np.ndarray, cat_of: dict[int, dict]) -> np.ndarray:
    """The image dimmed under each segment's category colour (the same colour for every
    instance of a category, in ground truth and prediction alike), with white outlines
    between segments."""
    out = image.astype(np.float32) * 0.35
    for sid, cat in cat_of.items():
        m = ids == sid
        if m.any():
            out[m] += 0.65 * np.array(cat.get("color", [200, 200, 200]), np.float32)
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
        return {**flat_metrics(self.acc.result()), "num_images": float(self.acc.num_images)}

    def details(self) -> dict[str, Any]:
        """Per-class PQ/SQ/RQ (x100) and TP/FP/FN, for the eval record."""
        return {"per_class": {str(cid): {k: (100.0 * v if k in ("pq", "sq", "rq") else v)
                                         for k, v in r.items()}
                              for cid, r in self.acc.result()["per_class"].items()}}


TASK = PanopticTask()


# ----------------------------------------------------------------------- prediction files
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
    """The command line (train / eval / predict / complete); returns the exit status."""
    return common.main(TASK, COMMANDS, {"predict": common.predict_run(write_predictions),
                                        "complete": common.run_complete}, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
