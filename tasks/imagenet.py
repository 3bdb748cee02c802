"""Class-conditional image generation: a CNN VAE (stage 1) and a decoder-only GIVT (stage 2).

    python -m tasks.imagenet train            # embedded digits, tiny config, VAE then GIVT-Causal
    python -m tasks.imagenet train --config configs/imagenet.py:style=masked   # GIVT-MaskGIT
    python -m tasks.imagenet train --config configs/imagenet.py:size=paper --data tfds:imagenet2012
    python -m tasks.imagenet eval --ckpt RUN [--oracle]
    python -m tasks.imagenet sample --ckpt RUN --classes 3,7 --num 16 --temp 0.95 --cfg 0.4 \
        [--steps N --choice-temp T] --out grid.png
    python -m tasks.imagenet sweep --ckpt RUN --cfg 0,0.2,0.4,1 --temps 0.8,0.95,1.0 --out DIR

Data (``--data``): ``embedded`` (scikit-learn's digits as a TFDS dataset with
imagenet2012's features, built on first use), ``tfds:imagenet2012`` (needs TFDS'
manual download), ``tfds:imagenette``, or ``folder:PATH`` with one sub-folder per
class (sorted folder names are the labels), either directly in PATH or in
``PATH/train`` and ``PATH/validation`` (or ``val``).

This file holds what is specific to the task: reading and preprocessing the data,
checking the class count, and the ``sample``/``sweep`` commands. Training both stages
is the generic runner's (``uvim_givt.training.runner``: ``vae.kind = "cnn"``, a GIVT with
``num_labels``), evaluation the ``generation`` evaluators' (``evals.generative``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf

from evals.generative import (
    eval_classes,
    make_extractor,
    reference_features,
    sample_and_score,
)
from tasks import common
from uvim_givt import cli, schema
from uvim_givt.data import pipeline
from uvim_givt.data.images import IMAGE_SUFFIXES, image_grid, read_image, write_png
from uvim_givt.errors import (
    ConfigError,
    DataError,
    UserError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training.runner import load_run

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


def _tfds_builder(name: str):
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
        raise DataError(f"tfds:{name}: unknown or unusable TFDS dataset ({e})") from None
    if not builder.is_prepared():
        if name.split("/")[0] == "imagenet2012":
            raise DataError(
                f"tfds:{name} is not prepared in {builder.data_dir}. ImageNet needs a manual "
                "download (nothing is downloaded here): put ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar into "
                f"{os.path.join(builder.data_dir.split(name)[0], 'downloads', 'manual')} "
                f"(or --manual_dir) and run `tfds build {name}` once.")
        raise DataError(f"tfds:{name} is not prepared in {builder.data_dir}: run "
                                 f"`tfds build {name}` first (this program never downloads)")
    return builder


class ImageNetTask:
    """What is specific to class-conditional generation: reading, preprocessing, classes."""

    #: The ranges of the ImageNet keys (uvim_givt/schema.py).
    config_rules: schema.Rules = ((r"data\.num_classes", schema.POSITIVE_INT),)

    name = "imagenet"

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
        kind, arg = pipeline.parse_source(source)
        if kind == "embedded":
            from uvim_givt.data.builders.digits import CLASS_NAMES
            return len(CLASS_NAMES)
        if kind == "tfds":
            return int(_tfds_builder(arg).info.features["label"].num_classes)
        return len(folder_class_names(arg))

    def load(self, cfg: ml_collections.ConfigDict, source: str, split: str) -> tf.data.Dataset:
        """Raw examples {image uint8 [H, W, 3], label int64} of a split, in a fixed order."""
        kind, arg = pipeline.parse_source(source)
        if kind == "embedded":
            from uvim_givt.data.embedded import ensure_built
            size = int(cfg.data.image_size)
            builder = ensure_built("digits", **({} if size == 32 else {"image_size": size}))
            if split not in builder.info.splits:
                raise DataError(f"embedded digits have no split {split!r} "
                                         f"(splits: {sorted(builder.info.splits)})")
            ds = builder.as_dataset(split=split, shuffle_files=False)
        elif kind == "tfds":
            builder = _tfds_builder(arg)
            try:
                ds = builder.as_dataset(split=split, shuffle_files=False)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"tfds:{arg} has no split {split!r} (splits: "
                                         f"{sorted(builder.info.splits)}): {e}") from None
        else:
            folder_files(arg, split)  # validates the layout now, with a clear message
            skip = bool(cfg.data.skip_bad)
            ds = tf.data.Dataset.from_generator(
                lambda: ({"image": ex["image"], "label": ex["label"]}
                         for ex in read_folder(arg, split, skip)),
                output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                                  "label": tf.TensorSpec((), tf.int64)})
            return ds
        return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})

    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, train: bool,
                   seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Resize the short side to ``image_size``, crop a square (random when training and
        ``data.random_crop``, else central), maybe flip; image float32 in [-1, 1]."""
        size = int(cfg.data.image_size)
        image = example["image"]
        if train:
            s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        shape = tf.shape(image)
        h, w = shape[0], shape[1]
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        image = tf.cast(image, tf.float32)
        image = tf.cond(tf.logical_and(tf.equal(nh, h), tf.equal(nw, w)), lambda: image,
                        lambda: tf.image.resize(image, (nh, nw), "bilinear", antialias=True))
        if train and cfg.data.random_crop:
            image = tf.image.stateless_random_crop(image, (size, size, 3), seed=s_crop)
        else:
            top, left = (nh - size) // 2, (nw - size) // 2
            image = image[top:top + size, left:left + size]
        if train and cfg.data.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=s_flip)
        image = tf.ensure_shape(image, (size, size, 3))
        return {"image": image / 127.5 - 1.0, "label": tf.cast(example["label"], tf.int32)}


