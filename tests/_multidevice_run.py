"""Runs a few toy training steps per sharding mode and prints the losses as JSON.

Run in a subprocess by test_training, with XLA_FLAGS forcing several CPU devices.
"""
import json
import sys
import tempfile

import jax

from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import default_train_config, train


def losses(fsdp: bool) -> list[float]:
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = 6, 1, 100, False
    cfg.fsdp = fsdp
    with tempfile.TemporaryDirectory() as d:
        r = train(cfg, d, "givt", toy_stage(toy_model(emb_dim=64, mlp_dim=128), batch_size=8))
    return [h["loss"] for h in r.history]


if __name__ == "__main__":
    out = {"devices": jax.device_count()}
    out.update({mode: losses(mode == "fsdp") for mode in sys.argv[1:]})
    print(json.dumps(out))
