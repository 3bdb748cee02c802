"""Stage 2 from cached stage-1 codes (``givt.train.cached_codes``).

Stage 2 trains on the frozen VAE's posterior of each training example (its mean and
log-variance; a sample is drawn in the step when ``givt.posterior="sample"``). Without
augmentation of the stage-1 input, that posterior is a fixed function of the example, so it
can be computed once for the whole split and read back by index: the train step then holds no
VAE, reads no labels' worth of compute, and gives the same loss as encoding every batch.

The cache lives in the run directory, ``RUN/code_cache/<key>/{mu,logvar}.npy`` (float32
``[examples, code_len, code_dim]``, read memory-mapped) and ``info.json``; ``key`` is a hash
of the VAE's parameter values, the task, the data group and the split, so another stage 1 or
other data never reuse stale codes. A training route that augments the stage-1 input at
random (crops, flips) is refused: its codes change with every epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.training import sharding
from uvim_givt.training.stages import CODE_LOGVAR, CODE_MU

#: The batch key of an example's position in the split (the row of its cached codes).
INDEX_KEY = "_code_index"
#: Seeds of the augmentation check: a random flip alone agrees on all of them with
#: probability 2**-15.
_CHECK_SEEDS = 16


@dataclasses.dataclass
class CodeCache:
    """The stage-1 posterior of every example of a split, by the example's index."""

    directory: str
    mu: np.ndarray  # [examples, code_len, code_dim], memory-mapped
    logvar: np.ndarray

    def lookup(self, index: np.ndarray) -> dict[str, np.ndarray]:
        index = np.asarray(index)
        return {CODE_MU: np.asarray(self.mu[index]), CODE_LOGVAR: np.asarray(self.logvar[index])}


def check_no_augmentation(task: Any, cfg: ml_collections.ConfigDict,
                          make_dataset: Callable[[], Any], input_key: str) -> None:
    """Refuses (one line) a training route whose stage-1 input changes with the random seed:
    the first example is preprocessed with several seeds and must come out the same."""
    import tensorflow as tf

    ds = make_dataset().take(1).repeat(_CHECK_SEEDS).enumerate().map(
        lambda i, ex: task.preprocess(cfg, ex, "train",
                                      seed=tf.stack([tf.constant(0, tf.int64), i]))[input_key])
    seen = [np.asarray(x) for x in ds.as_numpy_iterator()]
    if not seen:
        raise UserError(f"split {cfg.data.train_split!r} of {cfg.data.source} has no examples")
    if any(x.shape != seen[0].shape or not np.array_equal(x, seen[0]) for x in seen[1:]):
        raise ConfigError(
            f"givt.train.cached_codes=True: the training route augments the stage-1 input "
            f"({input_key!r}) at random (e.g. data.flip, a random crop), so codes cached once "
            "would be stale; turn the augmentation off or set givt.train.cached_codes=False")


def cache_key(task_name: str, cfg: ml_collections.ConfigDict, vae_params: Any) -> str:
    """A hash of what the codes depend on: the VAE's parameter values and model, the task,
    the data group (source, split, preprocessing) and the stage-1 input."""
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_leaves_with_path(vae_params):
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{arr.dtype}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    about = {"task": task_name, "data": config_lib.to_dict(cfg.data),
             "vae": {"kind": cfg.vae.kind, "model": config_lib.to_dict(cfg.vae.model)}}
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _open(directory: str) -> CodeCache:
    return CodeCache(directory, np.load(os.path.join(directory, "mu.npy"), mmap_mode="r"),
                     np.load(os.path.join(directory, "logvar.npy"), mmap_mode="r"))


def _count(ds: Any) -> int:
    n = int(ds.cardinality())
    return n if n >= 0 else sum(1 for _ in ds)  # unknown (-2) or infinite (-1): count


def build(run_dir: str, task: Any, cfg: ml_collections.ConfigDict,
          make_dataset: Callable[[], Any], vae_params: Any,
          log: Callable[[str], None] = print) -> CodeCache:
    """The codes of the training split under the current VAE: read from the run directory,
    or computed once (by process 0; the others wait) and written there first."""
    from uvim_givt.data import pipeline
    from uvim_givt.training import stages

    kind = stages.stage_of(cfg, "givt")
    key = cache_key(task.name, cfg, vae_params)
    directory = os.path.join(run_dir, "code_cache", key)
    if not os.path.isfile(os.path.join(directory, "info.json")) and sharding.is_primary():
        check_no_augmentation(task, cfg, make_dataset, kind.vae.input_key)
        ds = make_dataset()
        n = _count(ds)
        if n == 0:
            raise UserError(f"split {cfg.data.train_split!r} of {cfg.data.source} has no "
                            "examples")
        batch_size = max(1, int(cfg.givt.train.batch_size) // int(cfg.givt.train.grad_accum))
        log(f"stage 2: caching the stage-1 codes of {n} training examples in {directory}")
        tmp = f"{directory}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        mu = logvar = None
        row = 0

        def prep(ex):  # the training route, whose randomness was found inert above
            import tensorflow as tf
            out = task.preprocess(cfg, ex, "train", seed=tf.zeros([2], tf.int64))
            return {kind.vae.input_key: out[kind.vae.input_key]}

        for batch in pipeline.eval_batches(ds, prep, batch_size):
            valid = batch.pop("_valid")
            m, lv = kind.vae.encode(vae_params, batch[kind.vae.input_key])
            m, lv = np.asarray(m, np.float32)[valid], np.asarray(lv, np.float32)[valid]
            if mu is None:
                mu, logvar = (np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), "w+",
                                                        np.float32, (n, *m.shape[1:]))
                              for name in ("mu", "logvar"))
            mu[row:row + len(m)], logvar[row:row + len(m)] = m, lv
            row += len(m)
        if row != n:
            raise UserError(f"split {cfg.data.train_split!r} of {cfg.data.source}: counted "
                            f"{n} examples but read {row}")
        mu.flush()
        logvar.flush()
        del mu, logvar
        with open(os.path.join(tmp, "info.json"), "w") as f:
            json.dump({"examples": n, "key": key, "task": task.name,
                       "split": cfg.data.train_split, "source": cfg.data.source}, f, indent=1)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    sharding.sync_processes("code_cache")
    return _open(directory)


def cached_batches(batches: Callable[[int], Iterator[dict[str, np.ndarray]]],
                   cache: CodeCache) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """Stage.batches whose rows carry :data:`INDEX_KEY`, with the cached codes in its place."""
    def with_codes(start: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in batches(start):
            batch = dict(batch)
            index = batch.pop(INDEX_KEY)
            yield {**batch, **cache.lookup(index)}
    return with_codes
