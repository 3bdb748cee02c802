"""Runs a few toy training steps per sharding mode and prints the losses as JSON.

Run in a subprocess by test_training, with XLA_FLAGS forcing several CPU devices.
"""
import json
import sys
import tempfile

import jax

from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import default_train_config, train


def losses(fsdp: bool, grad_accum: int = 1) -> list[float]:
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = 6, 1, 100, False
    cfg.fsdp, cfg.grad_accum = fsdp, grad_accum
    with tempfile.TemporaryDirectory() as d:
        r = train(cfg, d, "givt", toy_stage(toy_model(emb_dim=64, mlp_dim=128), batch_size=8))
    return [h["loss"] for h in r.history]


if __name__ == "__main__":
    out = {"devices": jax.device_count()}
    # dp | fsdp | fsdp_accum (FSDP, each batch of 8 in 2 micro-batches of one row per device)
    out.update({mode: losses(mode.startswith("fsdp"), 2 if mode.endswith("accum") else 1)
                for mode in sys.argv[1:]})
    print(json.dumps(out))
