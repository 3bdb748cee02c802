"""The two-stage runner: train a task's stage-1 VAE and stage-2 GIVT into one run directory.

Everything here is generic. What a task brings is its data (``readers``, ``preprocess``:
see ``uvim_givt.task``); what a stage computes is its definition (``training/stages.py``),
chosen by the config:

* stage 1, ``vae.kind``: ``"vit"`` (label maps -> per-channel logits; cross-entropy + beta
  KL) or ``"cnn"`` (images; L2 + beta KL, optional VGG perceptual and PatchGAN losses, the
  discriminator sharing the stage's parameter tree as ``{"vae", "disc"}``); with
  ``vae.ema_decay`` > 0 an EMA of the VAE is kept (stage ``vae_ema``) and is the VAE that
  stage 2 trains on and that decodes.
* stage 2, ``givt.model``: any style (causal or MaskGIT), conditioned on the image (with an
  encoder) or on the class label (``num_labels``); it models codes of the frozen VAE's
  posterior (a sample, or its mean with ``givt.posterior="mean"``). With
  ``givt.adaptor.enabled`` an invertible adaptor (``models.adaptor``) maps the codes to the
  sequence the GIVT models and is trained with it on the NLL (change of variables); its
  parameters sit in the stage's tree under ``params_adaptor``, as in big_vision.

Evaluation is injected (:class:`EvalHooks`): the runner calls it during and after each
stage, and the ``eval`` command calls the same hooks on a loaded :class:`Run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uvim_givt import config as config_lib
from uvim_givt import provenance, rundir, schema
from uvim_givt.data import catalog
from uvim_givt.errors import CheckpointError, ConfigError, DataError, Preempted, UserError
from uvim_givt.models import builders
from uvim_givt.task import Task, get_task
from uvim_givt.training import checkpoint as ckpt_lib
from uvim_givt.training import code_cache, sharding, stages
from uvim_givt.training.ema import ParamsEMA
from uvim_givt.training.trainer import Stage, count_params, train
from uvim_givt.training.warm_start import warm_start_fn

EMA_STAGE = "vae_ema"
STAGES = ("vae", "givt", "all")


@dataclasses.dataclass
class Run:
    """A run directory's config and trained parameters (what evaluators and commands use)."""

    run_dir: str
    cfg: ml_collections.ConfigDict
    task: Task
    vae_params: Any = None
    vae_step: int = 0
    vae_is_ema: bool = False
    givt_params: Any = None
    givt_step: int = 0

    def step(self, stage: str) -> int:
        return self.givt_step if stage == "givt" else self.vae_step


class EvalHooks(Protocol):
    """What the runner asks of the evaluators (``evals.evaluators.Evaluators``)."""

    def periodic(self, stage: str, run: Run, step: int) -> dict[str, float]:
        """Evaluators of ``stage`` due at ``step`` (during training); flat metrics."""

    def final(self, stage: str, run: Run) -> dict[str, dict[str, float]]:
        """Every evaluator of ``stage`` ("vae", "givt" or "baseline"), after training."""


