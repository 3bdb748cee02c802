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

Stage 1 trains the CNN VAE on L2 + beta * KL (+ an optional LPIPS-style VGG
perceptual loss whose weights the user supplies, + an optional hinge PatchGAN
loss). The discriminator lives in the same parameter tree as the VAE
(``{"vae": ..., "disc": ...}``) and is trained in the same step: each network
gets only the gradient of its own objective (``stop_gradient`` on the other's
input), so one optimiser update is one generator and one discriminator step.
An EMA of the VAE parameters is kept after every step (``vae.ema_decay``), saved
beside the stage's checkpoints (stage ``vae_ema``) and, when enabled, is the VAE
that stage 2 trains on and that decodes samples.

Stage 2 trains a class-conditional GIVT (``givt.model.style``: ``ar`` causal or
``masked`` MaskGIT) on posterior samples of the frozen VAE's latents of the
training images, with label dropout for classifier-free guidance.

Evaluation (``train`` and ``eval``): stage 1 reports ``recon_mse`` (mean squared
error of validation images in [-1, 1], decoded from the posterior mean),
``FID_recon`` and ``FID_random_latents`` (images decoded from N(0, I) latents);
stage 2 reports ``FID`` and ``class_accuracy`` of guided samples (``cfg_weight``
from the config), the same without guidance (``*_no_cfg``), ``IS`` and
``FID_random_latents``. FIDs are against the held-out split with the config's
feature extractor (``digits`` classifier, or ``inception:PATH``); the class
accuracy is the fraction of samples the extractor's classifier assigns to the
requested class (computed when its classes are the dataset's labels).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from evals import generation as gen_eval
from evals.records import config_hash, write_eval_record
from tasks import _imagenet_losses as extra_losses
from tasks import base
from uvim_givt import config as config_lib
from uvim_givt.data import pipeline
from uvim_givt.models import vae_losses
from uvim_givt.models.cnn_vae import CNNVAE
from uvim_givt.models.givt import GIVT
from uvim_givt.sampling.by_style import sample_by_style
from uvim_givt.training import checkpoint as ckpt_lib
from uvim_givt.training.trainer import Stage, count_params, train

UserError = base.UserError
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val")}
EMA_STAGE = "vae_ema"


# ===================================================================================== data
def _folder_split_dir(root: str, split: str) -> str:
    """The directory whose sub-folders are the classes of ``split``."""
    if not os.path.isdir(root):
        raise pipeline.DataError(f"folder:{root} is not a directory")
    names = _SPLIT_DIRS.get(split, (split,))
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    known = {n for ns in _SPLIT_DIRS.values() for n in ns}
    if any(os.path.isdir(os.path.join(root, n)) for n in known):
        raise pipeline.DataError(f"folder:{root} has split sub-folders but none for split "
                                 f"{split!r} (looked for {', '.join(names)})")
    return root  # class folders directly in PATH: the same images serve every split


def folder_class_names(root: str) -> list[str]:
    """Sorted class folder names of the training split (their positions are the labels)."""
    d = _folder_split_dir(root, "train")
    classes = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    if not classes:
        raise pipeline.DataError(f"folder:{root}: {d} has no class sub-folders")
    return classes


def folder_files(root: str, split: str) -> list[tuple[str, int]]:
    """(path, label) of every image of a split, sorted by class then file name."""
    classes = folder_class_names(root)
    d = _folder_split_dir(root, split)
    present = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise pipeline.DataError(f"folder:{root}: split {split!r} has classes the training "
                                 f"split lacks: {unknown[:10]}")
    files = []
    for label, name in enumerate(classes):
        cdir = os.path.join(d, name)
        if not os.path.isdir(cdir):
            continue
        files += [(os.path.join(cdir, f), label) for f in sorted(os.listdir(cdir))
                  if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise pipeline.DataError(f"folder:{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                                 f"the class folders of {d}")
    return files


def read_folder(root: str, split: str, skip_bad: bool = False) -> Iterator[dict[str, Any]]:
    """Examples {image uint8 RGB, label, file_name} of a class-folder dataset.

    An unreadable image raises :class:`DataError` naming it; with ``skip_bad`` it is
    skipped and counted instead (the count and first file are printed at the end).
    """
    skipped = []
    for path, label in folder_files(root, split):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            if not skip_bad:
                raise pipeline.DataError(f"{path}: unreadable, truncated or not an image (set "
                                         "data.skip_bad=True to skip such files)")
            skipped.append(path)
            continue
        yield {"image": image[..., ::-1].copy(), "label": np.int64(label),
               "file_name": os.path.relpath(path, root)}
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable images in folder:{root} split "
              f"{split!r}; first: {skipped[0]}", file=sys.stderr)


def _tfds_builder(name: str):
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
        raise pipeline.DataError(f"tfds:{name}: unknown or unusable TFDS dataset ({e})") from None
    if not builder.is_prepared():
        if name.split("/")[0] == "imagenet2012":
            raise pipeline.DataError(
                f"tfds:{name} is not prepared in {builder.data_dir}. ImageNet needs a manual "
                "download (nothing is downloaded here): put ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar into "
                f"{os.path.join(builder.data_dir.split(name)[0], 'downloads', 'manual')} "
                f"(or --manual_dir) and run `tfds build {name}` once.")
        raise pipeline.DataError(f"tfds:{name} is not prepared in {builder.data_dir}: run "
                                 f"`tfds build {name}` first (this program never downloads)")
    return builder


class ImageNetTask:
    """What is specific to class-conditional generation: reading, preprocessing, classes."""

    name = "imagenet"

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
                raise pipeline.DataError(f"embedded digits have no split {split!r} "
                                         f"(splits: {sorted(builder.info.splits)})")
            ds = builder.as_dataset(split=split, shuffle_files=False)
        elif kind == "tfds":
            builder = _tfds_builder(arg)
            try:
                ds = builder.as_dataset(split=split, shuffle_files=False)
            except Exception as e:  # noqa: BLE001
                raise pipeline.DataError(f"tfds:{arg} has no split {split!r} (splits: "
                                         f"{sorted(builder.info.splits)}): {e}") from None
        else:
            folder_files(arg, split)  # validates the layout now, with a clear message
            skip = bool(cfg.data.get("skip_bad", False))
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


def train_batch_fn(cfg: ml_collections.ConfigDict, train_cfg: ml_collections.ConfigDict,
                   make_dataset: Callable[[], tf.data.Dataset]):
    """Stage.batches: deterministic, resumable batches of {image, label}."""
    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        def prep(ex, seed):
            return TASK.preprocess(cfg, ex, train=True, seed=seed)
        return pipeline.train_batches(make_dataset, prep, int(train_cfg.batch_size),
                                      int(train_cfg.seed) + int(cfg.seed), start,
                                      shuffle_buffer=int(cfg.data.shuffle_buffer))
    return batches


def eval_images(cfg: ml_collections.ConfigDict, source: str, split: str, batch_size: int,
                max_examples: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float [n, S, S, 3] in [-1, 1], labels [n]) batches of a split, in order."""
    ds = TASK.load(cfg, source, split)
    for batch in pipeline.eval_batches(ds, lambda ex: TASK.preprocess(cfg, ex, train=False),
                                       batch_size, max_examples):
        valid = batch["_valid"]
        yield batch["image"][valid], batch["label"][valid]


# =================================================================================== models
def _kwargs(group: Any) -> dict[str, Any]:
    d = group.to_dict() if isinstance(group, ml_collections.ConfigDict) else dict(group)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def build_vae(cfg: ml_collections.ConfigDict) -> CNNVAE:
    try:
        return CNNVAE(**_kwargs(cfg.vae.model))
    except TypeError as e:
        raise UserError(f"cannot build the CNN VAE from vae.model: {e}") from None


def build_givt(cfg: ml_collections.ConfigDict) -> GIVT:
    try:
        return GIVT(**_kwargs(cfg.givt.model))
    except TypeError as e:
        raise UserError(f"cannot build GIVT from givt.model: {e}") from None


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Stage 1 and stage 2 must agree on the latent sequence, the classes and the size."""
    vae, g = build_vae(cfg), cfg.givt.model
    problems = []
    size = int(cfg.data.image_size)
    if tuple(vae.input_size) != (size, size):
        problems.append(f"vae.model.input_size {tuple(vae.input_size)} != data.image_size "
                        f"{size} (square)")
    if int(g.seq_len) != vae.code_len:
        problems.append(f"givt.model.seq_len={g.seq_len} but the VAE makes {vae.code_len} "
                        f"latent tokens ({vae.latent_grid[0]}x{vae.latent_grid[1]})")
    if int(g.out_dim) != int(vae.codeword_dim):
        problems.append(f"givt.model.out_dim={g.out_dim} != vae.model.codeword_dim="
                        f"{vae.codeword_dim}")
    if g.num_labels is None or int(g.num_labels) != int(cfg.data.num_classes):
        problems.append(f"givt.model.num_labels={g.num_labels} != data.num_classes="
                        f"{cfg.data.num_classes}")
    if g.style not in ("ar", "masked"):
        problems.append(f"givt.model.style={g.style!r}: ar or masked")
    if problems:
        raise UserError("inconsistent config: " + "; ".join(problems))


def vae_target(cfg: ml_collections.ConfigDict) -> Any:
    vae = build_vae(cfg)
    return jax.eval_shape(lambda: vae.init(
        jax.random.PRNGKey(0), jnp.zeros((1, *vae.input_size, 3), jnp.float32))["params"])


def givt_init_fn(model: GIVT) -> Callable[[jax.Array], Any]:
    def init(key):
        targets = jnp.zeros((1, model.seq_len, model.out_dim), jnp.float32)
        labels = jnp.zeros((1,), jnp.int32)
        mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
        return model.init(key, targets, labels, input_mask=mask)["params"]
    return init


# ================================================================================= stage 1
class VAEEma:
    """EMA of ``params["vae"]`` updated after every trainer step (``Stage.after_step``).

    decay_t = min(decay, (1 + t) / (10 + t)) (so an early EMA is not dominated by the
    initialisation). Saved as stage ``vae_ema`` at the trainer's checkpoint steps; a
    resumed run restarts from the EMA saved at its resume step.
    """

    def __init__(self, run_dir: str, decay: float, train_cfg: ml_collections.ConfigDict):
        self.run_dir, self.decay = run_dir, float(decay)
        self.every, self.total = int(train_cfg.ckpt_every), int(train_cfg.total_steps)
        self.ema = None
        self.ckpt = ckpt_lib.StageCheckpoints(run_dir, EMA_STAGE, keep=int(train_cfg.keep_ckpts))

        def update(ema, params, step):
            d = jnp.minimum(self.decay, (1.0 + step) / (10.0 + step))
            return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)

        self._update = jax.jit(update, donate_argnums=0)

    def _resume(self, start: int, current: Any) -> Any:
        steps = [s for s in self.ckpt.manager.all_steps() if s <= start] if start else []
        if steps:
            ema, _ = self.ckpt.restore_params(max(steps), target=current)
            return jax.tree_util.tree_map(jnp.asarray, ema)
        if start:
            print(f"warning: no EMA checkpoint at or before step {start}; the EMA restarts "
                  "from the current parameters", file=sys.stderr)
        return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), current)

    def __call__(self, params: Any, step: int) -> None:
        import orbax.checkpoint as ocp
        if self.ema is None:
            self.ema = self._resume(step - 1, params["vae"])
        self.ema = self._update(self.ema, params["vae"], jnp.asarray(step, jnp.float32))
        if step % self.every == 0 or step == self.total:
            self.ckpt.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(self.ema),
                meta=ocp.args.JsonSave({"step": step, "decay": self.decay})), force=True)

    def close(self) -> None:
        self.ckpt.wait()
        self.ckpt.close()


