"""One process of a (possibly multi-process) toy training, run by tests/test_multihost.py.

``python tests/_multihost_worker.py RUN_DIR OUT_JSON TOTAL_STEPS CKPT_EVERY``. With
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` in the environment
it is one of several processes joined by ``jax.distributed`` (the library's own start-up,
``sharding.maybe_initialize_distributed``); without them, a one-process run.

The data goes through the real input pipeline (``pipeline.train_batches``: shuffle,
stateless per-example augmentation, this process's rows of each global batch) and the real
training loop (``trainer.train``: mesh, FSDP, orbax checkpoints, metrics, resume). Every
example carries its index, so the test can check which rows each process read. Writes
``{"process_index", "process_count", "device_count", "start", "ids", "losses"}`` to OUT_JSON.
"""
import json
import sys

from uvim_givt.training import sharding

# jax.distributed must start before anything initialises a JAX backend.
sharding.maybe_initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uvim_givt.data import pipeline  # noqa: E402
from uvim_givt.training.objectives import givt_nll_loss  # noqa: E402
from uvim_givt.training.toy import toy_batch, toy_model  # noqa: E402
from uvim_givt.training.trainer import Stage, default_train_config, train  # noqa: E402

NUM_EXAMPLES, BATCH, SHUFFLE = 40, 8, 16
# mlp_dim * emb_dim = 2**14 elements: the MLP kernels are split over processes by FSDP, so
# checkpoints hold shards written by different processes.
MODEL = dict(emb_dim=64, mlp_dim=256)


def make_dataset() -> tf.data.Dataset:
    data = toy_batch(0, NUM_EXAMPLES, seed=1)
    data["id"] = np.arange(NUM_EXAMPLES, dtype=np.int32)
    return tf.data.Dataset.from_tensor_slices(data)


def preprocess(ex, seed):
    # Augmentation seeded by the example's global stream position, as the tasks do.
    noise = tf.random.stateless_normal(tf.shape(ex["tokens"]), seed, dtype=tf.float32)
    return dict(ex, tokens=ex["tokens"] + 0.05 * noise)


def main(run_dir: str, out_path: str, total: int, ckpt_every: int) -> None:
    model = toy_model(**MODEL)
    seen: dict[int, list[int]] = {}
    started: list[int] = []

    def batches(start: int):
        started.append(start)
        it = pipeline.train_batches(make_dataset, preprocess, BATCH, seed=3,
                                    start_step=start, shuffle_buffer=SHUFFLE)
        for step, batch in enumerate(it, start=start):
            seen[step + 1] = batch.pop("id").tolist()
            yield batch

    def init(key):
        x = jax.numpy.zeros((1, model.seq_len, model.out_dim))
        return model.init(key, x, jax.numpy.zeros((1,), jax.numpy.int32))["params"]

    def loss_fn(params, batch, key):
        return givt_nll_loss(model, params, batch["tokens"], key, labels=batch["labels"])

    cfg = default_train_config()
    cfg.total_steps, cfg.batch_size, cfg.ckpt_every = total, BATCH, ckpt_every
    cfg.log_every, cfg.keep_ckpts, cfg.fsdp, cfg.progress = 1, 3, True, False
    result = train(cfg, run_dir, "givt", Stage(init_params=init, loss_fn=loss_fn,
                                               batches=batches))
    out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
           "device_count": jax.device_count(), "start": started[0] if started else None,
           "ids": seen, "losses": {int(h["step"]): h["loss"] for h in result.history}}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
