"""The model path runs without TensorFlow (a standard JAX accelerator image has none).

In a fresh interpreter whose import system cannot find ``tensorflow`` or
``tensorflow_datasets``, every module of the models, sampling, training, checkpoints,
compat and the model benchmarks imports, and a tiny GIVT trains two steps from NumPy
arrays, writes its checkpoint and resumes from it. Only the input pipeline
(``uvim_givt.data.pipeline``, the TFDS builders) and the task plugins' tf.data label
code may need TensorFlow; the test checks that those do refuse here, so the blocker is
known to work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys

    class Hidden:
        # A finder that sees no TensorFlow: as if it were not installed.
        def __init__(self, finder):
            self.finder = finder
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                return None
            return self.finder.find_spec(name, path, target)
        def invalidate_caches(self):
            getattr(self.finder, "invalidate_caches", lambda: None)()

    sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]

    import uvim_givt
    # The input pipeline and the dataset builders are the tf.data side: they must refuse
    # (proves the blocker), everything else must import.
    TF_SIDE = {"uvim_givt.data.pipeline", "uvim_givt.data.embedded",
               "uvim_givt.data.embedded_builder"}
    for name in sorted(TF_SIDE):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} imported without TensorFlow: the blocker is broken")
    names = ["uvim_givt.config", "uvim_givt.rundir", "uvim_givt.schema", "uvim_givt.task",
             "uvim_givt.errors", "uvim_givt.data.catalog", "uvim_givt.data.images"]
    for pkg in ("models", "sampling", "training", "compat"):
        mod = importlib.import_module(f"uvim_givt.{pkg}")
        names += [f"uvim_givt.{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)]
    names += ["benchmarks.bench_train_step", "benchmarks.bench_sampling",
              "benchmarks.bench_precision", "benchmarks.gpu_suite"]
    for name in names:
        importlib.import_module(name)
    assert "tensorflow" not in sys.modules
    print("imported", len(names))

    import tempfile
    import numpy as np
    from uvim_givt.training import toy
    from uvim_givt.training.trainer import default_train_config, train

    cfg = default_train_config()
    cfg.total_steps, cfg.log_every, cfg.ckpt_every = 2, 1, 2
    with tempfile.TemporaryDirectory() as d:
        model = toy.toy_model(num_decoder_layers=1)
        first = train(cfg, d, "givt", toy.toy_stage(model, batch_size=4))
        cfg.total_steps = 3
        again = train(cfg, d, "givt", toy.toy_stage(model, batch_size=4))
    assert first.step == 2 and again.step == 3, (first.step, again.step)
    assert all(np.isfinite(h["loss"]) for h in first.history + again.history)
    assert "tensorflow" not in sys.modules
    print("trained", again.step)
""")


def test_model_path_imports_and_trains_without_tensorflow() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trained 3" in out.stdout, out.stdout