def vae_stage(cfg: ml_collections.ConfigDict, make_dataset: Callable[[], tf.data.Dataset],
              ema: VAEEma | None = None) -> Stage:
    """Stage 1: params {"vae": CNN VAE[, "disc": PatchGAN]}; loss L2 + beta KL (+ extras)."""
    vae = build_vae(cfg)
    vae_train = vae.clone(clip_output=False)  # keep gradients outside [-1, 1]
    beta = float(cfg.vae.beta)
    w_perc = float(cfg.vae.perceptual.weight)
    w_adv = float(cfg.vae.adversarial.weight)
    vgg = None
    if w_perc > 0:
        try:
            vgg = extra_losses.load_vgg16_weights(str(cfg.vae.perceptual.weights))
        except extra_losses.PerceptualWeightsError as e:
            raise UserError(str(e)) from None
    disc = (extra_losses.PatchDiscriminator(int(cfg.vae.adversarial.filters),
                                            int(cfg.vae.adversarial.num_layers))
            if w_adv > 0 else None)
    size = tuple(vae.input_size)

    def init(key):
        k_vae, k_disc = jax.random.split(key)
        x = jnp.zeros((1, *size, 3), jnp.float32)
        params = {"vae": vae.init(k_vae, x)["params"]}
        if disc is not None:
            params["disc"] = disc.init(k_disc, x)["params"]
        return params

    def loss_fn(params, batch, key):
        x = batch["image"]
        recon, aux = vae_train.apply({"params": params["vae"]}, x, train=True, rng=key)
        extras = {}
        if vgg is not None:
            extras["perceptual"] = w_perc * jnp.mean(
                extra_losses.perceptual_distance(vgg, recon, x))
        if disc is not None:
            # Generator step: the discriminator's params are constants here ...
            d_fake_g = disc.apply({"params": jax.lax.stop_gradient(params["disc"])}, recon)
            extras["generator"] = w_adv * extra_losses.hinge_g_loss(d_fake_g)
        loss, metrics = vae_losses.vae_loss(recon, x, aux["mu"], aux["logvar"], beta=beta,
                                            extra_losses=extras)
        if disc is not None:
            # ... discriminator step: the reconstructions are constants here.
            d_real = disc.apply({"params": params["disc"]}, x)
            d_fake = disc.apply({"params": params["disc"]}, jax.lax.stop_gradient(recon))
            d_loss = extra_losses.hinge_d_loss(d_real, d_fake)
            loss = loss + d_loss
            metrics.update(disc=d_loss, d_real=jnp.mean(d_real), d_fake=jnp.mean(d_fake))
        metrics["mse"] = jnp.mean(jnp.square(jnp.clip(recon, -1, 1) - x))
        return loss, metrics

    return Stage(init, loss_fn, train_batch_fn(cfg, cfg.vae.train, make_dataset),
                 after_step=ema)