# ------------------------------------------------------------------------------- checks
def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Stage 1 and stage 2 must agree on the code sequence and the conditioning (each key's
    own range or choices: :mod:`uvim_givt.schema`)."""
    stage1 = stages.stage_of(cfg, "vae")
    vae, g = stage1.model, cfg.givt.model
    problems = []
    size = int(cfg.data.image_size)
    if tuple(vae.input_size) != (size, size):
        problems.append(f"vae.model.input_size {tuple(vae.input_size)} != data.image_size "
                        f"{size} (square)")
    if hasattr(stage1, "init_state") and int(cfg.vae.train.grad_accum) > 1:
        problems.append(f"vae.train.grad_accum={cfg.vae.train.grad_accum}: vae.kind="
                        f"{cfg.vae.kind} updates its state (the dictionary) from each step's "
                        "whole batch, so it trains with grad_accum=1")
    if getattr(stage1, "discrete", False):  # code ids: no GIVT reads them (train_run)
        if problems:
            raise ConfigError("inconsistent config: " + "; ".join(problems))
        return
    if int(g.seq_len) != int(vae.code_len):
        problems.append(f"givt.model.seq_len={g.seq_len} but the VAE makes {vae.code_len} "
                        "codes")
    if int(g.out_dim) != int(vae.code_dim):
        problems.append(f"givt.model.out_dim={g.out_dim} but the VAE's codes have "
                        f"{vae.code_dim} channels (vae.model.codeword_dim "
                        f"{vae.codeword_dim} x the pixel-shuffle patch)")
    if cfg.vae.train.cached_codes:
        problems.append("vae.train.cached_codes=True: stage 1 makes the codes (the option is "
                        "stage 2's: givt.train.cached_codes)")
    for stage in ("vae", "givt"):
        t = cfg[stage].train
        if int(t.batch_size) % int(t.grad_accum):
            problems.append(f"{stage}.train.batch_size={t.batch_size} is not a multiple of "
                            f"{stage}.train.grad_accum={t.grad_accum}")
    if problems:
        raise ConfigError("inconsistent config: " + "; ".join(problems))
    builders.build_adaptor(cfg)  # its channels and grid fit the code sequence


def check_shapes(cfg: ml_collections.ConfigDict, stage: str = "all") -> None:
    """Every shape rule of the stages' models (patch sizes dividing input sizes, grids,
    widths), checked by initialising them abstractly (``jax.eval_shape``: no compute, no
    memory) before anything is written, so a bad config costs one line and no run folder."""
    for name in ("vae", "givt") if stage == "all" else (stage,):
        kind = stages.stage_of(cfg, name)
        group = "vae.model" if name == "vae" else "givt.model"
        for init in (kind.init, getattr(kind, "init_state", None)):
            if init is None:
                continue
            try:
                jax.eval_shape(init, jax.random.PRNGKey(0))
            except (ValueError, TypeError, AssertionError, IndexError, KeyError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ConfigError(f"{group}: this config cannot build the stage-"
                                  f"{1 if name == 'vae' else 2} model ({first})") from None


# ------------------------------------------------------------------------------- stages
def _batches(task: Task, cfg: ml_collections.ConfigDict, train_cfg: ml_collections.ConfigDict,
             make_dataset: Callable[[], Any], inputs: tuple[str, ...],
             indexed: bool = False) -> Callable[[int], Iterator[dict]]:
    """Stage.batches: deterministic, resumable batches of the inputs the stage reads; with
    ``indexed`` each row also carries its example's position in the split
    (``code_cache.INDEX_KEY``; the shuffle is the same, so are the batches)."""
    def prep(ex, seed):
        index = None
        if indexed:
            index, ex = ex
        out = task.preprocess(cfg, ex, "train", seed=seed)
        out = {k: out[k] for k in inputs}
        if indexed:
            out[code_cache.INDEX_KEY] = index
        return out

    def dataset():
        return make_dataset().enumerate() if indexed else make_dataset()

    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        from uvim_givt.data import pipeline  # tf.data: only where batches are read

        return pipeline.train_batches(dataset, prep, int(train_cfg.batch_size),
                                      int(train_cfg.seed) + int(cfg.seed), start,
                                      shuffle_buffer=int(cfg.data.shuffle_buffer),
                                      cache=bool(cfg.data.cache))
    return batches


def vae_stage(task: Task, cfg: ml_collections.ConfigDict, make_dataset: Callable[[], Any],
              evaluate: Callable | None = None, after_step: Callable | None = None) -> Stage:
    """Stage 1: the VAE of ``vae.kind`` (:mod:`uvim_givt.training.stages`) on its input."""
    kind = stages.stage_of(cfg, "vae")
    batches = _batches(task, cfg, cfg.vae.train, make_dataset, kind.inputs)
    if hasattr(kind, "init_state"):  # state learnt outside the gradient (a VQ dictionary)
        return Stage(kind.init, lambda p, b, k, s: kind.train_loss(p, s, b, k), batches,
                     evaluate=evaluate, after_step=after_step,
                     warm_start=warm_start_fn(cfg, "vae"), init_state=kind.init_state)
    return Stage(kind.init, lambda p, b, k: kind.loss(p, b, k, True), batches,
                 evaluate=evaluate, after_step=after_step,
                 warm_start=warm_start_fn(cfg, "vae"))


def givt_stage(task: Task, cfg: ml_collections.ConfigDict, make_dataset: Callable[[], Any],
               vae_params: Any, evaluate: Callable | None = None,
               codes: code_cache.CodeCache | None = None) -> Stage:
    """Stage 2: the GIVT of ``givt.model.style`` on the frozen VAE's codes, encoded in the
    step, or read from ``codes`` (cached once; the step then holds no VAE)."""
    kind = stages.stage_of(cfg, "givt")
    warm_start = warm_start_fn(cfg, "givt", kind.model.encoder_grid)
    if codes is not None:
        batches = _batches(task, cfg, cfg.givt.train, make_dataset, kind.conditioning_inputs,
                           indexed=True)
        return Stage(kind.init, lambda p, b, k: kind.loss(p, b, k, True),
                     code_cache.cached_batches(batches, codes), warm_start=warm_start,
                     evaluate=evaluate)
    return Stage(kind.init, lambda p, b, k, frozen: kind.loss(p, b, k, True, frozen),
                 _batches(task, cfg, cfg.givt.train, make_dataset, kind.inputs),
                 frozen=vae_params, warm_start=warm_start, evaluate=evaluate)


# ------------------------------------------------------------------------ loading params
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
        raise CheckpointError(f"{what} does not match the config's model (missing {missing}, "
                              f"unexpected {extra}, shapes {shapes})")
    return jax.tree_util.tree_map(jnp.asarray, params)


def _has_checkpoint(run_dir: str, stage: str) -> bool:
    if not os.path.isdir(ckpt_lib.stage_dir(run_dir, stage)):
        return False
    ckpt = ckpt_lib.StageCheckpoints(run_dir, stage, create=False)
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()


def load_vae_params(run_dir: str, cfg: ml_collections.ConfigDict) -> tuple[Any, int, bool]:
    """(VAE params, step, is_ema): the EMA when enabled and saved, else the trained VAE.

    Accepts stage-1 training trees (``{"vae", "disc"}`` of the CNN stage) and bare VAE
    trees (converted published checkpoints, ``compat.big_vision``)."""
    target = builders.abstract_params("vae", cfg)
    if float(cfg.vae.ema_decay) > 0 and _has_checkpoint(run_dir, EMA_STAGE):
        params, step = ckpt_lib.load_params(run_dir, EMA_STAGE)
        return _check_tree(params, target, f"{run_dir} VAE EMA (step {step})"), step, True
    params, step = ckpt_lib.load_params(run_dir, "vae")
    if isinstance(params, dict) and set(params) - {"disc"} == {"vae"}:
        params = params["vae"]
    if hasattr(stages.stage_of(cfg, "vae"), "init_state"):  # variables: params and state
        state, _ = ckpt_lib.load_params(run_dir, "vae", step, item="state")
        params = {"params": params, "state": state}
    return _check_tree(params, target, f"{run_dir} VAE (step {step})"), step, False


def load_givt_params(run_dir: str, cfg: ml_collections.ConfigDict) -> tuple[Any, int]:
    target = builders.abstract_params("givt", cfg)
    try:
        params, step = ckpt_lib.load_params(run_dir, "givt")
    except CheckpointError as e:
        raise CheckpointError(f"{e} (train stage 2 first: --stage givt)") from None
    return _check_tree(params, target, f"{run_dir} GIVT (step {step})"), step


def with_settings(run: Run, overrides: Sequence[str], allowed: Sequence[str],
                  hooks: Any = None, command: str = "this command") -> Run:
    """``run`` with ``--set key=value`` overrides of how it is used (decoding, sampling,
    protocol), never of its models: keys outside the ``allowed`` prefixes are refused, and
    the result is checked as a training config is (the schema, with ``hooks``' evaluator
    rules, and the task's own rules)."""
    bad = [o for o in overrides if not o.strip().startswith(tuple(allowed))]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: {command} may change "
                          f"{', '.join(a + '*' for a in allowed)} only (the models come "
                          "from the run)")
    cfg = config_lib.apply_overrides(ml_collections.ConfigDict(run.cfg.to_dict()), overrides)
    schema.check(cfg, schema.rules_of(run.task, hooks))
    if getattr(run.task, "check_config", None):
        run.task.check_config(cfg)
    return dataclasses.replace(run, cfg=cfg)


