"""Class-conditional image generation: a CNN VAE (stage 1) and a decoder-only GIVT (stage 2).

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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from evals import probe
from evals.features import extractor_record
from evals.generation_loop import (
    eval_classes,
    make_extractor,
    reference_features,
    sample_and_score,
)
from tasks import common
from uvim_givt import cli, schema
from uvim_givt.data import pipeline
from uvim_givt.data.images import IMAGE_SUFFIXES, image_grid, read_image
from uvim_givt.errors import (
    ConfigError,
    DataError,
    UserError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from uvim_givt.models.mask_schedule import check_schedule
from uvim_givt.sampling.maskgit import sample_maskgit
from uvim_givt.sampling.predictor import Predictor, sampling_settings
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
        return len(self.class_names(cfg, source))

    def class_names(self, cfg: ml_collections.ConfigDict, source: str) -> list[str]:
        """Names of the labels 0..n-1 (TFDS' label names, or the folder names)."""
        kind, arg = pipeline.parse_source(source)
        if kind == "embedded":
            from tasks.datasets.digits import CLASS_NAMES
            return list(CLASS_NAMES)
        if kind == "tfds":
            return list(_tfds_builder(arg).info.features["label"].names)
        return folder_class_names(arg)

    def load(self, cfg: ml_collections.ConfigDict, source: str, split: str) -> tf.data.Dataset:
        """Raw examples {image uint8 [H, W, 3], label int64} of a split, in a fixed order."""
        kind, arg = pipeline.parse_source(source)
        if kind == "embedded":
            from tasks.datasets.digits import Digits
            from uvim_givt.data.embedded import ensure_built
            size = int(cfg.data.image_size)
            builder = ensure_built(Digits, **({} if size == 32 else {"image_size": size}))
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


def _style_args(cfg, args) -> dict[str, Any]:
    """The decoding flags of the run's GIVT style as sampling overrides (None = config)."""
    maskgit = {"--steps": ("num_steps", args.steps),
               "--choice-temp": ("choice_temperature", args.choice_temp),
               "--schedule": ("schedule", getattr(args, "schedule", None))}
    causal = {"--beam": ("beam_size", getattr(args, "beam", None)),
              "--fan": ("fan_size", getattr(args, "fan", None)),
              "--rand-top-k-temp": ("rand_top_k_temperature",
                                    getattr(args, "rand_top_k_temp", None))}
    mine, other = (maskgit, causal) if cfg.givt.model.style == "masked" else (causal, maskgit)
    ignored = [flag for flag, (_, value) in other.items() if value is not None]
    if ignored:
        print(f"note: {', '.join(ignored)} do not apply to a {cfg.givt.model.style!r} GIVT; "
              "ignored", file=sys.stderr)
    out = {key: value for key, value in mine.values()}
    if out.get("rand_top_k_temperature") is not None:
        out["rand_top_k"] = True
    if out.get("schedule") is not None:
        try:
            check_schedule(out["schedule"])
        except ValueError as e:
            raise UserError(f"--schedule: {e}") from None
    return out


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
    if args.unconditional and args.cfg:
        raise UserError("--unconditional drops every label: it takes no --cfg guidance")
    gen = Predictor(run.cfg, run.vae_params, run.givt_params,
                    batch_size=_evaluator(run.cfg, args.evaluator).batch_size)
    names = task.class_names(run.cfg, run.cfg.data.source)
    if max(classes) >= len(names) or min(classes) < 0:
        raise UserError(f"--classes {args.classes!r}: labels are 0..{len(names) - 1}")
    labels = np.repeat(np.array(classes, np.int32), args.num)
    overrides = dict(temperature=args.temp, cfg_max_samples=args.cfg_proposals,
                     cfg_weight=0.0 if args.unconditional else args.cfg,
                     unconditional=args.unconditional or None, **_style_args(run.cfg, args))
    chosen = sampling_settings(run.cfg, overrides)
    if (int(chosen["beam_size"]) > 1 or int(chosen["fan_size"]) > 1) \
            and float(chosen["cfg_weight"] or 0) and run.cfg.givt.model.style == "ar":
        raise UserError(f"beam search and DB-CFG (weight {chosen['cfg_weight']:g}) do not "
                        "combine: give --cfg 0 with --beam/--fan")
    print(f"sampling {args.num} image(s) of class(es) {', '.join(map(str, classes))} from "
          f"{args.ckpt} ({run.cfg.givt.model.style} GIVT, step {run.givt_step})")
    z = gen.sample_latents(labels, seed=args.seed, **overrides)
    images = gen.decode_images(z)
    out = args.out if args.out.lower().endswith(".png") else args.out + ".png"
    rows = ["no label" if args.unconditional else f"{c}: {names[c]}" for c in classes]
    write_labelled_grid(out, images, rows, title=_sample_title(run.cfg, overrides))
    npy = os.path.splitext(out)[0] + ".npy"
    np.save(npy, z.reshape(len(classes), args.num, *z.shape[1:]))
    print(f"wrote {out} ({len(classes)} rows x {args.num}) and {npy} (latents "
          f"{[len(classes), args.num, *z.shape[1:]]})")
    if args.trajectory:
        strip = os.path.splitext(out)[0] + "_trajectory.png"
        write_trajectory(gen, strip, np.array(classes, np.int32), rows, args.seed, overrides)
        print(f"wrote {strip} (MaskGIT decoding, one column per step)")
    return out


def _sample_title(cfg: ml_collections.ConfigDict, overrides: dict[str, Any]) -> str:
    """The decoding settings that made a grid, for its title."""
    s = sampling_settings(cfg, overrides)
    parts = [f"{cfg.givt.model.style} GIVT", f"temperature {s['temperature']:g}"]
    if cfg.givt.model.style == "masked":
        parts += [f"{s['num_steps']} steps", f"t_C {s['choice_temperature']:g}",
                  f"{s['schedule']} schedule"]
    elif int(s["beam_size"]) > 1 or int(s["fan_size"]) > 1:
        parts.append(f"beam {s['beam_size']} fan {s['fan_size']}"
                     + (f" rand_top_k T={s['rand_top_k_temperature']:g}"
                        if s["rand_top_k"] else ""))
    if s.get("unconditional"):
        parts.append("unconditional")
    else:
        parts.append(f"DB-CFG w={float(s['cfg_weight'] or 0):g}")
    return ", ".join(parts)


def write_labelled_grid(path: str, images: np.ndarray, rows: list[str], title: str = "",
                        columns: list[str] | None = None) -> str:
    """uint8 images [rows * cols, H, W, 3] (row-major) as one PNG with row labels (and
    optional column labels) beside the pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    grid = image_grid(images, len(rows))
    h, w = images.shape[1:3]
    cols = len(images) // len(rows)
    scale = max(1.0, 64 / h)  # small images (32px digits) drawn at least 64 px per cell
    fig_w = (cols * w * scale + 160) / 100
    fig_h = (len(rows) * h * scale + (60 if columns else 40)) / 100
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * h for i in range(len(rows))], rows)
    if columns:
        ax.xaxis.tick_top()
        ax.set_xticks([(j + 0.5) * w for j in range(cols)], columns, fontsize=8)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=18 if columns else 6)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return path


def write_trajectory(gen: Predictor, path: str, classes: np.ndarray, rows: list[str],
                     seed: int, overrides: dict[str, Any]) -> str:
    """MaskGIT decoding of one sample per class as a strip: column s decodes the sequence
    after step s (still-masked codes at zero, the prior's mean)."""
    cfg = gen.cfg
    if cfg.givt.model.style != "masked":
        raise UserError("--trajectory shows MaskGIT decoding steps: this run's GIVT is "
                        f"{cfg.givt.model.style!r} (causal)")
    s = sampling_settings(cfg, overrides)
    w = float(s["cfg_weight"] or 0.0)
    _, trace = sample_maskgit(
        gen.model, gen.givt_params, jax.random.PRNGKey(seed), labels=jnp.asarray(classes),
        num_steps=int(s["num_steps"]), choice_temperature=float(s["choice_temperature"]),
        schedule=str(s["schedule"]), temperature=float(s["temperature"]),
        temperature_probs=float(s["temperature_probs"]),
        cfg_weight=w if w else None, cfg_max_samples=int(s.get("cfg_max_samples") or 128),
        unconditional=bool(s.get("unconditional")), return_trace=True)
    steps = np.asarray(trace["inputs"])  # [S, B, L, D]
    num_steps, batch = steps.shape[:2]
    # Row-major strip: each class's row holds its sequence after every step.
    seqs = np.swapaxes(steps, 0, 1).reshape(batch * num_steps, *steps.shape[2:])
    codes = np.asarray(gen.unadapt(seqs))
    images = gen.decode_images(codes)
    masked = np.asarray(trace["num_masked"])[:, 0]
    columns = [f"{i + 1}\n{int(m)} masked" for i, m in enumerate(masked)]
    return write_labelled_grid(path, images, rows, columns=columns,
                               title=f"MaskGIT decoding, {num_steps} steps, "
                                     f"{s['schedule']} schedule")


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
                                    cfg_weight=w, **_style_args(cfg, args))
            rows.append({"temperature": t, "cfg_weight": w, **m})
            print(f"{t:6.3g} {w:6.3g} {m['FID']:8.3f} {m.get('class_accuracy', float('nan')):9.3f}",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": run.givt_step, "split": split,
              "data": source, "style": cfg.givt.model.style, "samples_per_class": per_class,
              "num_classes": len(classes), "num_reference": len(ref),
              **extractor_record(extractor, str(ev.extractor)), "results": rows}
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_sweep(rows, os.path.join(args.out, "sweep.png"),
               title=f"{cfg.givt.model.style} GIVT, step {run.givt_step}: {len(classes)} classes "
                     f"x {per_class} samples, FID against {len(ref)} {split} images")
    print(f"wrote {os.path.join(args.out, 'sweep.json')} and "
          f"{os.path.join(args.out, 'sweep.png')}")
    return result


def plot_sweep(rows: list[dict[str, float]], path: str, title: str = "") -> str:
    """One figure: FID and class accuracy against the CFG weight (a line per temperature,
    top row) and against the temperature (a line per CFG weight, bottom row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    metrics = (("FID", 1.0, "FID (lower is better)"),
               ("class_accuracy", 100.0, "class accuracy % (higher is better)"))
    for row, (x_key, line_key, x_label, line_name) in enumerate((
            ("cfg_weight", "temperature", "guidance weight w (DB-CFG)", "t"),
            ("temperature", "cfg_weight", "temperature t", "w"))):
        for line in sorted({r[line_key] for r in rows}):
            mine = sorted((r for r in rows if r[line_key] == line), key=lambda r: r[x_key])
            xs = [r[x_key] for r in mine]
            for col, (metric, scale, _) in enumerate(metrics):
                axes[row, col].plot(xs, [scale * r.get(metric, float("nan")) for r in mine],
                                    "o-", label=f"{line_name}={line:g}")
        for col, (_, _, label) in enumerate(metrics):
            axes[row, col].set(xlabel=x_label, ylabel=label)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=8)
    fig.suptitle(title or "sampling sweep: FID and class accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_probe(task: ImageNetTask, args: argparse.Namespace) -> dict[str, Any]:
    """Linear probes on frozen features (evals.probe): the GIVT's decoder blocks (all, or
    ``--layer``), raw pixels and the VAE's posterior means; fitted on the training split,
    scored on the held-out one."""
    run = load_run(args.ckpt, task)
    cfg = run.cfg
    depth = int(cfg.givt.model.num_decoder_layers)
    layers = probe.check_layers(args.layer or range(1, depth + 1), depth)
    gen = Predictor(cfg, run.vae_params, run.givt_params, batch_size=args.batch_size)
    source = args.data or cfg.data.source
    print(f"linear probes of {args.ckpt} ({cfg.givt.model.style} GIVT, step {run.givt_step}): "
          f"blocks {', '.join(map(str, layers))}, pixels and VAE means; fit on "
          f"{cfg.data.train_split}, score on {cfg.data.val_split}", flush=True)
    feats = {split: probe.split_features(task, gen, source, split, args.batch_size, cap, layers)
             for split, cap in ((cfg.data.train_split, args.max_train),
                                (cfg.data.val_split, args.max_eval))}
    acc = probe.probe_all(feats[cfg.data.train_split], feats[cfg.data.val_split], c=args.c,
                          seed=args.seed)
    print(f"{'features':>10s} {'top-1':>7s}")
    for name, value in acc.items():
        print(f"{name:>10s} {100 * value:6.1f}%")
    out = args.out or os.path.join(args.ckpt, "probe")
    os.makedirs(out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": run.givt_step, "data": source,
              "style": cfg.givt.model.style, "train_split": cfg.data.train_split,
              "eval_split": cfg.data.val_split,
              "num_train": len(feats[cfg.data.train_split].labels),
              "num_eval": len(feats[cfg.data.val_split].labels), "c": args.c,
              "top1": acc}
    with open(os.path.join(out, "probe.json"), "w") as f:
        json.dump(result, f, indent=1)
    png = probe.plot_probe(acc, os.path.join(out, "probe.png"),
                           title=f"linear probe, {cfg.givt.model.style} GIVT "
                                 f"(step {run.givt_step}), {result['num_eval']} held-out images")
    print(f"wrote {os.path.join(out, 'probe.json')} and {png}")
    return result


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--layer", type=positive_int, action="append", default=None,
                   help="decoder block (1-based; repeatable); default: every block")
    p.add_argument("--max-train", type=positive_int, default=None,
                   help="cap on training images (default: the whole split)")
    p.add_argument("--max-eval", type=positive_int, default=None,
                   help="cap on held-out images")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--c", type=positive_float, default=1.0,
                   help="inverse L2 strength of the logistic regression")
    p.add_argument("--data", default=None, help="data source (default: the run's)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=None, help="directory for probe.json and probe.png "
                   "(default RUN/probe)")


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
    s.add_argument("--schedule", default=None, help="MaskGIT mask schedule: cosine, linear, "
                   "pow:K")
    s.add_argument("--trajectory", action="store_true", help="MaskGIT: also write the "
                   "decoding steps of one sample per class (OUT_trajectory.png)")
    s.add_argument("--beam", type=positive_int, default=None, help="causal: beam size")
    s.add_argument("--fan", type=positive_int, default=None, help="causal: candidates per beam")
    s.add_argument("--rand-top-k-temp", type=positive_float, default=None,
                   help="causal beam search: draw the surviving beams from softmax(score/T)")
    s.add_argument("--unconditional", action="store_true",
                   help="drop every label (the model's unconditional distribution; rows are "
                        "then independent draws)")
    s.add_argument("--cfg-proposals", type=positive_int, default=None,
                   help="DB-CFG rejection-sampling proposals per token (default: config)")
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
    w.add_argument("--schedule", default=None, help="MaskGIT mask schedule")
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
    cli.Command("probe", "linear-probe accuracy of the GIVT's decoder features, against "
                "raw pixels and the VAE's latents", _probe_arguments, run_probe),
]


def main(argv: list[str] | None = None) -> int:
    """The command line (train / eval / sample / sweep); returns the exit status."""
    return common.main(TASK, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
