r"""Class-conditional image generation: a CNN VAE (stage 1) and a decoder-only GIVT (stage 2).

    python -m tasks.imagenet train            # embedded digits, tiny config, VAE then GIVT-Causal
    python -m tasks.imagenet train --config configs/imagenet.py:style=masked   # GIVT-MaskGIT
    python -m tasks.imagenet train --config configs/imagenet.py:size=paper --data tfds:imagenet2012
    python -m tasks.imagenet eval --ckpt RUN [--oracle]
    python -m tasks.imagenet sample --ckpt RUN --classes 3,7 --num 16 --temp 0.95 --cfg 0.4 \
        [--steps N --choice-temp T --schedule pow:2 --trajectory] [--beam 4 --fan 8 \
        --rand-top-k-temp 1] [--unconditional] [--cfg-proposals 1000] --out grid.png
    python -m tasks.imagenet sweep --ckpt RUN --cfg 0,0.2,0.4,1 --temps 0.8,0.95,1.0 --out DIR
    python -m tasks.imagenet probe --ckpt RUN [--layer L ...] [--out DIR]

Data (``--data``): ``embedded`` (scikit-learn's digits as a TFDS dataset with
imagenet2012's features, built on first use), ``tfds:imagenet2012`` (needs TFDS'
manual download), ``tfds:imagenette``, or ``folder:PATH`` with one sub-folder per
class (sorted folder names are the labels), either directly in PATH or in
``PATH/train`` and ``PATH/validation`` (or ``val``).

This file holds the task: its readers (the class-folder reader among them), its routes
(``train`` resizes the short side and takes a random square crop and flip as configured;
``eval`` and ``predict`` the central square), the class count and its metadata; the
``sample``/``sweep``/``probe`` commands are in tasks/imagenet_commands.py. Training both
stages is the generic runner's (``uvim_givt.training.runner``: ``vae.kind = "cnn"``, a GIVT
with ``num_labels``), evaluation the ``generation`` evaluators' (``evals.generation_loop``).
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from uvim_givt import cli
from uvim_givt.errors import non_negative_float, non_negative_int, positive_float, positive_int


# ------------------------------------------------------------------------- command line
# First, so that ``--help`` answers before TensorFlow and JAX are imported. What each
# command runs is in tasks/imagenet_commands.py.
def add_probe_arguments(p: ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--layer", type=positive_int, action="append", default=None,
                   help="decoder block (1-based; repeatable); default: every block")
    p.add_argument("--max-train", type=positive_int, default=None,
                   help="cap on training images (default: the whole split)")
    p.add_argument("--max-eval", type=positive_int, default=None,
                   help="cap on held-out images")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="images per feature-extraction call")
    p.add_argument("--c", type=positive_float, default=1.0,
                   help="inverse L2 strength of the logistic regression")
    p.add_argument("--data", default=None, help="data source (default: the run's)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the probe's data order")
    p.add_argument("--out", default=None, help="directory for probe.json and probe.png "
                   "(default RUN/probe)")


def add_sample_arguments(s: ArgumentParser) -> None:
    s.add_argument("--ckpt", required=True, help="run directory")
    s.add_argument("--classes", required=True, help="comma-separated class labels, e.g. 3,7")
    s.add_argument("--num", type=positive_int, default=8, help="samples per class")
    s.add_argument("--temp", type=positive_float, default=None,
                   help="temperature (default: config)")
    s.add_argument("--cfg", type=non_negative_float, default=None,
                   help="DB-CFG weight (default: config)")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="MaskGIT decoding steps (default: config)")
    s.add_argument("--choice-temp", type=positive_float, default=None,
                   help="MaskGIT choice temperature (default: config)")
    s.add_argument("--schedule", default=None, help="MaskGIT mask schedule: cosine, linear, "
                   "pow:K")
    s.add_argument("--trajectory", action="store_true", help="MaskGIT: also write the "
                   "decoding steps of one sample per class (OUT_trajectory.png)")
    s.add_argument("--beam", type=positive_int, default=None,
                   help="causal: beam size (default: config)")
    s.add_argument("--fan", type=positive_int, default=None,
                   help="causal: candidates per beam (default: config)")
    s.add_argument("--rand-top-k-temp", type=positive_float, default=None,
                   help="causal beam search: draw the surviving beams from softmax(score/T)")
    s.add_argument("--unconditional", action="store_true",
                   help="drop every label (the model's unconditional distribution; rows are "
                        "then independent draws)")
    s.add_argument("--cfg-proposals", type=positive_int, default=None,
                   help="DB-CFG rejection-sampling proposals per token (default: config)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    s.add_argument("--evaluator", default="sampled", help="whose batch size to sample in")
    s.add_argument("--out", required=True, help="PNG path (latents go to the same stem .npy)")


def add_complete_arguments(c: ArgumentParser) -> None:
    c.add_argument("--ckpt", required=True, help="run directory")
    c.add_argument("--region", default="bottom", choices=cli.REGIONS,
                   help="the part to generate: top/bottom/left/right (that share of the "
                        "rows or columns), centre (inpainting a centred box), border "
                        "(outpainting around one); bottom is a prefix for a causal GIVT")
    c.add_argument("--fraction", type=positive_float, default=0.5,
                   help="share of the side the region spans, in (0, 1)")
    c.add_argument("--num", type=positive_int, default=4, help="images of the split")
    c.add_argument("--samples", type=positive_int, default=4, help="completions per image")
    c.add_argument("--split", default="validation", help="the split the images come from")
    c.add_argument("--data", default=None, help="data source (default: the run's)")
    c.add_argument("--temp", type=positive_float, default=None,
                   help="temperature (default: config)")
    c.add_argument("--cfg", type=non_negative_float, default=None,
                   help="DB-CFG weight (default: config)")
    c.add_argument("--steps", type=positive_int, default=None,
                   help="MaskGIT decoding steps (default: config)")
    c.add_argument("--choice-temp", type=positive_float, default=None,
                   help="MaskGIT choice temperature (default: config)")
    c.add_argument("--schedule", default=None, help="MaskGIT mask schedule (default: config)")
    c.add_argument("--beam", type=positive_int, default=None,
                   help="causal: beam size (default: config)")
    c.add_argument("--fan", type=positive_int, default=None,
                   help="causal: candidates per beam (default: config)")
    c.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    c.add_argument("--out", required=True, help="PNG path")


def add_sweep_arguments(w: ArgumentParser) -> None:
    w.add_argument("--ckpt", required=True, help="run directory")
    w.add_argument("--cfg", default="0,0.2,0.4,1", help="comma-separated CFG weights")
    w.add_argument("--temps", default="0.8,0.95,1.0", help="comma-separated temperatures")
    w.add_argument("--steps", type=positive_int, default=None,
                   help="MaskGIT decoding steps (default: config)")
    w.add_argument("--choice-temp", type=positive_float, default=None,
                   help="MaskGIT choice temperature (default: config)")
    w.add_argument("--schedule", default=None, help="MaskGIT mask schedule (default: config)")
    w.add_argument("--num-per-class", type=positive_int, default=None,
                   help="samples per class (default: the evaluator's)")
    w.add_argument("--evaluator", default="sampled", help="the generation evaluator to sweep")
    w.add_argument("--data", default=None,
                   help="data source of the reference images (default: the run's)")
    w.add_argument("--split", default=None, help="data split (default: the evaluator's)")
    w.add_argument("--max-eval", type=positive_int, default=None, help="cap on reference images")
    w.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed")
    w.add_argument("--out", required=True, help="directory for sweep.json and sweep.png")


COMMANDS = (
    cli.TRAIN, cli.EVAL,
    cli.Command("sample", "sample a PNG grid (one row per class) and its latents",
                add_sample_arguments),
    cli.Command("complete", "inpaint, outpaint or continue real images: keep their codes "
                "outside a region and generate the region", add_complete_arguments),
    cli.Command("sweep", "FID and class accuracy over CFG weights x temperatures",
                add_sweep_arguments),
    cli.Command("probe", "linear-probe accuracy of the GIVT's decoder features, against "
                "raw pixels and the VAE's latents", add_probe_arguments),
)
cli.exit_if_help(__name__, "imagenet", COMMANDS, __doc__)

import os
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from tasks import common
from tasks.datasets.digits import CLASS_NAMES, Digits
from uvim_givt import schema
from uvim_givt.data import catalog
from uvim_givt.data.images import IMAGE_SUFFIXES, read_image
from uvim_givt.errors import ConfigError, DataError
from uvim_givt.task import ROUTES, MetricFamily, Reference, TaskMetadata

GENERATION_METRICS = ("FID", "FID_recon", "IS", "IS_std", "precision", "recall", "KID",
                      "class_accuracy")
_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val")}


# ===================================================================================== data
def _folder_split_dir(root: str, split: str) -> str:
    """The directory whose sub-folders are the classes of ``split``."""
    if not os.path.isdir(root):
        raise DataError(f"folder:{root} is not a directory")
    names = _SPLIT_DIRS.get(split, (split,))
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    known = {n for ns in _SPLIT_DIRS.values() for n in ns}
    if any(os.path.isdir(os.path.join(root, n)) for n in known):
        raise DataError(f"folder:{root} has split sub-folders but none for split "
                        f"{split!r} (looked for {', '.join(names)})")
    return root  # class folders directly in PATH: the same images serve every split


def folder_class_names(root: str) -> list[str]:
    """Sorted class folder names of the training split (their positions are the labels)."""
    d = _folder_split_dir(root, "train")
    classes = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    if not classes:
        raise DataError(f"folder:{root}: {d} has no class sub-folders")
    return classes


def folder_files(root: str, split: str) -> list[tuple[str, int]]:
    """(path, label) of every image of a split, sorted by class then file name."""
    classes = folder_class_names(root)
    d = _folder_split_dir(root, split)
    present = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DataError(f"folder:{root}: split {split!r} has classes the training "
                        f"split lacks: {unknown[:10]}")
    files = []
    for label, name in enumerate(classes):
        cdir = os.path.join(d, name)
        if not os.path.isdir(cdir):
            continue
        files += [(os.path.join(cdir, f), label) for f in sorted(os.listdir(cdir))
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise DataError(f"folder:{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                        f"the class folders of {d}")
    return files


def read_folder(root: str, split: str, skip_bad: bool = False) -> Iterator[dict[str, Any]]:
    """Examples {image uint8 RGB, label, file_name} of a class-folder dataset.

    An unreadable image raises :class:`DataError` naming it; with ``skip_bad`` it is
    skipped and counted instead (the count and first file are printed at the end).
    """
    skipped = []
    for path, label in folder_files(root, split):
        try:
            image = read_image(path)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} (set data.skip_bad=True to skip such files)") from None
            skipped.append(path)
            continue
        yield {"image": image[..., ::-1].copy(), "label": np.int64(label),
               "file_name": os.path.relpath(path, root)}
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable images in folder:{root} split "
              f"{split!r}: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
              file=sys.stderr)


def _folder(cfg: ml_collections.ConfigDict, root: str, split: str) -> tf.data.Dataset:
    """``folder:ROOT``: {image, label} of a class-folder split (its layout checked now)."""
    folder_files(root, split)  # validates the layout now, with a clear message
    skip = bool(cfg.data.skip_bad)
    return tf.data.Dataset.from_generator(
        lambda: ({"image": ex["image"], "label": ex["label"]}
                 for ex in read_folder(root, split, skip)),
        output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                          "label": tf.TensorSpec((), tf.int64)})


def embedded_overrides(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Builder-config overrides of the embedded digits asked for by the config."""
    size = int(cfg.data.image_size)
    return {} if size == 32 else {"image_size": size}


