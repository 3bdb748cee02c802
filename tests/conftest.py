"""Session-wide test settings.

Most of the suite's time is XLA compiling tiny models, far more than running them. Two
settings, inherited by the xdist workers and the tests' subprocesses, cut it:

- XLA's backend optimisation off (``--xla_backend_optimization_level=0``): the same
  computation (the HLO and its fusions are unchanged, only LLVM's passes over the machine
  code are skipped); the tiny ImageNet run's training and evaluation take 18 s instead of
  40 s. A level already in ``XLA_FLAGS`` is kept.
- A persistent compilation cache, so a program compiled by one test (each end-to-end
  fixture, each resumed run, each subprocess) is not compiled again by the next. It lives in
  a temporary folder of this session (removed at its end), so no test reads a cache left by
  an earlier version of the code; a cache named by ``JAX_COMPILATION_CACHE_DIR`` is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Set at import, before any test module imports JAX (JAX reads these when it loads); xdist
# workers and the tests' subprocesses inherit them from the controller's environment.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
if OPT_LEVEL_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), f"{OPT_LEVEL_FLAG}=0"]))

_OWNED_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWNED_CACHE = tempfile.mkdtemp(prefix="uvim_givt_test_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWNED_CACHE
    # programs compiled in under a quarter second are cheaper to compile than to look up
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")


def pytest_unconfigure(config) -> None:
    if _OWNED_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)