def load_run(run_dir: str, task: Task | None = None, need_givt: bool = True) -> Run:
    """A run directory's config and parameters; the task is found by its config's name
    when not given."""
    cfg = rundir.load_run_config(run_dir, task.name if task is not None else None)
    task = task or get_task(str(cfg.task))
    vae, vae_step, is_ema = load_vae_params(run_dir, cfg)
    run = Run(run_dir, cfg, task, vae, vae_step, is_ema)
    if need_givt:
        run.givt_params, run.givt_step = load_givt_params(run_dir, cfg)
    return run


def check_vae_run(src_run: str, cfg: ml_collections.ConfigDict) -> None:
    """``--vae-ckpt``: the other run must have this config's task and VAE."""
    other = rundir.load_run_config(src_run)
    if other.get("task") != cfg.task:
        raise UserError(f"--vae-ckpt {src_run} is a {other.get('task')!r} run; this is "
                        f"{cfg.task!r}")
    mine, theirs = config_lib.to_dict(cfg.vae), config_lib.to_dict(other.vae)
    diff = rundir.config_diff({"kind": theirs.get("kind"), "model": theirs.get("model")},
                              {"kind": mine["kind"], "model": mine["model"]})
    if diff:
        raise UserError(f"--vae-ckpt {src_run} does not match this config's VAE: vae."
                        + ", vae.".join(diff) + " differ")


