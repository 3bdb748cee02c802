"""Runs a few toy training steps and prints the losses as JSON (for test_training)."""
import json
import sys
import tempfile

import jax

from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import default_train_config, train

if __name__ == "__main__":
    fsdp = sys.argv[1] == "fsdp"
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = 6, 1, 100, False
    cfg.fsdp = fsdp
    with tempfile.TemporaryDirectory() as d:
        r = train(cfg, d, "givt", toy_stage(toy_model(emb_dim=64, mlp_dim=128), batch_size=8))
    print(json.dumps({"devices": jax.device_count(), "losses": [h["loss"] for h in r.history]}))
