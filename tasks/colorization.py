"""Colorization with UViM (the original UViM's third task) and GIVT-UViM.

    python -m tasks.colorization train                  # embedded default, tiny config
    python -m tasks.colorization train --config configs/colorization.py:tokens=vq
    python -m tasks.colorization train --config configs/colorization.py:size=paper,tokens=vq \\
        --data tfds:imagenet2012
    python -m tasks.colorization train --data folder:PATH  # photos: PATH/train, PATH/val
    python -m tasks.colorization predict --ckpt RUN --images DIR --out DIR
    python -m tasks.colorization eval --ckpt RUN [--oracle]

The input is the grayscale image, the output its colours, as big_vision's UViM
colorization configs (``vqvae_imagenet2012_colorization.py``,
``train_imagenet2012_colorization_pretrained.py``) prepare them: the frame resized
(bilinear) to ``data.image_size``; label = the RGB image in [-1, 1], one value channel
``color`` (``vae.model.value_channels``: the stage-1 model reads the three values per pixel
and decodes three, trained by squared error); input and stage-1 context = the same image
through ``rgb_to_grayscale`` replicated to three channels, in [-1, 1]. Training views are an
inception-style crop (``data.crop_area_min``) and a random mirror.

Metric (``colorization``): ``PSNR``, big_vision's ``resizedPSNR``: per image, the PSNR
(dynamic range 2) between the prediction at the model's resolution, clipped to [-1, 1], and
the label (the frame resized to the model's input), averaged over images; ``PSNR_full``
scores the prediction resized back to the frame (bilinear) against the frame itself, and
``PSNR_gray`` the grayscale input itself as ``PSNR`` scores a prediction (no colour at all:
the reference a colorization must beat on the same images). ``FID``, the published metric
(ColTran's protocol: the colorized images against the true colour images of the same split,
5,000 ImageNet validation images in the paper), is added when an evaluator names a feature
extractor (``--set evals.sampled.extractor=fid_inception:PATH``: the FID Inception, whose
weights are never downloaded; empty by default, and the embedded scenes have no extractor
of their own); here both sets are taken at the model's resolution.

Data: ``embedded`` (the colour frames of the suite's synthetic indoor scenes,
tasks/datasets/synthetic_depth.py, their depth unused), ``tfds:imagenet2012`` (the
published data) or ``folder:PATH`` (any photos, in ``PATH/train`` and ``PATH/val``, in
sub-folders or not: a colour image is its own label).
"""

from __future__ import annotations

import sys

from uvim_givt import cli

# The command line comes first: ``--help`` answers before TensorFlow and JAX are imported.
COMMANDS = cli.dense_commands("predict colour PNGs (and previews) for images")
cli.exit_if_help(__name__, "colorization", COMMANDS, __doc__)

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow as tf

from evals import pictures
from tasks import common
from tasks.datasets.synthetic_depth import SyntheticDepth
from uvim_givt import schema
from uvim_givt.data import catalog
from uvim_givt.data.images import IMAGE_SUFFIXES, read_rgb, write_png
from uvim_givt.errors import ConfigError, DataError
from uvim_givt.models import builders
from uvim_givt.task import ROUTES, MetricFamily, TaskMetadata

METRIC_NAMES = ("PSNR", "PSNR_full", "PSNR_gray")
IMAGENET_VAL = "ImageNet 2012 val"
CHANNEL = "color"  # the value channel of the label VAE


