"""How much depth can the tiny stage-2 image encoder learn from the image in the budget?

A diagnostic, not a test: it trains the encoder of ``configs/depth.py`` (``size=tiny``
unless ``--config`` says otherwise) with a linear per-token head that regresses the 8x8
pixels of depth under each token (bin centres, L2 on valid pixels), with the stage-2 batch
size, steps and augmentation, then prints the validation RMSE in metres at the model's
resolution. It bounds what a generative stage 2 with the same encoder can reach in the same
number of steps, and compares encoder variants, e.g. without and with the conv stem::

    python benchmarks/probe_depth_encoder.py --set 'givt.model.stem=()'
    python benchmarks/probe_depth_encoder.py

Measured (2-core CPU, 1,500 steps, embedded data): 0.92 m without a stem, 0.82 m with a
(32, 64) stem;
predicting the training-set mean depth scores 1.45 m.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.depth import TASK, bin_centres, num_bins
from uvim_givt import config as config_lib
from uvim_givt.data import catalog, pipeline
from uvim_givt.models.builders import build_model


class _Probe(nn.Module):
    givt: nn.Module
    patch: int
    offset: float

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x = self.givt.encode(image, train=True)
        p = self.patch
        y = nn.Dense(p * p)(nn.LayerNorm()(x))
        b, n = y.shape[:2]
        g = int(round(n ** 0.5))
        y = y.reshape(b, g, g, p, p).transpose(0, 1, 3, 2, 4).reshape(b, g * p, g * p)
        return y + self.offset


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/depth.py")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=None, help="default: givt.train.total_steps")
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)
    cfg = config_lib.load_config(args.config, args.set)
    steps = args.steps or int(cfg.givt.train.total_steps)
    batch = int(cfg.givt.train.batch_size)
    patch = int(cfg.givt.model.patches[0])
    centres = jnp.asarray(bin_centres(cfg.data.min_depth, cfg.data.max_depth,
                                      num_bins(cfg)))
    model = _Probe(build_model("givt", cfg), patch, offset=float(np.mean(np.asarray(centres))))
    src = cfg.data.source

    def prep(ex, seed):
        out = TASK.preprocess(cfg, ex, "train", seed)
        return {"image": out["image"], "labels": out["labels"]}

    def depth(labels):
        k = labels[..., 0]
        return centres[k], k > 0

    it = pipeline.train_batches(lambda: catalog.load(TASK.readers, cfg, src, "train"), prep,
                                batch, 0, 0, int(cfg.data.shuffle_buffer))
    first = next(it)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(first["image"]))["params"]
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0, args.lr, min(100, steps // 2), steps),
                      weight_decay=1e-4)
    state = opt.init(params)

    @jax.jit
    def step(params, state, image, labels):
        d, valid = depth(labels)

        def loss(p):
            err = (model.apply({"params": p}, image) - d) ** 2
            return jnp.sum(err * valid) / jnp.maximum(valid.sum(), 1)
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    t0 = time.time()
    for i in range(steps):
        b = first if i == 0 else next(it)
        params, state, value = step(params, state, jnp.asarray(b["image"]),
                                    jnp.asarray(b["labels"]))
        if i % 250 == 0 or i == steps - 1:
            print(f"step {i}: train RMSE {float(value) ** 0.5:.3f} m ({time.time() - t0:.0f} s)",
                  flush=True)
    se = n = 0.0
    for b in pipeline.eval_batches(catalog.load(TASK.readers, cfg, src, cfg.data.val_split),
                                   lambda ex: TASK.preprocess(cfg, ex, "eval"), 50):
        d, valid = depth(jnp.asarray(b["labels"]))
        valid = valid & jnp.asarray(b["_valid"])[:, None, None]
        pred = model.apply({"params": params}, jnp.asarray(b["image"]))
        se += float(jnp.sum((pred - d) ** 2 * valid))
        n += float(valid.sum())
    print(f"validation RMSE {np.sqrt(se / n):.3f} m ({steps} steps, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
