"""A toy training run for the SIGTERM test (tests/test_reliability.py): slow enough per
step for the test to signal it mid-run; the exit status is the command line's."""
import dataclasses
import sys
import time

from uvim_givt.errors import run_command
from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import default_train_config, train

TOTAL = 300


def config():
    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every, cfg.progress = TOTAL, 1, 1000, False
    return cfg


if __name__ == "__main__":
    stage = toy_stage(toy_model())
    if sys.argv[2:] == ["slow"]:
        stage = dataclasses.replace(stage, after_step=lambda params, step: time.sleep(0.02))
    sys.exit(run_command(lambda: train(config(), sys.argv[1], "givt", stage)))