# ----------------------------------------------------------------------------- the views
def gray_rgb(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, 3] -> the model's input: resized (bilinear), grayscale replicated to
    three channels, in [-1, 1] (big_vision: resize, rgb_to_grayscale_to_rgb, value_range)."""
    x = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)) / 127.5 - 1.0


def model_colour(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> the label at the model's resolution, float32 [-1, 1] (the same
    resize as the routes, so the metric scores what the model was asked for)."""
    x = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
    return (x.numpy() / 127.5 - 1.0).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8 [0, 255]."""
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, dynamic_range: float = 2.0) -> float:
    """PSNR in dB of two images of one value range (big_vision's ``_psnr``); identical
    images give inf."""
    mse = float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    return float("inf") if mse == 0 else 20 * np.log10(dynamic_range) - 10 * np.log10(mse)


@dataclasses.dataclass(frozen=True)
class Colorized:
    """One prediction: ``model`` float32 [S, S, 3] in [-1, 1] at the model's resolution (what
    ``PSNR`` scores) and ``frame`` uint8 [H, W, 3], resized back to the raw frame."""

    model: np.ndarray
    frame: np.ndarray


# --------------------------------------------------------------------------------- folders
def folder_files(root: str, split: str) -> list[str]:
    """Every image file of a split folder (sub-folders included), sorted by path."""
    split_dir = common.folder_split_dir(root, split)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(split_dir) for f in files
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise DataError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_folder(cfg: ml_collections.ConfigDict, root: str, split: str) -> tf.data.Dataset:
    """``folder:ROOT``: the photos of a split; an unreadable one raises ``DataError``
    naming it when it is reached."""
    paths = folder_files(root, split)
    split_dir = common.folder_split_dir(root, split)

    def read() -> Iterator[dict[str, Any]]:
        for path in paths:
            rel = os.path.splitext(os.path.relpath(path, split_dir))[0]
            yield {"image": read_rgb(path), "name": rel.replace(os.sep, "_")}

    return tf.data.Dataset.from_generator(read, output_signature={
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "name": tf.TensorSpec((), tf.string)})


def raw_fields(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """{image, name} of any source (TFDS and embedded examples named ``<split>_<index>``)."""
    if "name" in ds.element_spec:
        return ds.map(lambda ex: {"image": ex["image"], "name": ex["name"]})

    def keep(i, ex):
        name = tf.strings.join([split, tf.strings.as_string(i, width=6, fill="0")], "_")
        return {"image": ex["image"], "name": name}

    return ds.enumerate().map(keep)


# -------------------------------------------------------------------------------- the task
class ColorizationTask:
    """Colorization: grayscale in, colour out; readers, routes, PSNR and drawings."""

    config_rules: schema.Rules = (
        (r"data\.embedded_frame_size", schema.SIZE_2),
    )

    name = "colorization"
    mirror_equivariant = True  # a mirrored image's colours are the mirrored colours
    readers = catalog.Readers(
        embedded=SyntheticDepth, embedded_config=common.embedded_frame_overrides,
        folder=read_folder,
        fields=raw_fields,
        prepare_hint="`tfds build NAME` (needs the ImageNet archives, downloaded by hand)")
    metadata = TaskMetadata(
        title="Colorization",
        metrics={"colorization": MetricFamily(
            order=METRIC_NAMES, primary="PSNR", higher_is_better=True,
            units=(("PSNR", "dB"), ("PSNR_full", "dB"), ("PSNR_gray", "dB")))},
        datasets=(("embedded", "synthetic indoor scenes' colour frames "
                               "(tasks/datasets/synthetic_depth.py)"),
                  ("imagenet2012", IMAGENET_VAL)))

    def check_config(self, cfg: ml_collections.ConfigDict) -> None:
        """The label VAE must read and write the colour as one 3-value channel."""
        values = builders.value_channels(cfg)
        if values != {CHANNEL: (0, 3)} or builders.label_channels(cfg):
            raise ConfigError(
                f"vae.model.value_channels={values}, label_channels="
                f"{builders.label_channels(cfg)}: colorization needs value_channels="
                f"{{'{CHANNEL}': (0, 3)}} and no label channels")

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, mode: str,
                   seed: tf.Tensor | None = None) -> dict:
        """Model inputs {image (grayscale), labels (colour; not in ``predict``), meta}."""
        if mode not in ROUTES:
            raise ValueError(f"mode {mode!r}: one of {ROUTES}")
        size = int(cfg.data.image_size)
        image = example["image"]
        if mode == "train":
            (image,), meta = common.train_view(cfg, seed, image)
        else:
            meta = common.frame_meta(image)
        out = {"image": tf.ensure_shape(gray_rgb(image, size), (size, size, 3)), "meta": meta}
        if mode != "predict":
            out["labels"] = tf.ensure_shape(common.model_image(image, size), (size, size, 3))
        return out

    def postprocess(self, cfg: ml_collections.ConfigDict, logits: dict[str, np.ndarray],
                    meta: dict[str, Any]) -> Colorized:
        """The decoded colours [S, S, 3] of one example, clipped to [-1, 1] (as published),
        and the same resized (bilinear) into the raw frame."""
        colour = np.clip(np.asarray(logits[CHANNEL], np.float32), -1.0, 1.0)
        if bool(np.asarray(meta.get("flip", False))):
            colour = colour[:, ::-1]

        def resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
            return cv2.resize(x, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)

        frame = common.place_in_box(colour, {**meta, "flip": False}, 0.0, resize)
        return Colorized(colour, to_uint8(frame))

    def metric(self, cfg: ml_collections.ConfigDict, kind: str) -> ColorizationMetric:
        if kind != "colorization":
            raise ConfigError(f"the colorization task has no {kind!r} metric (evals.*.kind)")
        return ColorizationMetric(int(cfg.data.image_size))

    def draw(self, cfg: ml_collections.ConfigDict, example: dict, prediction: Colorized
             ) -> np.ndarray:
        """The grayscale input, the ground truth (when the example has one) and the
        prediction with its PSNR, at the frame's size."""
        image = example["image"]
        gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        title = "prediction"
        if "name" in example:  # a labelled example: its colours are the ground truth
            label = model_colour(image, prediction.model.shape[0])
            title = f"prediction, PSNR {psnr(prediction.model, label):.1f} dB"
        panels = [("input (grayscale)", gray)]
        if "name" in example:
            panels.append(("ground truth", image))
        panels.append((title, prediction.frame))
        return pictures.labelled_panels(panels)


