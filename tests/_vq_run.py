"""A few training steps of a tiny VQ-VAE stage on synthetic batches: what the VQ tests
train (resume, several devices). Run as a script (with XLA_FLAGS forcing N CPU devices),
it prints the final dictionary, counts and a parameter checksum as JSON."""
import json
import sys
import tempfile
from collections.abc import Iterator

import jax
import numpy as np

from uvim_givt import config as config_lib
from uvim_givt.training import stages
from uvim_givt.training.trainer import Stage, TrainResult, default_train_config, train

OVERRIDES = ["vae.model.width=32", "vae.model.mlp_dim=64", "vae.model.depth=1",
             "vae.model.decoder_depth=1", "vae.model.num_heads=2", "vae.model.code_len=16",
             "vae.model.codeword_dim=8", "vae.model.dict_size=16",
             "vae.model.input_size=(32,32)", "data.image_size=32",
             "vae.model.code_dropout='random'", "vae.model.dict_momentum=0.5",
             "vae.model.min_count=0.3"]


def vq_stage(batch_size: int = 8) -> tuple[object, Stage]:
    """The tiny panoptic VQ-VAE (tokens=vq) and its trainer stage on synthetic batches:
    blocky label maps and images, the same for a step whether resumed or not."""
    cfg = config_lib.load_config("configs/panoptic.py:tokens=vq", OVERRIDES)
    kind = stages.stage_of(cfg, "vae")

    def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
        step = start
        while True:
            rs = np.random.RandomState(step)
            coarse = rs.randint(0, 4, (batch_size, 2, 4, 4))
            labels = np.kron(coarse, np.ones((1, 1, 8, 8), int)).transpose(0, 2, 3, 1)
            image = labels[..., :1].repeat(3, -1) / 2.0 - 1.0 + rs.randn(*labels.shape[:3], 3)
            yield {"labels": labels.astype(np.int32), "image": image.astype(np.float32)}
            step += 1

    return kind, Stage(kind.init, lambda p, b, k, s: kind.train_loss(p, s, b, k), batches,
                       init_state=kind.init_state)


def run(workdir: str, steps: int, total: int | None = None, ckpt_every: int = 100
        ) -> TrainResult:
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = steps, 1, ckpt_every, False
    return train(cfg, workdir, "vae", vq_stage()[1])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        r = run(d, int(sys.argv[1]))
    state = jax.tree_util.tree_map(np.asarray, r.params["state"])
    print(json.dumps({"devices": jax.device_count(),
                      "dictionary": state["dictionary"].tolist(),
                      "counts": state["counts"].tolist(),
                      "usage": [h["codebook_perplexity"] for h in r.history]}))