def _restore_any(run_dir: str, stage: str) -> tuple[Any, int]:
    try:
        return ckpt_lib.load_params(run_dir, stage)
    except ckpt_lib.CheckpointError as e:
        raise UserError(str(e)) from None


def _check_tree(params: Any, target: Any, what: str) -> Any:
    flat_p = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
    flat_t = {jax.tree_util.keystr(k): tuple(v.shape)
              for k, v in jax.tree_util.tree_leaves_with_path(target)}
    if flat_p != flat_t:
        missing = sorted(set(flat_t) - set(flat_p))[:5]
        extra = sorted(set(flat_p) - set(flat_t))[:5]
        shapes = [f"{k}: {flat_p[k]} vs {flat_t[k]}" for k in sorted(set(flat_p) & set(flat_t))
                  if flat_p[k] != flat_t[k]][:5]
        raise UserError(f"{what} does not match the config's model (missing {missing}, "
                        f"unexpected {extra}, shapes {shapes})")
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x), params)


def load_vae_params(run_dir: str, cfg: ml_collections.ConfigDict) -> tuple[Any, int, bool]:
    """(VAE params, step, is_ema): the EMA when enabled and saved, else the trained weights.

    Accepts this task's stage-1 tree ({"vae", "disc"}) and a converted published
    checkpoint (the bare CNN VAE tree, ``compat.big_vision``).
    """
    target = vae_target(cfg)
    if float(cfg.vae.ema_decay) > 0 and os.path.isdir(ckpt_lib.stage_dir(run_dir, EMA_STAGE)):
        ema_ckpt = ckpt_lib.StageCheckpoints(run_dir, EMA_STAGE, create=False)
        has = ema_ckpt.latest_step() is not None
        ema_ckpt.close()
        if has:
            params, step = _restore_any(run_dir, EMA_STAGE)
            return _check_tree(params, target, f"{run_dir} VAE EMA (step {step})"), step, True
    params, step = _restore_any(run_dir, "vae")
    if isinstance(params, dict) and "vae" in params and "cnn_encoder" not in params:
        params = params["vae"]
    return _check_tree(params, target, f"{run_dir} VAE (step {step})"), step, False