def check_training_data(task: Task, cfg: ml_collections.ConfigDict) -> None:
    """The training split opens and holds an example (a missing or unprepared dataset, an
    empty annotation list or split is one line, before anything is written)."""
    split = cfg.data.train_split
    ds = catalog.load(task.readers, cfg, cfg.data.source, split)
    if next(iter(ds.take(1).as_numpy_iterator()), None) is None:
        raise DataError(f"data.source {cfg.data.source}: the training split {split!r} has "
                        "no examples")


def _update_run_info(run_dir: str, **fields: Any) -> None:
    if sharding.is_primary():
        rundir.update_run_info(run_dir, **fields)


def copy_vae(src_run: str, run_dir: str) -> None:
    """Stage 2 trained on another run's VAE: copy its checkpoints in (self-contained run)."""
    for stage in ("vae", EMA_STAGE):
        src, dst = ckpt_lib.stage_dir(src_run, stage), ckpt_lib.stage_dir(run_dir, stage)
        if os.path.isdir(src) and (not os.path.isdir(dst) or not os.listdir(dst)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)


# ------------------------------------------------------------------------------- the run
def _periodic(hooks: EvalHooks | None, stage: str, run: Run, vae_from_stage: bool):
    """Stage.evaluate for the hooks: puts the current params into ``run``."""
    if hooks is None:
        return None

    def evaluate(params, step):
        if stage == "vae":
            run.vae_params = (stages.stage_of(run.cfg, "vae").vae_params(params)
                              if vae_from_stage else params)
            run.vae_step = step
        else:
            run.givt_params, run.givt_step = params, step
        return hooks.periodic(stage, run, step)
    return evaluate


def check_init_encoder(cfg: ml_collections.ConfigDict, stage: str) -> None:
    """``givt.init_encoder`` names a file that is there, when stage 2 is to be trained. A
    published checkpoint's name (the paper presets': big_vision's ``howto-i21k-L/16``) is
    refused with how to give the file or to opt out: training the paper's stage 2 from
    scratch instead would silently be another recipe."""
    value = str(cfg.givt.init_encoder)
    if stage == "vae" or value in ("", "none"):
        return
    if not value.endswith(".npz"):
        raise UserError(
            f"givt.init_encoder={value!r}: this preset starts the stage-2 image encoder "
            f"from big_vision's pretrained ViT {value}, as published; give its .npz with "
            "--set givt.init_encoder=PATH.npz, or train the encoder from scratch with "
            "--set givt.init_encoder=none")
    if not os.path.isfile(value):
        raise UserError(f"givt.init_encoder={value!r}: no such file")