TASK = ImageNetTask()

def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers") from None


def _maskgit_args(cfg, args) -> dict[str, Any]:
    if cfg.givt.model.style != "masked":
        if args.steps is not None or args.choice_temp is not None:
            print("note: --steps/--choice-temp only apply to MaskGIT (masked) models; ignored",
                  file=sys.stderr)
        return {}
    return {"num_steps": args.steps, "choice_temperature": args.choice_temp}


def _evaluator(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    if name not in cfg.evals or cfg.evals[name].kind != "generation":
        raise UserError(f"--evaluator {name!r}: not a generation evaluator of this run "
                        f"(evals: {sorted(cfg.evals)})")
    return cfg.evals[name]


def run_sample(task: ImageNetTask, args: argparse.Namespace) -> str:
    run = load_run(args.ckpt, task)
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes {args.classes!r}: expected comma-separated ints") from None
    if not classes or args.num < 1:
        raise UserError("give at least one class (--classes) and --num >= 1")
    gen = Predictor(run.cfg, run.vae_params, run.givt_params,
                    batch_size=_evaluator(run.cfg, args.evaluator).batch_size)
    labels = np.repeat(np.array(classes, np.int32), args.num)
    z = gen.sample_latents(labels, seed=args.seed, temperature=args.temp, cfg_weight=args.cfg,
                           **_maskgit_args(run.cfg, args))
    images = gen.decode_images(z)
    out = args.out if args.out.lower().endswith(".png") else args.out + ".png"
    write_png(out, image_grid(images, len(classes)))
    npy = os.path.splitext(out)[0] + ".npy"
    np.save(npy, z.reshape(len(classes), args.num, *z.shape[1:]))
    print(f"wrote {out} ({len(classes)} rows x {args.num}) and {npy} (latents "
          f"{[len(classes), args.num, *z.shape[1:]]})")
    return out


def run_sweep(task: ImageNetTask, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--evaluator`` (default ``sampled``) over CFG weights x temperatures."""
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    weights, temps = _floats(args.cfg, "--cfg"), _floats(args.temps, "--temps")
    if not weights or not temps:
        raise UserError("give at least one --cfg weight and one --temps value")
    ev = _evaluator(cfg, args.evaluator)
    per_class = args.num_per_class or int(ev.samples_per_class)
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=ev.batch_size)
    extractor = make_extractor(str(ev.extractor))
    source = args.data or cfg.data.source
    split = args.split or ev.split
    ref = reference_features(task, cfg, extractor, source, split, int(ev.batch_size),
                             args.max_eval or int(ev.num_examples) or None)
    classes = eval_classes(cfg, ev)
    labels = np.repeat(classes, per_class).astype(np.int32)
    rows = []
    print(f"{'temp':>6s} {'cfg w':>6s} {'FID':>8s} {'class acc':>9s}")
    for t in temps:
        for w in weights:
            m, _ = sample_and_score(gen, extractor, ref, labels, args.seed, temperature=t,
                                    cfg_weight=w, **_maskgit_args(cfg, args))
            rows.append({"temperature": t, "cfg_weight": w, **m})
            print(f"{t:6.3g} {w:6.3g} {m['FID']:8.3f} {m.get('class_accuracy', float('nan')):9.3f}",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": run.givt_step, "split": split,
              "data": source, "style": cfg.givt.model.style, "samples_per_class": per_class,
              "num_classes": len(classes), "num_reference": len(ref),
              "extractor": str(ev.extractor), "results": rows}
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_sweep(rows, os.path.join(args.out, "sweep.png"))
    print(f"wrote {os.path.join(args.out, 'sweep.json')} and "
          f"{os.path.join(args.out, 'sweep.png')}")
    return result


def plot_sweep(rows: list[dict[str, float]], path: str) -> str:
    """FID and class accuracy vs the CFG weight, one line per temperature."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t in sorted({r["temperature"] for r in rows}):
        mine = sorted((r for r in rows if r["temperature"] == t), key=lambda r: r["cfg_weight"])
        ws = [r["cfg_weight"] for r in mine]
        axes[0].plot(ws, [r["FID"] for r in mine], "o-", label=f"t={t:g}")
        axes[1].plot(ws, [100 * r.get("class_accuracy", float("nan")) for r in mine], "o-",
                     label=f"t={t:g}")
    axes[0].set(xlabel="CFG weight w", ylabel="FID", title="FID (lower is better)")
    axes[1].set(xlabel="CFG weight w", ylabel="class accuracy (%)",
                title="class consistency (higher is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sample_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ckpt", required=True, help="run directory")
    s.add_argument("--classes", required=True, help="comma-separated class labels, e.g. 3,7")
    s.add_argument("--num", type=positive_int, default=8, help="samples per class")
    s.add_argument("--temp", type=positive_float, default=None,
                   help="temperature (default: config)")
    s.add_argument("--cfg", type=non_negative_float, default=None,
                   help="DB-CFG weight (default: config)")
    s.add_argument("--steps", type=positive_int, default=None, help="MaskGIT decoding steps")
    s.add_argument("--choice-temp", type=positive_float, default=None,
                   help="MaskGIT choice temperature")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--evaluator", default="sampled", help="whose batch size to sample in")
    s.add_argument("--out", required=True, help="PNG path (latents go to the same stem .npy)")


def _sweep_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("--ckpt", required=True, help="run directory")
    w.add_argument("--cfg", default="0,0.2,0.4,1", help="comma-separated CFG weights")
    w.add_argument("--temps", default="0.8,0.95,1.0", help="comma-separated temperatures")
    w.add_argument("--steps", type=positive_int, default=None, help="MaskGIT decoding steps")
    w.add_argument("--choice-temp", type=positive_float, default=None,
                   help="MaskGIT choice temperature")
    w.add_argument("--num-per-class", type=positive_int, default=None,
                   help="default: the evaluator's")
    w.add_argument("--evaluator", default="sampled", help="the generation evaluator to sweep")
    w.add_argument("--data", default=None)
    w.add_argument("--split", default=None, help="default: the evaluator's")
    w.add_argument("--max-eval", type=positive_int, default=None, help="cap on reference images")
    w.add_argument("--seed", type=non_negative_int, default=0)
    w.add_argument("--out", required=True, help="directory for sweep.json and sweep.png")


COMMANDS = [
    cli.Command("sample", "sample a PNG grid (one row per class) and its latents",
                _sample_arguments, run_sample),
    cli.Command("sweep", "FID and class accuracy over CFG weights x temperatures",
                _sweep_arguments, run_sweep),
]


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / sample / sweep); returns the exit status."""
    return common.main(TASK, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