# ================================================================================= stage 2
def givt_stage(cfg: ml_collections.ConfigDict, make_dataset: Callable[[], tf.data.Dataset],
               vae_params: Any) -> Stage:
    """Stage 2: GIVT NLL of posterior samples of the frozen VAE's latents, given the label."""
    from uvim_givt.training.objectives import givt_nll_loss
    vae, model = build_vae(cfg), build_givt(cfg)
    sample_posterior = cfg.givt.posterior == "sample"

    def loss_fn(params, batch, key, frozen):
        k_z, k_loss = jax.random.split(key)
        mu, logvar = vae.apply({"params": frozen}, batch["image"], method=CNNVAE.encode)
        z = vae_losses.reparametrize(mu, logvar, k_z) if sample_posterior else mu
        return givt_nll_loss(model, params, jax.lax.stop_gradient(z), k_loss,
                             labels=batch["label"], train=True)

    return Stage(givt_init_fn(model), loss_fn, train_batch_fn(cfg, cfg.givt.train, make_dataset),
                 frozen=vae_params)


def load_givt_params(run_dir: str, cfg: ml_collections.ConfigDict) -> tuple[Any, int]:
    model = build_givt(cfg)
    target = jax.eval_shape(givt_init_fn(model), jax.random.PRNGKey(0))
    params, step = _restore_any(run_dir, "givt")
    return _check_tree(params, target, f"{run_dir} GIVT (step {step})"), step


# ================================================================================ sampling
def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 0..255."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class Generator:
    """Samples latents with GIVT (causal or MaskGIT, optional DB-CFG) and decodes them."""

    cfg: ml_collections.ConfigDict
    vae_params: Any
    givt_params: Any = None

    def __post_init__(self):
        self.vae = build_vae(self.cfg)
        self.model = build_givt(self.cfg)
        self.batch_size = int(self.cfg.eval.batch_size)
        vae = self.vae
        self._decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=CNNVAE.decode))
        self._encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=CNNVAE.encode))

    def _chunks(self, n: int) -> Iterator[tuple[int, int, int]]:
        """(chunk index, start, stop) over n items, at most batch_size per chunk."""
        bs = min(self.batch_size, n)
        for i, start in enumerate(range(0, n, bs)):
            yield i, start, min(start + bs, n)

    def sample_latents(self, labels: Sequence[int] | np.ndarray, seed: int = 0,
                       temperature: float | None = None, cfg_weight: float | None = None,
                       num_steps: int | None = None,
                       choice_temperature: float | None = None) -> np.ndarray:
        """Latent sequences [N, seq_len, out_dim] for the requested class labels.

        ``None`` settings come from ``givt.sampling``. ``cfg_weight`` 0 samples the
        conditional model exactly (the unguided sampler, not guidance with w=0).
        """
        if self.givt_params is None:
            raise UserError("this run has no trained GIVT (train stage 2 first)")
        s = self.cfg.givt.sampling
        t = float(s.temperature if temperature is None else temperature)
        w = float(s.cfg_weight if cfg_weight is None else cfg_weight)
        if w != 0 and "nolabel" not in self.model.special_labels:
            raise UserError("CFG needs a model trained with label dropout "
                            "(givt.model.drop_labels_probability > 0); use --cfg 0")
        labels = np.asarray(labels, np.int32).reshape(-1)
        n_cls = int(self.model.num_labels)
        if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
            raise UserError(f"class labels must be in 0..{n_cls - 1}; got {sorted(set(labels))}")
        overrides = {"num_steps": num_steps, "choice_temperature": choice_temperature}
        settings = {**s, **{k: v for k, v in overrides.items() if v is not None}}
        out = []
        for i, start, stop in self._chunks(len(labels)):
            chunk = labels[start:stop]
            bs = min(self.batch_size, len(labels))
            padded = np.concatenate([chunk, np.zeros(bs - len(chunk), np.int32)])
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            common = dict(labels=jnp.asarray(padded), temperature=t,
                          temperature_probs=float(s.temperature_probs),
                          cfg_weight=w if w != 0 else None)
            z = sample_by_style(self.model, self.givt_params, key, settings, **common)
            out.append(np.asarray(z)[:len(chunk)])
        return np.concatenate(out) if out else np.zeros(
            (0, self.model.seq_len, self.model.out_dim), np.float32)

    def random_latents(self, n: int, seed: int = 0) -> np.ndarray:
        """N(0, I) latents [n, seq_len, codeword_dim] (the prior: a baseline)."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, self.vae.code_len, self.vae.codeword_dim)).astype(
            np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents [N, L, D] -> uint8 images [N, H, W, 3]."""
        out = []
        for _, start, stop in self._chunks(len(z)):
            chunk = z[start:stop]
            bs = min(self.batch_size, len(z))
            pad = np.zeros((bs - len(chunk), *chunk.shape[1:]), np.float32)
            images = self._decode(self.vae_params, jnp.asarray(np.concatenate([chunk, pad])))
            out.append(to_uint8(images)[:len(chunk)])
        return np.concatenate(out)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] in [-1, 1] -> decoded posterior means, float in [-1, 1]."""
        bs = self.batch_size
        n = len(images)
        pad = np.zeros((bs - n % bs if n % bs else 0, *images.shape[1:]), np.float32)
        x = np.concatenate([images, pad]) if len(pad) else images
        out = []
        for start in range(0, len(x), bs):
            mu, _ = self._encode(self.vae_params, jnp.asarray(x[start:start + bs]))
            out.append(np.asarray(self._decode(self.vae_params, mu)))
        return np.concatenate(out)[:n]


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [rows * cols, H, W, 3] (row-major) -> one picture [rows * H, cols * W, 3]."""
    n, h, w, c = images.shape
    cols = n // rows
    return images[:rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)