def train_run(task: Task, cfg: ml_collections.ConfigDict, run_dir: str, stage: str = "all",
              vae_ckpt: str | None = None, hooks: EvalHooks | None = None,
              log: Callable[[str], None] = print, command: str | None = None) -> Run:
    """Trains the stages asked for into ``run_dir`` (resuming what is there), evaluating
    with ``hooks`` after each stage when given; returns the trained :class:`Run`.
    ``command``: the command line the provenance records (default: this process's)."""
    if stage not in STAGES:
        raise UserError(f"--stage {stage!r}: one of {STAGES}")
    schema.check(cfg, schema.rules_of(task, hooks))
    if cfg.task != task.name:
        raise ConfigError(f"task={cfg.task!r}: this config is for the {cfg.task} task, not "
                          f"{task.name} (use configs/{task.name}.py or tasks.{cfg.task})")
    check_config(cfg)
    if stage in ("givt", "all"):
        stages.stage_of(cfg, "givt")  # refuses a stage 2 that cannot model these codes
    catalog.parse_source(cfg.data.source)
    if getattr(task, "check_config", None):
        task.check_config(cfg)
    check_init_encoder(cfg, stage)
    check_shapes(cfg, stage)
    for stage_name in ("vae", "givt"):
        path = cfg[stage_name].init.path
        if path and not os.path.exists(path):
            raise UserError(f"{stage_name}.init.path={path!r}: no such run directory or file")
    if stage in ("givt", "all") and cfg.givt.train.cached_codes:
        # the data itself: refused now, not after stage 1 has trained for hours
        code_cache.check_no_augmentation(
            task, cfg, lambda: catalog.load(task.readers, cfg, cfg.data.source,
                                            cfg.data.train_split),
            stages.stage_of(cfg, "vae").input_key)
    # What the command reads is checked before the run directory is written, so that a
    # corrected rerun is not refused as "a different config".
    if os.path.isfile(run_dir):  # cheap checks first: the data probe may build a dataset
        raise UserError(f"{run_dir} is a file, not a directory: pass another folder")
    if vae_ckpt:
        check_vae_run(vae_ckpt, cfg)
    check_training_data(task, cfg)
    # Several processes (jax.distributed) train one run: all of them check the config,
    # process 0 alone holds the lock and writes the run's shared files.
    sharding.maybe_initialize_distributed()
    primary = sharding.is_primary()
    with rundir.locked(run_dir) if primary else contextlib.nullcontext():
        rundir.start_run(run_dir, cfg, write=primary)
        sharding.sync_processes("start_run")
        s1 = {"vqvae": "VQ-VAE", "vqgan": "VQ tokenizer"}.get(str(cfg.vae.kind), "VAE")
        s2 = {"vtt": "VTT", "discrete": "discrete transformer"}.get(str(cfg.givt.kind), "GIVT")
        what = {"all": f"stage 1 ({s1}) and stage 2 ({s2})", "vae": f"stage 1 ({s1})",
                "givt": f"stage 2 ({s2})"}[stage]
        log(f"training {task.name} {what}, {cfg.size} config, data "
            f"{cfg.data.source}; run directory: {run_dir}")
        stages_trained = ["vae", "givt"] if stage == "all" else [stage]
        index = rundir.begin_session(run_dir, provenance.session(cfg, stages_trained,
                                                                 command)) if primary else None
        outcome = "failed"
        try:
            run = _train_stages(task, cfg, run_dir, stage, vae_ckpt, hooks, log)
            outcome = "finished"
            return run
        except Preempted:
            outcome = "stopped by SIGTERM (resumable)"
            raise
        except KeyboardInterrupt:
            outcome = "interrupted (resumable)"
            raise
        except Exception as e:
            outcome = f"failed: {type(e).__name__}"
            raise
        finally:
            if index is not None:
                with contextlib.suppress(OSError):  # a full disk must not hide the error
                    rundir.end_session(run_dir, index, outcome, provenance.now())