def raw_fields(ds: tf.data.Dataset, split: str) -> tf.data.Dataset:
    """{image uint8 [H, W, 3], label int64} of any source (TFDS's carry more)."""
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})


class ImageNetTask:
    """Class-conditional generation: its readers, routes, classes and metadata."""

    #: The ranges of the ImageNet keys (uvim_givt/schema.py).
    config_rules: schema.Rules = ((r"data\.num_classes", schema.POSITIVE_INT),)

    name = "imagenet"
    readers = catalog.Readers(
        embedded=Digits, embedded_config=embedded_overrides, folder=_folder,
        fields=raw_fields,
        prepare_hint="`tfds build NAME` (ImageNet needs a manual download, nothing is "
                     "downloaded here: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                     "into TFDS's downloads/manual folder, or pass --manual_dir, first)")
    metadata = TaskMetadata(
        title="Class-conditional image generation",
        metrics={
            "generation": MetricFamily(
                order=GENERATION_METRICS, primary="FID", higher_is_better=False,
                references=(
                    Reference("GIVT-Causal 256px, t=0.95, DB-CFG 0.4", "ImageNet 256", "FID",
                              3.35),
                    Reference("GIVT-MaskGIT 256px, t_C=35, DB-CFG 0.1", "ImageNet 256",
                              "FID", 4.53),
                    Reference("GIVT-MaskGIT 512px, t_C=140", "ImageNet 512", "FID", 4.86),
                    # the discrete-token systems GIVT is compared with (their papers)
                    Reference("MaskGIT (VQ, Chang et al. 2022), 8 steps", "ImageNet 256",
                              "FID", 6.18),
                    Reference("VQGAN + transformer (Esser et al. 2021)", "ImageNet 256",
                              "FID", 15.78),
                    Reference("ViT-VQGAN + VIM-L (Yu et al. 2022)", "ImageNet 256", "FID",
                              4.17))),
        },
        datasets=(("embedded", "scikit-learn digits (tasks/datasets/digits.py)"),
                  ("imagenet2012", "ImageNet 256")))

    def check_config(self, cfg: ml_collections.ConfigDict) -> None:
        """The data's classes, the config's and the GIVT's labels must agree."""
        n_data = self.num_classes(cfg, cfg.data.source)
        if n_data != int(cfg.data.num_classes):
            raise ConfigError(f"{cfg.data.source} has {n_data} classes but the config has "
                              f"data.num_classes={cfg.data.num_classes}: pass --set "
                              f"data.num_classes={n_data} --set givt.model.num_labels={n_data}")
        n_labels = cfg.givt.model.num_labels
        if n_labels is None or int(n_labels) != int(cfg.data.num_classes):
            raise ConfigError(f"inconsistent config: givt.model.num_labels={n_labels} != "
                              f"data.num_classes={cfg.data.num_classes}")

    def num_classes(self, cfg: ml_collections.ConfigDict, source: str) -> int:
        return len(self.class_names(cfg, source))

    def class_names(self, cfg: ml_collections.ConfigDict, source: str) -> list[str]:
        """Names of the labels 0..n-1 (TFDS' label names, or the folder names)."""
        kind, arg = catalog.parse_source(source)
        if kind == "embedded":
            return list(CLASS_NAMES)
        if kind == "folder":
            return folder_class_names(arg)
        catalog.load(self.readers, cfg, source, str(cfg.data.train_split))  # its errors
        import tensorflow_datasets as tfds
        builder = tfds.builder(arg, data_dir=catalog.data_dir(cfg))
        return list(builder.info.features["label"].names)

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, mode: str,
                   seed: tf.Tensor | None = None) -> dict[str, Any]:
        """Model inputs {image, label (not in ``predict``), meta {size: the raw H, W}} by
        the route ``mode``. ``train`` with ``data.crop_area_min`` < 1: an inception crop
        (a random square box covering that fraction of the area or more) resized to
        ``image_size``, as published; otherwise the short side resized to ``image_size``
        and the centre cut. Resizing is bicubic with antialiasing (published); ``train``
        with ``data.flip`` mirrors at random. Image float32 in [-1, 1]."""
        if mode not in ROUTES:
            raise ValueError(f"mode {mode!r}: one of {ROUTES}")
        train = mode == "train"
        size = int(cfg.data.image_size)
        image = tf.cast(example["image"], tf.float32)
        if train:
            s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        area_min = float(cfg.data.crop_area_min)
        if train and area_min < 1.0:
            begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=s_crop,
                area_range=(area_min, 1.0), aspect_ratio_range=(1.0, 1.0),
                use_image_if_no_bounding_boxes=True)
            image = image[begin[0]:begin[0] + crop[0], begin[1]:begin[1] + crop[1]]
            image = _resize(image, tf.constant(size), tf.constant(size))
        else:
            shape = tf.shape(image)
            h, w = shape[0], shape[1]
            scale = size / tf.cast(tf.minimum(h, w), tf.float32)
            nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
            nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
            image = _resize(image, nh, nw)
            top, left = (nh - size) // 2, (nw - size) // 2
            image = image[top:top + size, left:left + size]
        if train and cfg.data.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=s_flip)
        image = tf.ensure_shape(image, (size, size, 3))
        out = {"image": image / 127.5 - 1.0,
               "meta": {"size": tf.shape(example["image"], out_type=tf.int32)[:2]}}
        if mode != "predict":
            out["label"] = tf.cast(example["label"], tf.int32)
        return out


def _resize(image: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """float [H, W, 3] in [0, 255] -> [height, width, 3], bicubic with antialiasing
    (big_vision's ``method="bicubic", antialias=True``), clipped to [0, 255] (bicubic
    overshoots at edges); the same tensor when the size already matches."""
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    return tf.cond(same, lambda: image, lambda: tf.clip_by_value(
        tf.image.resize(image, tf.stack([height, width]), "bicubic", antialias=True),
        0.0, 255.0))


TASK = ImageNetTask()


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / sample / complete / sweep / probe); returns the exit
    status."""
    from tasks import imagenet_commands as run  # models and plots: commands only

    return common.main(TASK, COMMANDS, {"sample": run.run_sample, "complete": run.run_complete,
                                        "sweep": run.run_sweep, "probe": run.run_probe},
                       argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