def write_png(path: str, rgb: np.ndarray) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"could not write {path}")
    return path


# ============================================================================== evaluation
def make_extractor(cfg: ml_collections.ConfigDict) -> Any:
    spec = str(cfg.eval.extractor)
    if spec == "inception:":
        raise UserError("FID needs InceptionV3 weights here: --set eval.extractor=inception:PATH "
                        f"(Keras' {gen_eval.INCEPTION_WEIGHTS_FILE}; nothing is downloaded)")
    try:
        return gen_eval.get_extractor(spec)
    except gen_eval.GenerationEvalError as e:
        raise UserError(f"eval.extractor: {e}") from None


def reference_features(cfg: ml_collections.ConfigDict, extractor: Any, source: str,
                       split: str, max_examples: int | None = None
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Extractor features of the real images of a split (streamed) and the float images
    (kept only up to ``eval.batch_size`` * 4 of them, for reconstruction metrics)."""
    feats, kept = [], []
    budget = 4 * int(cfg.eval.batch_size)
    for images, _ in eval_images(cfg, source, split, int(cfg.eval.batch_size), max_examples):
        feats.append(extractor.features(to_uint8(images)))
        if budget > 0:
            kept.append(images[:budget])
            budget -= len(kept[-1])
    if not feats:
        raise UserError(f"split {split!r} of {source} has no examples")
    return np.concatenate(feats), kept


def score_images(extractor: Any, images: np.ndarray, ref_feats: np.ndarray,
                 labels: np.ndarray | None, num_classes: int) -> dict[str, float]:
    """FID vs the reference, IS and (labels given, the extractor's classes being the
    dataset's) the class-consistency accuracy."""
    feats, probs = gen_eval.features_and_probs(extractor, images)
    out = {"FID": gen_eval.fid_from_features(feats, ref_feats)}
    out["IS"] = gen_eval.inception_score(probs, splits=min(10, len(probs)))[0]
    if labels is not None and probs.shape[1] == num_classes:
        out["class_accuracy"] = gen_eval.class_consistency_accuracy(probs.argmax(1), labels)
    return out


def eval_classes(cfg: ml_collections.ConfigDict) -> np.ndarray:
    n = int(cfg.data.num_classes)
    cap = int(cfg.eval.max_classes)
    return np.arange(min(n, cap) if cap else n)


def _record(run_dir: str, cfg: ml_collections.ConfigDict, stage: str, step: int, split: str,
            source: str, metrics: dict[str, float], num: int, extra: dict) -> str:
    info_path = os.path.join(run_dir, "run_info.json")
    info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
    return write_eval_record(run_dir, {
        "task": TASK.name, "stage": stage, "split": split, "data": source, "step": step,
        "metrics": metrics, "num_examples": num,
        "config_hash": config_hash(config_lib.to_dict(cfg)),
        "model": {"size": cfg.size, "style": cfg.givt.model.style,
                  "num_params": info.get("num_params", {}).get(stage)},
        "extra": extra,
    })


def evaluate_vae(cfg: ml_collections.ConfigDict, run_dir: str, step: int, vae_params: Any,
                 source: str, split: str, max_examples: int | None = None,
                 is_ema: bool = False) -> dict[str, float]:
    """Stage 1: recon_mse (posterior mean, [-1, 1] units), FID_recon, FID_random_latents."""
    gen = Generator(cfg, vae_params)
    extractor = make_extractor(cfg)
    bs = int(cfg.eval.batch_size)
    ref_feats, recon_feats, sq, count = [], [], 0.0, 0
    for images, _ in eval_images(cfg, source, split, bs, max_examples):
        recon = gen.reconstruct(images)
        sq += float(np.sum(np.mean(np.square(recon - images), axis=(1, 2, 3))))
        count += len(images)
        ref_feats.append(extractor.features(to_uint8(images)))
        recon_feats.append(extractor.features(to_uint8(recon)))
        if count == len(images):
            write_png(os.path.join(run_dir, "samples", "vae_reconstructions.png"),
                      np.concatenate([image_grid(to_uint8(images[:16]), 1),
                                      image_grid(to_uint8(recon[:16]), 1)], axis=0))
    if not count:
        raise UserError(f"split {split!r} of {source} has no examples")
    ref = np.concatenate(ref_feats)
    n_random = max(len(ref), 2)
    random_images = gen.decode(gen.random_latents(n_random, seed=1))
    write_png(os.path.join(run_dir, "samples", "vae_random_latents.png"),
              image_grid(random_images[:32], 2))
    metrics = {"recon_mse": sq / count,
               "FID_recon": gen_eval.fid_from_features(np.concatenate(recon_feats), ref),
               "FID_random_latents": gen_eval.fid_from_features(
                   extractor.features(random_images), ref)}
    _record(run_dir, cfg, "vae", step, split, source, metrics, count,
            {"ema": is_ema, "extractor": str(cfg.eval.extractor)})
    return metrics


def sample_and_score(gen: Generator, extractor: Any, ref_feats: np.ndarray,
                     labels: np.ndarray, seed: int, temperature: float, cfg_weight: float,
                     **maskgit: Any) -> tuple[dict[str, float], np.ndarray]:
    z = gen.sample_latents(labels, seed=seed, temperature=temperature, cfg_weight=cfg_weight,
                           **maskgit)
    images = gen.decode(z)
    return score_images(extractor, images, ref_feats, labels, int(gen.cfg.data.num_classes)), \
        images


def per_class_grids(images: np.ndarray, labels: np.ndarray, classes: np.ndarray, per_class: int
                    ) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
    """({class: a row of its first samples}, overview: one such row per class, up to 32)."""
    rows = {}
    for c in classes:
        mine = images[labels == c][:per_class]
        if len(mine):
            rows[int(c)] = image_grid(mine, 1)
    full = [r for r in rows.values() if r.shape[1] == per_class * images.shape[2]]
    return (np.concatenate(full[:32], axis=0) if full else None), rows


def evaluate_givt(cfg: ml_collections.ConfigDict, run_dir: str, step: int, vae_params: Any,
                  givt_params: Any, source: str, split: str, max_examples: int | None = None,
                  seed: int = 0) -> dict[str, float]:
    """Stage 2: samples per class with/without CFG and from random latents, scored vs
    the held-out split; grids in RUN_DIR/samples/; an eval record."""
    gen = Generator(cfg, vae_params, givt_params)
    extractor = make_extractor(cfg)
    s = cfg.givt.sampling
    t, w = float(s.temperature), float(s.cfg_weight)
    classes = eval_classes(cfg)
    labels = np.repeat(classes, int(cfg.eval.samples_per_class)).astype(np.int32)
    max_ref = max_examples or int(cfg.eval.max_reference) or None
    ref, _ = reference_features(cfg, extractor, source, split, max_ref)
    t0 = time.time()
    guided, images = sample_and_score(gen, extractor, ref, labels, seed, t, w)
    sample_time = time.time() - t0
    metrics = dict(guided)
    sample_dir = os.path.join(run_dir, "samples")
    grid, rows = per_class_grids(images, labels, classes, int(cfg.eval.grid_per_class))
    pngs = []
    for c, row in rows.items():
        if row is not None:
            pngs.append(write_png(os.path.join(sample_dir, f"class_{c:04d}.png"), row))
    if grid is not None:
        pngs.append(write_png(os.path.join(sample_dir, f"grid_step{step}_cfg{w:g}.png"), grid))
    if w != 0:
        plain, images_u = sample_and_score(gen, extractor, ref, labels, seed, t, 0.0)
        metrics.update({f"{k}_no_cfg": v for k, v in plain.items()})
        grid_u, _ = per_class_grids(images_u, labels, classes, int(cfg.eval.grid_per_class))
        if grid_u is not None:
            pngs.append(write_png(os.path.join(sample_dir, f"grid_step{step}_cfg0.png"), grid_u))
    else:
        metrics.update({f"{k}_no_cfg": v for k, v in guided.items()})
    random_images = gen.decode(gen.random_latents(len(labels), seed=seed + 1))
    metrics["FID_random_latents"] = gen_eval.fid_from_features(
        extractor.features(random_images), ref)
    k = min(len(random_images), 100)
    pngs.append(write_png(os.path.join(sample_dir, "random_latents.png"),
                          image_grid(random_images[:k], max(1, k // 10))))
    _record(run_dir, cfg, "givt", step, split, source, metrics, len(labels), {
        "temperature": t, "cfg_weight": w, "style": cfg.givt.model.style,
        "samples_per_class": int(cfg.eval.samples_per_class), "num_classes": len(classes),
        "num_reference": len(ref), "extractor": str(cfg.eval.extractor),
        "sampling_seconds": round(sample_time, 1),
        "pngs": [os.path.relpath(p, run_dir) for p in pngs],
        **({"num_steps": int(s.num_steps), "choice_temperature": float(s.choice_temperature)}
           if cfg.givt.model.style == "masked" else {})})
    return metrics


# ================================================================================ commands
def default_workdir(cfg: ml_collections.ConfigDict) -> str:
    d = base.default_workdir(cfg)
    return d + "_masked" if cfg.givt.model.style == "masked" else d


def _copy_vae(src_run: str, run_dir: str) -> None:
    """Stage 2 trained on another run's VAE: copy its checkpoints in (self-contained run)."""
    import shutil
    for stage in ("vae", EMA_STAGE):
        src, dst = ckpt_lib.stage_dir(src_run, stage), ckpt_lib.stage_dir(run_dir, stage)
        if os.path.isdir(src) and (not os.path.isdir(dst) or not os.listdir(dst)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)


def _check_vae_run(src_run: str, cfg: ml_collections.ConfigDict) -> None:
    try:
        other = config_lib.load_saved_config(src_run)
    except config_lib.ConfigError as e:
        raise UserError(f"--vae-ckpt: {e}") from None
    if other.get("task") != TASK.name:
        raise UserError(f"--vae-ckpt {src_run} is a {other.get('task')!r} run, not imagenet")
    mine, theirs = _kwargs(cfg.vae.model), _kwargs(other.vae.model)
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise UserError(f"--vae-ckpt {src_run}: its vae.model differs from this config's in "
                        + ", ".join(f"{k} ({theirs.get(k)!r} vs {mine.get(k)!r})" for k in diff))


def run_train(task: ImageNetTask, args: argparse.Namespace) -> str:
    cfg = config_lib.load_config(args.config or "configs/imagenet.py", args.set or [])
    if args.data:
        cfg.data.source = args.data
    pipeline.parse_source(cfg.data.source)
    check_config(cfg)
    source = cfg.data.source
    n_data = task.num_classes(cfg, source)
    if n_data != int(cfg.data.num_classes):
        raise UserError(f"{source} has {n_data} classes but the config has data.num_classes="
                        f"{cfg.data.num_classes}: pass --set data.num_classes={n_data} --set "
                        f"givt.model.num_labels={n_data}")
    run_dir = args.workdir or default_workdir(cfg)
    base.check_run_config(run_dir, cfg)
    config_lib.save_config(cfg, run_dir)
    print(f"run directory: {run_dir}", flush=True)
    meta = {"config_hash": config_hash(config_lib.to_dict(cfg))}
    t_start = time.time()

    def train_ds():
        return task.load(cfg, source, cfg.data.train_split)

    results: dict[str, dict[str, float]] = {}
    if args.stage in ("vae", "all") and not args.vae_ckpt:
        decay = float(cfg.vae.ema_decay)
        ema = VAEEma(run_dir, decay, cfg.vae.train) if decay > 0 else None
        try:
            res = train(cfg.vae.train, run_dir, "vae", vae_stage(cfg, train_ds, ema), meta=meta)
        finally:
            if ema is not None:
                ema.close()
        base.update_run_info(run_dir, num_params={"vae": count_params(res.params["vae"])},
                             train_time_s={"vae": round(res.train_time_s, 1)})
        vae_params, vae_step, is_ema = load_vae_params(run_dir, cfg)
        if args.eval:
            results["vae"] = evaluate_vae(cfg, run_dir, vae_step, vae_params, source,
                                          cfg.data.val_split, args.max_eval, is_ema)
    if args.stage in ("givt", "all"):
        if args.vae_ckpt:
            _check_vae_run(args.vae_ckpt, cfg)
            _copy_vae(args.vae_ckpt, run_dir)
        vae_params, _, _ = load_vae_params(run_dir, cfg)
        res = train(cfg.givt.train, run_dir, "givt", givt_stage(cfg, train_ds, vae_params),
                    meta=meta)
        base.update_run_info(run_dir, num_params={"givt": res.num_params},
                             train_time_s={"givt": round(res.train_time_s, 1)})
        if args.eval:
            results["givt"] = evaluate_givt(cfg, run_dir, res.step, vae_params, res.params,
                                            source, cfg.data.val_split, args.max_eval)
    print(f"\ndone in {time.time() - t_start:.0f} s. run directory: {run_dir}")
    for stage, metrics in results.items():
        print(f"  {stage}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return run_dir


def load_run(run_dir: str, need_givt: bool = True
             ) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
    """(cfg, vae params, givt params or None, step) of a run directory."""
    cfg = base.load_run_config(run_dir, TASK.name)
    vae, step, _ = load_vae_params(run_dir, cfg)
    if not need_givt:
        return cfg, vae, None, step
    givt, step = load_givt_params(run_dir, cfg)
    return cfg, vae, givt, step


def run_eval(task: ImageNetTask, args: argparse.Namespace) -> dict[str, float]:
    cfg, vae, givt, step = load_run(args.ckpt, need_givt=not args.oracle)
    source = args.data or cfg.data.source
    if args.oracle:
        _, step, is_ema = load_vae_params(args.ckpt, cfg)
        metrics = evaluate_vae(cfg, args.ckpt, step, vae, source, args.split, args.max_eval,
                               is_ema)
    else:
        metrics = evaluate_givt(cfg, args.ckpt, step, vae, givt, source, args.split,
                                args.max_eval)
    print(json.dumps(metrics, indent=1))
    return metrics


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


def run_sample(task: ImageNetTask, args: argparse.Namespace) -> str:
    cfg, vae, givt, _ = load_run(args.ckpt)
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes {args.classes!r}: expected comma-separated ints") from None
    if not classes or args.num < 1:
        raise UserError("give at least one class (--classes) and --num >= 1")
    gen = Generator(cfg, vae, givt)
    labels = np.repeat(np.array(classes, np.int32), args.num)
    z = gen.sample_latents(labels, seed=args.seed, temperature=args.temp, cfg_weight=args.cfg,
                           **_maskgit_args(cfg, args))
    images = gen.decode(z)
    out = args.out if args.out.lower().endswith(".png") else args.out + ".png"
    write_png(out, image_grid(images, len(classes)))
    npy = os.path.splitext(out)[0] + ".npy"
    np.save(npy, z.reshape(len(classes), args.num, *z.shape[1:]))
    print(f"wrote {out} ({len(classes)} rows x {args.num}) and {npy} (latents "
          f"{[len(classes), args.num, *z.shape[1:]]})")
    return out


def run_sweep(task: ImageNetTask, args: argparse.Namespace) -> dict[str, Any]:
    cfg, vae, givt, step = load_run(args.ckpt)
    weights, temps = _floats(args.cfg, "--cfg"), _floats(args.temps, "--temps")
    if not weights or not temps:
        raise UserError("give at least one --cfg weight and one --temps value")
    if args.num_per_class:
        cfg.eval.samples_per_class = args.num_per_class
    gen = Generator(cfg, vae, givt)
    extractor = make_extractor(cfg)
    source = args.data or cfg.data.source
    ref, _ = reference_features(cfg, extractor, source, args.split,
                                args.max_eval or int(cfg.eval.max_reference) or None)
    classes = eval_classes(cfg)
    labels = np.repeat(classes, int(cfg.eval.samples_per_class)).astype(np.int32)
    rows = []
    print(f"{'temp':>6s} {'cfg w':>6s} {'FID':>8s} {'class acc':>9s}")
    for t in temps:
        for w in weights:
            m, _ = sample_and_score(gen, extractor, ref, labels, args.seed, t, w,
                                    **_maskgit_args(cfg, args))
            rows.append({"temperature": t, "cfg_weight": w, **m})
            print(f"{t:6.3g} {w:6.3g} {m['FID']:8.3f} {m.get('class_accuracy', float('nan')):9.3f}",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    result = {"ckpt": os.path.abspath(args.ckpt), "step": step, "split": args.split,
              "data": source, "style": cfg.givt.model.style,
              "samples_per_class": int(cfg.eval.samples_per_class),
              "num_classes": len(classes), "num_reference": len(ref),
              "extractor": str(cfg.eval.extractor), "results": rows}
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


# ===================================================================================== CLI
_TF_DATA_ERROR = re.compile(r"DataError: (.*?)(?:\n|$)")


def _user_errors(fn: Callable[[ImageNetTask, argparse.Namespace], Any]):
    """Errors a user can cause, raised deep inside tf.data/orbax/evals -> one clear message."""
    @functools.wraps(fn)
    def wrapped(task, args):
        try:
            return fn(task, args)
        except tf.errors.OpError as e:
            m = _TF_DATA_ERROR.search(str(e))
            if m:
                raise pipeline.DataError(m.group(1)) from None
            raise
        except (gen_eval.GenerationEvalError, ckpt_lib.CheckpointError) as e:
            raise UserError(str(e)) from None
    return wrapped


def _extra_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="sample a PNG grid (one row per class) and its latents")
    s.add_argument("--ckpt", required=True, help="run directory")
    s.add_argument("--classes", required=True, help="comma-separated class labels, e.g. 3,7")
    s.add_argument("--num", type=int, default=8, help="samples per class")
    s.add_argument("--temp", type=float, default=None, help="temperature (default: config)")
    s.add_argument("--cfg", type=float, default=None, help="DB-CFG weight (default: config)")
    s.add_argument("--steps", type=int, default=None, help="MaskGIT decoding steps")
    s.add_argument("--choice-temp", type=float, default=None, help="MaskGIT choice temperature")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="PNG path (latents go to the same stem .npy)")
    w = sub.add_parser("sweep", help="FID and class accuracy over CFG weights x temperatures")
    w.add_argument("--ckpt", required=True, help="run directory")
    w.add_argument("--cfg", default="0,0.2,0.4,1", help="comma-separated CFG weights")
    w.add_argument("--temps", default="0.8,0.95,1.0", help="comma-separated temperatures")
    w.add_argument("--steps", type=int, default=None, help="MaskGIT decoding steps")
    w.add_argument("--choice-temp", type=float, default=None, help="MaskGIT choice temperature")
    w.add_argument("--num-per-class", type=int, default=None, help="default: config")
    w.add_argument("--data", default=None)
    w.add_argument("--split", default="validation")
    w.add_argument("--max-eval", type=int, default=None, help="cap on reference images")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True, help="directory for sweep.json and sweep.png")


COMMANDS = {name: _user_errors(fn) for name, fn in
            (("train", run_train), ("eval", run_eval), ("sample", run_sample),
             ("sweep", run_sweep))}


def main(argv: list[str] | None = None) -> int:
    return base.cli(TASK, argv, commands=COMMANDS, extra_parsers=_extra_parsers)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TASK", "Generator", "ImageNetTask", "evaluate_givt", "evaluate_vae", "givt_stage",
           "load_run", "main", "vae_stage"]