def _train_stages(task: Task, cfg: ml_collections.ConfigDict, run_dir: str, stage: str,
                  vae_ckpt: str | None, hooks: EvalHooks | None,
                  log: Callable[[str], None]) -> Run:
    source = cfg.data.source
    meta = {"config_hash": rundir.config_hash(cfg)}
    run = Run(run_dir, cfg, task)
    t_start = time.time()

    def train_ds():
        return catalog.load(task.readers, cfg, source, cfg.data.train_split)

    results: dict[str, dict[str, float]] = {}
    cached = stage in ("givt", "all") and bool(cfg.givt.train.cached_codes)
    if stage in ("vae", "all") and not vae_ckpt:
        t = cfg.vae.train
        ema = None
        if float(cfg.vae.ema_decay) > 0:
            ema = ParamsEMA(run_dir, EMA_STAGE, float(cfg.vae.ema_decay), int(t.ckpt_every),
                            int(t.total_steps), int(t.keep_ckpts),
                            part=stages.stage_of(cfg, "vae").vae_params)
        try:
            res = train(t, run_dir, "vae", vae_stage(
                task, cfg, train_ds, _periodic(hooks, "vae", run, True), ema), meta=meta)
        finally:
            if ema is not None:
                ema.close()
        kind = stages.stage_of(cfg, "vae")
        for warning in getattr(kind, "training_warnings", lambda h: [])(res.history):
            log(warning)
        vae_params = kind.vae_params(res.params)
        if hasattr(kind, "init_state"):  # parameters only, not the state (a dictionary)
            vae_params = vae_params["params"]
        _update_run_info(run_dir, num_params={"vae": count_params(vae_params)},
                         train_time_s={"vae": round(res.train_time_s, 1)})
        run.vae_params, run.vae_step, run.vae_is_ema = load_vae_params(run_dir, cfg)
        if hooks is not None:
            results.update(hooks.final("vae", run))
    if stage in ("givt", "all"):
        if vae_ckpt:
            check_vae_run(vae_ckpt, cfg)
            if sharding.is_primary():
                copy_vae(vae_ckpt, run_dir)
            sharding.sync_processes("copy_vae")
        if run.vae_params is None:
            run.vae_params, run.vae_step, run.vae_is_ema = load_vae_params(run_dir, cfg)
        codes = code_cache.build(run_dir, task, cfg, train_ds, run.vae_params, log) \
            if cached else None
        res = train(cfg.givt.train, run_dir, "givt", givt_stage(
            task, cfg, train_ds, run.vae_params, _periodic(hooks, "givt", run, False),
            codes=codes), meta=meta)
        _update_run_info(run_dir, num_params={"givt": res.num_params},
                         train_time_s={"givt": round(res.train_time_s, 1)})
        run.givt_params, run.givt_step = res.params, res.step
        if hooks is not None:
            results.update(hooks.final("givt", run))
    if hooks is not None:
        results.update(hooks.final("baseline", run))
    log(f"\ndone in {time.time() - t_start:.0f} s. run directory: {run_dir}")
    for line in summary_lines(results):
        log(line)
    return run


def _number(v: float) -> str:
    """One precision rule for every metric: 4 significant digits, no exponent below 1e5."""
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4g}" if abs(v) < 1 else f"{v:.{max(0, 4 - len(str(int(abs(v)))))}f}"


def summary_lines(results: dict[str, dict[str, float]], per_line: int = 6) -> list[str]:
    """The end-of-run summary: one aligned block per evaluator, metrics in columns of the
    same width (counters such as ``num_images`` go in brackets after the name)."""
    if not results:
        return []
    width = max(len(name) for name in results)
    lines = []
    for name, metrics in results.items():
        counts = [f"{int(v)} {k[4:]}" for k, v in metrics.items() if k.startswith("num_")]
        shown = [(k, _number(float(v))) for k, v in metrics.items()
                 if not k.startswith("num_")]
        cells = [f"{k} {v:>8}" for k, v in shown]
        label = f"  {name:<{width}}"
        for i in range(0, max(len(cells), 1), per_line):
            head = label if i == 0 else " " * len(label)
            lines.append(f"{head}  " + "   ".join(cells[i:i + per_line]))
        if counts:
            lines[-1 - (len(cells) - 1) // per_line if cells else -1] += \
                f"   ({', '.join(counts)})"
    return lines
