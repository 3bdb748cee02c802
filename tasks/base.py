"""The Task interface and the two-stage UViM runner shared by the dense tasks.

A :class:`DenseTask` owns what is specific to a task (its label channels, how to
read its data, pre/post-processing, drawing, evaluation); this module owns the
rest: building the stage-1 ViT VAE and the stage-2 encoder-decoder GIVT from the
config, their losses, training both with the one generic trainer, prediction
(sampling codes and decoding them) and the command line. Nothing here branches
on the task.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from evals.records import config_hash, write_eval_record
from uvim_givt import config as config_lib
from uvim_givt.compat import big_vision
from uvim_givt.data import pipeline
from uvim_givt.models import builders, vae_losses
from uvim_givt.models.givt import GIVT
from uvim_givt.models.vit_vae import ViTVAE
from uvim_givt.sampling.by_style import sample_by_style
from uvim_givt.training import checkpoint as ckpt_lib
from uvim_givt.training.metrics import progress_interval
from uvim_givt.training.objectives import givt_nll_loss
from uvim_givt.training.trainer import Stage, TrainingDiverged, count_params, train


class UserError(Exception):
    """An error the user can fix (bad flag, file, checkpoint); printed without traceback."""


# --------------------------------------------------------------------------- the interface
class DenseTask(abc.ABC):
    """What a dense task plugs in. Examples flow as dicts of tensors:

    raw example (``load``) -> ``preprocess`` -> ``{"image": float32 [S, S, 3] in [-1, 1],
    "labels": int32 [S, S, C]}`` (+ whatever ``evaluate`` needs, e.g. ground truth at
    full resolution) -> model -> per-channel logits -> ``postprocess`` -> prediction.
    """

    name: str = ""
    #: channels whose class 0 means "unknown" (ignored by the VAE loss)
    ignore_zero: tuple[str, ...] = ()
    #: whether the labels of a mirrored image are the mirrored labels (depth: yes;
    #: panoptic: no, canonical instance ids depend on position). Test-time flip needs it.
    mirror_equivariant: bool = False

    @abc.abstractmethod
    def label_channels(self, cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
        """name -> (index in the label map, number of classes)."""

    @abc.abstractmethod
    def load(self, cfg: ml_collections.ConfigDict, source: str, split: str) -> tf.data.Dataset:
        """Raw examples of a split, in a fixed order."""

    @abc.abstractmethod
    def preprocess(self, cfg: ml_collections.ConfigDict, example: dict, train: bool,
                   seed: tf.Tensor | None = None) -> dict:
        """Raw example -> model inputs (tf ops); random augmentation only when ``train``."""

    @abc.abstractmethod
    def postprocess(self, cfg: ml_collections.ConfigDict, logits: dict[str, np.ndarray],
                    example: dict | None = None) -> Any:
        """Per-channel logits [H, W, K] of ONE example -> a prediction at the resolution of
        the raw ``example`` (numpy, as ``load`` yields it) when given."""

    @abc.abstractmethod
    def new_evaluator(self, cfg: ml_collections.ConfigDict) -> Evaluator:
        """A fresh metric accumulator."""

    @abc.abstractmethod
    def draw(self, cfg: ml_collections.ConfigDict, example: dict, prediction: Any) -> np.ndarray:
        """An RGB uint8 picture (image | ground truth if any | prediction) of a raw example."""

    def default_source(self, cfg: ml_collections.ConfigDict) -> str:
        return cfg.data.source


class Evaluator(abc.ABC):
    @abc.abstractmethod
    def add(self, example: dict, prediction: Any) -> None: ...

    @abc.abstractmethod
    def result(self) -> dict[str, float]:
        """Flat metric name -> value."""


# ------------------------------------------------------------------------------ the models
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
        raise UserError(f"data.crop_area_min={area_min}: must be in (0, 1]")
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


def build_vae(task: DenseTask, cfg: ml_collections.ConfigDict) -> ViTVAE:
    return builders.build_model("vae", cfg, task.label_channels(cfg))


def build_givt(cfg: ml_collections.ConfigDict) -> GIVT:
    return builders.build_model("givt", cfg)


def periodic_eval(task: DenseTask, cfg, run_dir: str, stage: str, vae_params: Any = None):
    """The in-training evaluation: a capped validation subset, one record per call."""
    cap = int(cfg.data.get("periodic_eval_examples", 50))

    def evaluate(params, step):
        vae, givt = (params, None) if stage == "vae" else (vae_params, params)
        return _evaluate_and_record(task, cfg, run_dir, stage, step, vae, givt,
                                    max_examples=cap, tag="periodic", overlays=False)
    return evaluate


def vae_stage(task: DenseTask, cfg, train_ds: Callable[[], tf.data.Dataset],
              run_dir: str | None = None) -> Stage:
    vae = build_vae(task, cfg)
    size = cfg.data.image_size
    n_ch = len(task.label_channels(cfg))
    channels = task.label_channels(cfg)

    def init(key):
        return vae.init(key, jnp.zeros((1, size, size, n_ch), jnp.int32))["params"]

    def loss_fn(params, batch, key):
        k_z, k_drop = jax.random.split(key)
        labels = batch["labels"]
        logits, aux = vae.apply({"params": params}, labels, train=True, rng=k_z,
                                rngs={"dropout": k_drop})
        return vae_losses.label_vae_loss(
            logits, labels, aux["mu"], aux["logvar"], label_channels=channels,
            beta=cfg.vae.beta, ignore_zero=task.ignore_zero)

    return Stage(init, loss_fn, _batches(task, cfg, cfg.vae.train, train_ds),
                 evaluate=periodic_eval(task, cfg, run_dir, "vae") if run_dir else None)


def givt_stage(task: DenseTask, cfg, train_ds, vae_params, run_dir: str | None = None) -> Stage:
    vae, model = build_vae(task, cfg), build_givt(cfg)
    sample_posterior = cfg.givt.posterior == "sample"
    input_noise = float(cfg.givt.get("input_noise", 0.0))
    scheduled_sampling = float(cfg.givt.get("scheduled_sampling", 0.0))

    def init(key):
        return builders.init_givt(model, key)

    def loss_fn(params, batch, key, frozen):
        k_z, k_loss = jax.random.split(key)
        mu, logvar = vae.apply({"params": frozen}, batch["labels"], method=ViTVAE.encode)
        z = vae_losses.reparametrize(mu, logvar, k_z) if sample_posterior else mu
        return givt_nll_loss(model, params, jax.lax.stop_gradient(z), k_loss,
                             image=batch["image"], train=True, input_noise=input_noise,
                             scheduled_sampling=scheduled_sampling)

    warm_start = None
    if cfg.givt.get("init_encoder"):
        path = str(cfg.givt.init_encoder)

        def warm_start(params):
            try:
                params = big_vision.load_vit_encoder(path, params, model.encoder_grid)
            except (big_vision.CheckpointFileError, big_vision.CheckpointMismatch,
                    ValueError, OSError) as e:
                raise UserError(f"givt.init_encoder={path!r}: {e}") from None
            print(f"stage-2 image encoder initialised from {path}", flush=True)
            return params

    return Stage(init, loss_fn, _batches(task, cfg, cfg.givt.train, train_ds),
                 frozen=vae_params, warm_start=warm_start,
                 evaluate=periodic_eval(task, cfg, run_dir, "givt", vae_params) if run_dir
                 else None)


def _batches(task, cfg, train_cfg, train_ds):
    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        def prep(ex, seed):
            out = task.preprocess(cfg, ex, train=True, seed=seed)
            return {"image": out["image"], "labels": out["labels"]}
        return pipeline.train_batches(train_ds, prep, int(train_cfg.batch_size),
                                      int(train_cfg.seed) + int(cfg.seed), start,
                                      shuffle_buffer=int(cfg.data.shuffle_buffer))
    return batches


# ------------------------------------------------------------------------------ prediction
@dataclasses.dataclass
class Predictor:
    """Turns images (or, for the oracle, ground-truth labels) into per-channel logits."""

    task: DenseTask
    cfg: ml_collections.ConfigDict
    vae_params: Any
    givt_params: Any = None

    def __post_init__(self):
        self.vae = build_vae(self.task, self.cfg)
        self._decode = jax.jit(lambda p, z: self.vae.apply({"params": p}, z,
                                                           method=ViTVAE.decode))
        self._encode = jax.jit(lambda p, y: self.vae.apply({"params": p}, y,
                                                           method=ViTVAE.encode)[0])
        if self.givt_params is not None:
            self.givt = build_givt(self.cfg)

    def oracle(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Stage-1 reconstruction: decode the posterior mean of the ground truth."""
        z = self._encode(self.vae_params, labels)
        return jax.tree_util.tree_map(np.asarray, self._decode(self.vae_params, z))

    def sample_codes(self, images: np.ndarray, seed: int = 0, draw: int = 0) -> np.ndarray:
        """Stage-1 codes for `images`: causal (beam search) or MaskGIT, by the model's style.

        ``draw`` > 0 picks an independent sample for the same ``seed`` (draw 0 uses
        ``PRNGKey(seed)`` itself)."""
        s = self.cfg.givt.sampling
        common = dict(batch_size=images.shape[0], image=jnp.asarray(images),
                      temperature=float(s.temperature),
                      temperature_probs=float(s.temperature_probs))
        rng = jax.random.PRNGKey(seed)
        if draw:
            rng = jax.random.fold_in(rng, draw)
        return sample_by_style(self.givt, self.givt_params, rng, s, labels=None, **common)

    def predict(self, images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """Per-channel logits for `images`.

        With ``givt.sampling.num_samples`` = n > 1, n code samples are decoded and their
        per-pixel class distributions averaged; the result is returned as log-probabilities
        (log of the mean softmax), so argmax and expectation decoding read it as logits.
        With ``givt.sampling.test_time_flip``, the odd draws sample from the horizontally
        mirrored images and their decoded logits are mirrored back before averaging (so
        with n = 1 it changes nothing).
        """
        n, flip = sampling_options(self.task, self.cfg)
        views = [jnp.asarray(images)]  # one host-to-device copy for all draws
        if flip:
            views.append(views[0][:, :, ::-1])
        decoded = []
        for k in range(n):
            mirrored = flip and k % 2 == 1
            logits = self._decode(self.vae_params,
                                  self.sample_codes(views[int(mirrored)], seed, draw=k))
            decoded.append({name: v[:, :, ::-1] for name, v in logits.items()} if mirrored
                           else logits)
        if n == 1:
            return jax.tree_util.tree_map(np.asarray, decoded[0])
        return {name: np.asarray(_log_mean_softmax(jnp.stack([d[name] for d in decoded])))
                for name in decoded[0]}


def sampling_options(task: DenseTask, cfg) -> tuple[int, bool]:
    """(num_samples, test_time_flip) of ``cfg.givt.sampling``, checked against the task."""
    s = cfg.givt.sampling
    n = int(s.get("num_samples", 1))
    if n < 1:
        raise UserError(f"givt.sampling.num_samples={n}: must be >= 1")
    flip = bool(s.get("test_time_flip", False))
    if flip and not task.mirror_equivariant:
        raise UserError(f"givt.sampling.test_time_flip=True: the {task.name} task's "
                        "labels do not mirror with the image")
    return n, flip


@jax.jit
def _log_mean_softmax(logits: jax.Array) -> jax.Array:
    """log(mean_k softmax(logits[k])) over the leading axis, computed stably."""
    n = logits.shape[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - jnp.log(n)


def evaluate_split(task: DenseTask, cfg, predictor: Predictor, source: str, split: str,
                   oracle: bool, max_examples: int | None = None,
                   overlay_dir: str | None = None, progress: bool = True) -> dict[str, float]:
    """Runs the predictor over a split and returns the task's metrics."""
    ds = task.load(cfg, source, split)
    if max_examples:
        ds = ds.take(max_examples)
    raw = ds.as_numpy_iterator()  # full-resolution examples, for postprocess and metrics
    evaluator = task.new_evaluator(cfg)
    bs = int(cfg.data.eval_batch_size)
    n_overlays = int(cfg.data.get("num_overlays", 0)) if overlay_dir else 0
    drawn, seen = 0, 0
    tag = "oracle" if oracle else "givt"
    bar = tqdm(desc=f"eval {tag} {split}", disable=not progress, unit="img",
               mininterval=progress_interval(),
               dynamic_ncols=True)

    def prep(ex):
        out = task.preprocess(cfg, ex, train=False)
        return {"image": out["image"], "labels": out["labels"]}

    for batch in pipeline.eval_batches(ds, prep, bs):
        logits = (predictor.oracle(batch["labels"]) if oracle
                  else predictor.predict(batch["image"], seed=seen))
        for i in np.flatnonzero(batch["_valid"]):
            example = next(raw)
            pred = task.postprocess(cfg, {k: v[i] for k, v in logits.items()}, example)
            evaluator.add(example, pred)
            if drawn < n_overlays:
                os.makedirs(overlay_dir, exist_ok=True)
                _write_png(os.path.join(overlay_dir, f"{tag}_{drawn:03d}.png"),
                           task.draw(cfg, example, pred))
                drawn += 1
        seen += int(batch["_valid"].sum())
        bar.update(int(batch["_valid"].sum()))
    bar.close()
    if seen == 0:
        raise UserError(f"split {split!r} of {source} has no examples")
    return evaluator.result()


def predict_image_folder(task: DenseTask, cfg, predictor: Predictor, images: str
                         ) -> Iterator[tuple[str, dict, Any]]:
    """(file stem, raw example {"image"}, prediction) for each .jpg/.png in ``images``,
    sorted by name: the ``predict`` command of every dense task."""
    import cv2
    if not os.path.isdir(images):
        raise UserError(f"--images {images}: not a directory")
    names = sorted(f for f in os.listdir(images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not names:
        raise UserError(f"--images {images}: no .jpg/.png files")
    size, bs = int(cfg.data.image_size), int(cfg.data.eval_batch_size)
    for start in range(0, len(names), bs):
        chunk = names[start:start + bs]
        raw = []
        for n in chunk:
            im = cv2.imread(os.path.join(images, n), cv2.IMREAD_COLOR)
            if im is None:
                raise UserError(f"{os.path.join(images, n)}: unreadable or truncated")
            raw.append(im[..., ::-1])
        batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
                          for im in raw]).astype(np.float32) / 127.5 - 1.0
        logits = predictor.predict(batch, seed=start)
        for i, n in enumerate(chunk):
            ex = {"image": raw[i]}
            yield (os.path.splitext(n)[0], ex,
                   task.postprocess(cfg, {k: v[i] for k, v in logits.items()}, ex))


def _write_png(path: str, rgb: np.ndarray) -> None:
    import cv2
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")


# ------------------------------------------------------------------------------ run dirs
def default_workdir(cfg) -> str:
    kind, arg = pipeline.parse_source(cfg.data.source)
    tag = kind if kind == "embedded" else arg.replace("/", "_").replace(":", "_")
    return os.path.join("runs", f"{cfg.task}_{cfg.size}_{os.path.basename(tag.rstrip('/'))}")


def check_run_config(run_dir: str, cfg) -> None:
    """A rerun into an existing run directory must use the same config (it resumes)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    old = json.load(open(path))
    new = config_lib.to_dict(cfg)
    diff = sorted(k for k in set(_flatten(old)) | set(_flatten(new))
                  if _flatten(old).get(k) != _flatten(new).get(k))
    if diff:
        raise UserError(
            f"{run_dir} was created with a different config ({', '.join(diff[:8])}"
            f"{' ...' if len(diff) > 8 else ''} differ). Rerunning the same command resumes; "
            "to train with other settings, pass another --workdir.")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def update_run_info(run_dir: str, **fields: dict) -> None:
    path = os.path.join(run_dir, "run_info.json")
    info = json.load(open(path)) if os.path.isfile(path) else {}
    for key, value in fields.items():
        info.setdefault(key, {}).update(value)
    with open(path, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)


def load_vae_from(run_dir: str, task: DenseTask, cfg) -> Any:
    """Stage-1 params from another run, after checking it fits this config."""
    try:
        other = config_lib.load_saved_config(run_dir)
    except config_lib.ConfigError as e:
        raise UserError(f"--vae-ckpt: {e}") from None
    if other.get("task") != cfg.task:
        raise UserError(f"--vae-ckpt {run_dir} is a {other.get('task')!r} run; this is "
                        f"{cfg.task!r}")
    mine, theirs = config_lib.to_dict(cfg.vae.model), config_lib.to_dict(other.vae.model)
    diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs)
            if mine.get(k) != theirs.get(k)}
    ch_mine = task.label_channels(cfg)
    ch_theirs = task.label_channels(other)
    if ch_mine != ch_theirs:
        diff["label_channels"] = (ch_theirs, ch_mine)
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise UserError(f"--vae-ckpt {run_dir} does not match this config's VAE: {lines}")
    target = builders.abstract_params("vae", cfg, ch_mine)
    try:
        params, _ = ckpt_lib.load_params(run_dir, "vae", target=target)
    except (ckpt_lib.CheckpointError, ValueError) as e:
        raise UserError(f"--vae-ckpt {run_dir}: {e}") from None
    return params


def load_run_config(run_dir: str, task_name: str) -> ml_collections.ConfigDict:
    """The saved config of a run directory, checked to belong to `task_name`."""
    try:
        cfg = config_lib.load_saved_config(run_dir)
    except config_lib.ConfigError as e:
        raise UserError(str(e)) from None
    if cfg.get("task") != task_name:
        raise UserError(f"{run_dir} is a {cfg.get('task')!r} run, not {task_name!r}")
    return cfg


def load_run(run_dir: str, task: DenseTask, need_givt: bool = True):
    """(cfg, vae_params, givt_params or None, step) of a run directory."""
    cfg = load_run_config(run_dir, task.name)
    vae = load_vae_from(run_dir, task, cfg)
    if not need_givt:
        return cfg, vae, None, 0
    target = builders.abstract_params("givt", cfg)
    try:
        givt, step = ckpt_lib.load_params(run_dir, "givt", target=target)
    except ckpt_lib.CheckpointError as e:
        raise UserError(f"{e} (train stage 2 first: --stage givt)") from None
    return cfg, vae, givt, step


# ---------------------------------------------------------------------------- the commands
def run_train(task: DenseTask, args: argparse.Namespace) -> str:
    spec = args.config or f"configs/{task.name}.py"
    cfg = config_lib.load_config(spec, args.set or [])
    if args.data:
        cfg.data.source = args.data
    pipeline.parse_source(cfg.data.source)  # validates the spec early
    sampling_options(task, cfg)  # and the sampling options, before any training
    init_encoder = cfg.givt.get("init_encoder")
    if init_encoder and not os.path.isfile(init_encoder):
        raise UserError(f"givt.init_encoder={init_encoder!r}: no such file")
    run_dir = args.workdir or default_workdir(cfg)
    check_run_config(run_dir, cfg)
    config_lib.save_config(cfg, run_dir)
    print(f"run directory: {run_dir}", flush=True)
    source, chash = cfg.data.source, config_hash(config_lib.to_dict(cfg))
    t_start = time.time()

    def train_ds():
        return task.load(cfg, source, cfg.data.train_split)

    results = {}
    if args.stage in ("vae", "all") and not args.vae_ckpt:
        res = train(cfg.vae.train, run_dir, "vae", vae_stage(task, cfg, train_ds, run_dir),
                    meta={"config_hash": chash})
        update_run_info(run_dir, num_params={"vae": res.num_params},
                        train_time_s={"vae": round(res.train_time_s, 1)})
        vae_params = res.params
        if args.eval:
            results["vae"] = _evaluate_and_record(task, cfg, run_dir, "vae", res.step,
                                                  vae_params, None, args.max_eval)
    if args.stage in ("givt", "all"):
        if args.vae_ckpt:
            vae_params = load_vae_from(args.vae_ckpt, task, cfg)
            ckpt_lib.StageCheckpoints(run_dir, "vae")  # noqa: B018 (dir for the record)
        elif args.stage == "givt":
            vae_params = load_vae_from(run_dir, task, cfg)
        res = train(cfg.givt.train, run_dir, "givt",
                    givt_stage(task, cfg, train_ds, vae_params, run_dir),
                    meta={"config_hash": chash})
        update_run_info(run_dir, num_params={"givt": res.num_params},
                        train_time_s={"givt": round(res.train_time_s, 1)})
        if args.vae_ckpt:
            _link_vae(args.vae_ckpt, run_dir)
        if args.eval:
            results["givt"] = _evaluate_and_record(task, cfg, run_dir, "givt", res.step,
                                                   vae_params, res.params, args.max_eval)
    print(f"\ndone in {time.time() - t_start:.0f} s. run directory: {run_dir}")
    for stage, metrics in results.items():
        label = "stage-1 oracle (encode GT, decode)" if stage == "vae" else "stage-2 GIVT"
        print(f"  {label}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return run_dir


def _link_vae(src_run: str, run_dir: str) -> None:
    """Stage 2 trained on another run's VAE: copy that VAE in, so the run is self-contained."""
    import shutil
    src = ckpt_lib.stage_dir(src_run, "vae")
    dst = ckpt_lib.stage_dir(run_dir, "vae")
    if not os.path.isdir(dst) or not os.listdir(dst):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def _evaluate_and_record(task, cfg, run_dir, stage, step, vae_params, givt_params,
                         max_examples=None, source=None, split=None, tag: str = "",
                         overlays: bool = True) -> dict[str, float]:
    source = source or cfg.data.source
    split = split or cfg.data.val_split
    max_examples = max_examples or int(cfg.data.get("eval_max_examples", 0)) or None
    predictor = Predictor(task, cfg, vae_params, givt_params)
    metrics = evaluate_split(task, cfg, predictor, source, split, oracle=givt_params is None,
                             max_examples=max_examples, progress=not tag,
                             overlay_dir=os.path.join(run_dir, "predictions") if overlays else None)
    info = {}
    path = os.path.join(run_dir, "run_info.json")
    if os.path.isfile(path):
        info = json.load(open(path))
    write_eval_record(run_dir, {
        "task": task.name, "stage": stage, "split": split, "data": source, "step": step,
        "metrics": metrics, "num_examples": metrics.get("num_images", 0),
        "config_hash": config_hash(config_lib.to_dict(cfg)),
        "model": {"size": cfg.size, "num_params": info.get("num_params", {}).get(stage)},
        "tag": "_".join(t for t in ("oracle" if stage == "vae" else "", tag) if t),
    })
    return metrics


def run_eval(task: DenseTask, args: argparse.Namespace) -> dict:
    cfg, vae, givt, step = load_run(args.ckpt, task, need_givt=not args.oracle)
    stage = "vae" if args.oracle else "givt"
    metrics = _evaluate_and_record(task, cfg, args.ckpt, stage, step, vae, givt,
                                   args.max_eval, args.data or cfg.data.source, args.split)
    print(json.dumps(metrics, indent=1))
    return metrics


def build_parser(task: DenseTask, extra: Callable[[argparse._SubParsersAction], None] | None,
                 predict_help: str | None = None) -> argparse.ArgumentParser:
    """train / eval for every task; `predict` when the task can predict from an image folder."""
    p = argparse.ArgumentParser(prog=f"python -m tasks.{task.name}",
                                description=f"UViM + GIVT for {task.name}.")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train stage 1 (VAE) and/or stage 2 (GIVT), then evaluate")
    t.add_argument("--stage", choices=("vae", "givt", "all"), default="all")
    t.add_argument("--config", default=None, help="FILE[:args], default configs/<task>.py")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--workdir", default=None,
                   help="run directory (default runs/<task>_<size>_<data>)")
    t.add_argument("--data", default=None, help="embedded | tfds:NAME | folder:PATH")
    t.add_argument("--vae-ckpt", default=None, help="run directory whose VAE stage 2 uses")
    t.add_argument("--no-eval", dest="eval", action="store_false")
    t.add_argument("--max-eval", type=int, default=None, help="cap on evaluation examples")
    e = sub.add_parser("eval", help="evaluate a run directory")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--data", default=None)
    e.add_argument("--split", default="validation")
    e.add_argument("--oracle", action="store_true", help="evaluate stage 1 (encode GT, decode)")
    e.add_argument("--max-eval", type=int, default=None)
    if predict_help:
        pr = sub.add_parser("predict", help=predict_help)
        pr.add_argument("--ckpt", required=True, help="run directory")
        pr.add_argument("--images", required=True, help="folder of images")
        pr.add_argument("--out", required=True, help="output folder")
    if extra:
        extra(sub)
    return p


def cli(task: DenseTask, argv: list[str] | None = None,
        commands: dict[str, Callable[[DenseTask, argparse.Namespace], Any]] | None = None,
        extra_parsers: Callable | None = None, predict_help: str | None = None) -> int:
    """Parse argv, run the command; returns the exit status (2 for user errors)."""
    parser = build_parser(task, extra_parsers, predict_help)
    args = parser.parse_args(argv)
    handlers = {"train": run_train, "eval": run_eval, **(commands or {})}
    if args.command not in handlers:
        parser.print_help()
        return 2
    try:
        handlers[args.command](task, args)
    except (UserError, config_lib.ConfigError, pipeline.DataError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


__all__ = ["DenseTask", "Evaluator", "Predictor", "UserError", "cli", "count_params"]
