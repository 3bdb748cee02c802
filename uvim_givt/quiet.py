"""A quiet console: TensorFlow's C++ log lines are dropped unless ``--verbose``.

Importing TensorFlow prints absl/oneDNN/CPU-feature notices straight to file
descriptor 2 (``TF_CPP_MIN_LOG_LEVEL`` no longer silences them: they are logged
before absl is initialised). Every command imports TensorFlow through the input
pipeline, so those lines used to open every command's output. :func:`install`
puts an import hook in front of ``tensorflow``: while the package executes, fd 2
goes to a temporary file; afterwards the known notices are dropped and anything
else (a real error, a Python warning) is written back to stderr. ``--verbose``
on the command line, or ``UVIM_GIVT_VERBOSE=1``, keeps everything.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import importlib.machinery
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from types import ModuleType

# Start-up notices of TensorFlow's C++ runtime: absl's "before InitializeLog"
# banner, info/warning records (I/W + MMDD), and the CPU feature hint's second line.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IW]\d{4} "
    r"|To enable the following instructions:"
    r"|rebuild TensorFlow with the appropriate compiler flags)"
)


def verbose_requested(argv: list[str] | None = None) -> bool:
    """Whether the command line (or ``UVIM_GIVT_VERBOSE``) asks for the full start-up log."""
    argv = sys.argv if argv is None else argv
    return "--verbose" in argv or os.environ.get("UVIM_GIVT_VERBOSE", "") not in ("", "0")


def filter_noise(text: str) -> str:
    """``text`` without TensorFlow's start-up notices (lines kept in order)."""
    kept = [line for line in text.splitlines(keepends=True) if not _NOISE.match(line)]
    return "".join(kept)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with fd 2 captured, then replays what is not noise."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        failed = True
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                self._loader.exec_module(module)
                failed = False
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", "replace")
                # On a failed import every line may matter.
                sys.stderr.write(text if failed else filter_noise(text))
                sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package only."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Puts the quiet TensorFlow import in place (once; a no-op under ``--verbose``)."""
    if "tensorflow" in sys.modules or verbose_requested():
        return
    # TensorFlow's C++ records after start-up (tf.data notices, oneDNN fallbacks) obey
    # this level; 3 keeps only fatal ones. A value the user set is left alone.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Holds what the block writes to stderr (``sys.stderr`` and file descriptor 2, where
    orbax's, TensorStore's and asyncio's tracebacks of a failed checkpoint read go): written
    back when the block succeeds, dropped when it raises, since the caller then reports the
    failure in one line of its own. ``--verbose`` keeps everything."""
    if verbose_requested():
        yield
        return
    sys.stderr.flush()
    saved_fd, saved_py = os.dup(2), sys.stderr
    held_py = io.StringIO()
    ok = False
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        sys.stderr = held_py
        try:
            yield
            ok = True
        finally:
            if not ok:
                # The failed read's leftovers report themselves late: asyncio logs "Task
                # exception was never retrieved" when the task is collected, and
                # TensorStore's callbacks find the event loop closed a moment later.
                gc.collect()
                time.sleep(0.3)
                gc.collect()
                saved_py.flush()
            sys.stderr = saved_py
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if ok:
                capture.seek(0)
                sys.stderr.write(capture.read().decode("utf-8", "replace")
                                 + held_py.getvalue())
                sys.stderr.flush()
