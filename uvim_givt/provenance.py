"""Where a run came from: one entry per command that trained it, kept in run_info.json.

Each ``train`` invocation (the first one and every resume) appends to ``sessions``::

    {"command": "python -m tasks.panoptic train ...", "started": ISO time, "ended": ISO time
     or null while running / if killed, "host": ..., "user": ..., "devices": {"backend",
     "kind", "count", "processes"}, "versions": {"uvim_givt", "jax", ...}, "commit": {"sha",
     "dirty"} or null outside a git checkout, "data": {"source", "train_split", ...},
     "stages": [...], "outcome": "finished" | "stopped" | "failed: <error>"}

so a run directory says what code, libraries, machine and data produced it (the model card,
``evals/model_card.py``, and the leaderboard show it).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import importlib.metadata
import os
import shlex
import socket
import subprocess
import sys
from typing import Any

import ml_collections

#: the packages whose versions decide a run's numbers
PACKAGES = ("uvim_givt", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
            "tensorflow", "tensorflow-cpu", "tensorflow-datasets", "opencv-python-headless")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed versions of ``packages`` (those not installed are left out)."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit(path: str | None = None) -> dict[str, Any] | None:
    """The commit of the checkout holding this package, and whether it has uncommitted
    changes (None when it is not a git checkout, or git is missing)."""
    root = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def devices() -> dict[str, Any]:
    import jax

    devs = jax.devices()
    return {"backend": jax.default_backend(), "kind": devs[0].device_kind,
            "count": len(devs), "processes": jax.process_count()}


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``python -m tasks.panoptic train ...`` for a module run."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and argv:
        head = ["python", "-m", spec.name.removesuffix(".__main__")]
        return shlex.join(head + argv[1:])
    return shlex.join(["python"] + argv)


def session(cfg: ml_collections.ConfigDict, stages: list[str], command: str | None = None
            ) -> dict[str, Any]:
    """A new ``sessions`` entry for a command about to train ``stages`` of ``cfg``
    (``command``: as typed; default this process's command line)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {
        "command": command or command_line(), "started": now(), "ended": None, "outcome": None,
        "host": socket.gethostname(), "user": user, "devices": devices(),
        "versions": versions(), "commit": git_commit(), "python": sys.version.split()[0],
        "data": {"source": str(cfg.data.source), "train_split": str(cfg.data.train_split),
                 "image_size": int(cfg.data.image_size)},
        "stages": stages,
    }
