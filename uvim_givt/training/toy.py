"""A toy latent distribution and a tiny GIVT stage on it: the smallest end-to-end
training, used by tests and as a smoke job (``python -m uvim_givt.training.toy``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from uvim_givt.models.givt import GIVT
from uvim_givt.training.objectives import givt_nll_loss
from uvim_givt.training.trainer import Stage, default_train_config, train


def toy_batch(step: int, batch_size: int, seq_len: int = 8, dim: int = 2,
              num_labels: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Class-dependent random walks: token t = label + sum of small Gaussian steps."""
    rs = np.random.RandomState([seed, step])
    labels = rs.randint(0, num_labels, batch_size)
    steps = rs.randn(batch_size, seq_len, dim) * 0.1
    tokens = np.cumsum(steps, axis=1) + labels[:, None, None]
    return {"tokens": tokens.astype(np.float32), "labels": labels.astype(np.int32)}


def toy_model(style: str = "ar", seq_len: int = 8, dim: int = 2, **kw) -> GIVT:
    cfg = dict(emb_dim=32, num_heads=2, mlp_dim=64, num_decoder_layers=2, seq_len=seq_len,
               out_dim=dim, num_labels=3, num_mixtures=2, head_kind="diag", style=style)
    cfg.update(kw)
    return GIVT(**cfg)


def toy_stage(model: GIVT, batch_size: int = 32, seed: int = 0) -> Stage:
    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        step = start
        while True:
            yield toy_batch(step, batch_size, model.seq_len, model.out_dim, seed=seed)
            step += 1

    def init(key):
        x = jnp.zeros((1, model.seq_len, model.out_dim))
        mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
        return model.init(key, x, jnp.zeros((1,), jnp.int32), input_mask=mask)["params"]

    def loss_fn(params, batch, key):
        return givt_nll_loss(model, params, batch["tokens"], key, labels=batch["labels"])

    return Stage(init_params=init, loss_fn=loss_fn, batches=batches)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default="runs/toy")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    cfg = default_train_config()
    cfg.total_steps = args.steps
    cfg.log_every = 50
    cfg.ckpt_every = 100
    result = train(cfg, args.workdir, "givt", toy_stage(toy_model()))
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"toy GIVT: NLL {first:.3f} -> {last:.3f} nats/token in {result.step} steps; "
          f"run directory: {args.workdir}")
    jax.effects_barrier()


if __name__ == "__main__":
    main()
