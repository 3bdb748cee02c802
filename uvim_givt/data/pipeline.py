"""tf.data input pipeline shared by every task.

Where examples come from is :mod:`uvim_givt.data.catalog`; this module batches them.

Training batches are deterministic functions of the step: a seeded shuffle of
the repeated split, each example augmented with stateless random ops seeded by
(seed, example index), then ``skip`` to the first step. A restarted run
therefore sees exactly the batches it would have.

With several processes (``jax.distributed``) every process walks the same
global stream and keeps its own rows of each global batch: process ``p`` of
``P`` takes rows ``[p*B/P, (p+1)*B/P)`` of the batch of ``B``, the order in
which ``jax.make_array_from_process_local_data`` lays the shares side by side.
The global batch of a step is thus the same for any number of processes (a run
resumes with another process count and still sees the one-process batches), at
the price of every process reading and shuffling the whole split; only its
own rows are preprocessed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from uvim_givt.errors import DataError

Example = dict[str, Any]

# TensorFlow is only the input pipeline: keep it off accelerators and quiet.
tf.config.set_visible_devices([], "GPU")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.experimental_optimization.map_parallelization = True
    return ds.with_options(opts)


def train_batches(
    make_dataset: Callable[[], tf.data.Dataset],
    preprocess: Callable[[Example, tf.Tensor], Example],
    batch_size: int,
    seed: int,
    start_step: int,
    shuffle_buffer: int = 10_000,
    cache: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless host-local batches (``batch_size`` is global) from ``start_step`` on.

    ``preprocess(example, seed)`` gets a stateless seed (int64[2]) unique to the
    example's position in the global stream, for random augmentation. This process
    gets its contiguous block of rows of each global batch (module docstring);
    ``process_index`` / ``process_count`` default to JAX's.
    """
    n_proc = jax.process_count() if process_count is None else int(process_count)
    proc = jax.process_index() if process_index is None else int(process_index)
    if batch_size % n_proc:
        raise DataError(f"batch size {batch_size} does not split over {n_proc} processes "
                        "(train.batch_size must be a multiple of the process count)")
    local = batch_size // n_proc
    ds = make_dataset()
    if cache:
        ds = ds.cache()
    ds = ds.repeat().shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Global positions: the seeds and the row split are the same for any process count.
    ds = ds.enumerate().skip(start_step * batch_size)
    if n_proc > 1:
        first = proc * local
        ds = ds.filter(lambda i, ex: (i % batch_size >= first) & (i % batch_size < first + local))
    ds = ds.map(lambda i, ex: preprocess(ex, tf.stack([tf.cast(seed, tf.int64), i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = deterministic(ds.batch(local, drop_remainder=True).prefetch(2))
    return ds.as_numpy_iterator()


def eval_batches(
    dataset: tf.data.Dataset,
    preprocess: Callable[[Example], Example],
    batch_size: int,
    max_examples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a whole split in order; the last one is padded (``_valid`` marks real rows)."""
    ds = dataset if not max_examples else dataset.take(max_examples)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for batch in deterministic(ds.batch(batch_size).prefetch(2)).as_numpy_iterator():
        n = len(jax.tree_util.tree_leaves(batch)[0])
        valid = np.arange(batch_size) < n
        if n < batch_size:  # nested dicts too (a route's "meta")
            batch = jax.tree_util.tree_map(
                lambda v, pad=batch_size - n: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]),
                batch)
        batch["_valid"] = valid
        yield batch