class ColorizationMetric:
    """``PSNR`` (big_vision's resizedPSNR, at the model's resolution), ``PSNR_full`` (at
    the frame's) and ``PSNR_gray`` (the grayscale input as the prediction), per image,
    averaged; with an ``extractor``, ``FID`` of the colorized images against the true colour
    images, both at the model's resolution."""

    def __init__(self, image_size: int, extractor: Any = None):
        self.image_size = image_size
        self.extractor = extractor  # None, a spec ("fid_inception:PATH") or an extractor
        self.per_image: list[tuple[float, float, float]] = []
        self.images: dict[str, list[np.ndarray]] = {"predicted": [], "true": []}
        self.extractor_record: dict[str, Any] = {}

    def configure(self, options: Any) -> None:
        """The evaluator's options: ``extractor`` (empty: no FID)."""
        self.extractor = str(options.get("extractor", "")) or None

    def add(self, example: dict, prediction: Colorized) -> None:
        image = example["image"]
        label = model_colour(image, self.image_size)
        frame = image.astype(np.float32) / 127.5 - 1.0
        gray = gray_rgb(image, self.image_size).numpy()
        self.per_image.append((psnr(prediction.model, label),
                               psnr(prediction.frame.astype(np.float32) / 127.5 - 1.0, frame),
                               psnr(gray, label)))
        if self.extractor is not None:
            self.images["predicted"].append(to_uint8(prediction.model))
            self.images["true"].append(to_uint8(label))

    def fid(self) -> float:
        """FID of the colorized images against the true ones (the extractor's features)."""
        from evals.features import extractor_record
        from evals.generation_loop import make_extractor
        from evals.generation_metrics import fid_from_features
        ex = make_extractor(self.extractor) if isinstance(self.extractor, str) \
            else self.extractor
        self.extractor_record = extractor_record(ex)
        feats = {k: ex.features(np.stack(v)) for k, v in self.images.items()}
        return fid_from_features(feats["predicted"], feats["true"])

    def record_extra(self) -> dict[str, Any]:
        """Beside the metrics in the eval record: which network the FID's features are."""
        return self.extractor_record

    def result(self) -> dict[str, float]:
        if not self.per_image:
            return {"num_images": 0.0}
        values = np.asarray(self.per_image, np.float64)
        out = {**{name: float(values[:, i].mean()) for i, name in enumerate(METRIC_NAMES)},
               "num_images": float(len(values))}
        if self.extractor is not None:
            if len(self.per_image) < 2:
                raise ConfigError("colorization FID needs at least 2 images")
            out["FID"] = self.fid()
        return out


TASK = ColorizationTask()


# ------------------------------------------------------------------------------ prediction
def write_predictions(task: ColorizationTask, run: Any, args: common.PredictArgs,
                      predictions: Iterator) -> str:
    """``predict``: the colorized image (PNG, the photo's size) and a preview beside the
    grayscale input, each written as it comes."""
    previews = os.path.join(args.out, "previews")
    count = 0
    for name, ex, pred in predictions:
        stem = args.image_ids(name)[1]
        write_png(os.path.join(args.out, f"{stem}.png"), pred.frame)
        write_png(os.path.join(previews, f"{stem}.png"), task.draw(run.cfg, ex, pred))
        count += 1
    return (f"wrote {count} colorized images (PNG) to {args.out} and previews to {previews} "
            f"(step {run.givt_step})")


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / predict / complete); returns the exit status."""
    return common.main(TASK, COMMANDS, {"predict": common.predict_run(write_predictions),
                                        "complete": common.run_complete}, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
