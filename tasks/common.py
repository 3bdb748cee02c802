"""What tasks share: the standard commands wired to the declared evaluators, and, for
the dense tasks, the training view and prediction over an image folder."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import ml_collections
import numpy as np
import tensorflow as tf

from evals.evaluators import Evaluators, evaluate_run
from uvim_givt import cli
from uvim_givt.data.images import read_rgb
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.sampling.predictor import Predictor
from uvim_givt.training.runner import load_run


def random_train_view(cfg: ml_collections.ConfigDict, seed: tf.Tensor, image: tf.Tensor,
                      *labels: tf.Tensor) -> list[tf.Tensor]:
    """The dense tasks' training view of ``image`` [H, W, C] and its label maps [H, W, ...].

    An inception-style crop (area fraction in [``data.crop_area_min``, 1], aspect 3/4 to
    4/3; 1 = no crop) and, with ``data.flip``, a random horizontal mirror, the same for the
    image and every label map. Returns [image, *labels].
    """
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    area_min = float(cfg.data.crop_area_min)
    if not 0.0 < area_min <= 1.0:
        raise ConfigError(f"data.crop_area_min={area_min}: must be in (0, 1]")
    maps = [image, *labels]
    if area_min < 1.0:
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=s_crop,
            area_range=(area_min, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            use_image_if_no_bounding_boxes=True)
        maps = [m[begin[0]:begin[0] + crop[0], begin[1]:begin[1] + crop[1]] for m in maps]
    if cfg.data.flip:
        flip = tf.random.stateless_uniform([], s_flip) < 0.5
        maps = [tf.cond(flip, lambda m=m: m[:, ::-1], lambda m=m: m) for m in maps]
    return maps


def predict_image_folder(task: Any, cfg: ml_collections.ConfigDict, predictor: Predictor,
                         images: str, batch_size: int) -> Iterator[tuple[str, dict, Any]]:
    """(file stem, raw example {"image"}, prediction) for each .jpg/.png in ``images``,
    sorted by name: the ``predict`` command of every dense task."""
    if not os.path.isdir(images):
        raise UserError(f"--images {images}: not a directory")
    names = sorted(f for f in os.listdir(images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not names:
        raise UserError(f"--images {images}: no .jpg/.png files")
    size = int(cfg.data.image_size)
    for start in range(0, len(names), batch_size):
        chunk = names[start:start + batch_size]
        raw = [read_rgb(os.path.join(images, n)) for n in chunk]
        batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
                          for im in raw]).astype(np.float32) / 127.5 - 1.0
        logits = predictor.predict(batch, seed=start,
                                   mirror_equivariant=task.mirror_equivariant)
        for i, n in enumerate(chunk):
            ex = {"image": raw[i]}
            yield (os.path.splitext(n)[0], ex,
                   task.postprocess(cfg, {k: v[i] for k, v in logits.items()}, ex))


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call")


def predict_command(help: str, write: Callable[[Any, Any, str, Iterator], str]) -> cli.Command:
    """``predict --ckpt RUN --images DIR --out DIR``: ``write(task, run, out, predictions)``
    stores the predictions in the task's format and returns a summary line."""
    def run(task, args):
        run = load_run(args.ckpt, task)
        predictor = Predictor(run.cfg, run.vae_params, run.givt_params)
        os.makedirs(args.out, exist_ok=True)
        preds = predict_image_folder(task, run.cfg, predictor, args.images, args.batch_size)
        print(write(task, run, args.out, preds))
    return cli.Command("predict", help, add_predict_arguments, run)


def standard_commands() -> list[cli.Command]:
    """``train`` and ``eval``, with the config-declared evaluators."""
    return [cli.train_command(Evaluators), cli.eval_command(evaluate_run)]


def main(task: Any, extra: list[cli.Command], argv: list[str] | None = None) -> int:
    return cli.main(task, standard_commands() + extra, argv)

