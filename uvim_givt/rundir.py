"""Run-directory bookkeeping: the one place that reads and writes a run's files.

A run directory holds everything about one run::

    config.json        the resolved config (a rerun must match it: it resumes)
    run_info.json      {"num_params": {stage: n}, "train_time_s": {stage: s}, "sessions":
                        [provenance of each training command: uvim_givt.provenance]}
    MODEL_CARD.md      what the run is, its data, results and provenance (evals.model_card)
    checkpoints/       orbax checkpoints per stage (training.checkpoint)
    metrics.jsonl      training curves (training.metrics), TensorBoard events
    eval/*.json        one record per evaluation (below)
    predictions/ samples/   PNGs

An eval record is the only thing the leaderboard reads::

    {"task": "panoptic", "stage": "vae" | "givt" | "baseline", "evaluator": "sampled",
     "split": "validation", "data": "embedded", "step": 1000, "metrics": {"PQ": 41.2},
     "num_examples": 200, "config_hash": "ab12...", "origin": "train" | "eval" | "cli",
     "time": "2026-11-22T01:02:03Z", "extra": {...}}

Its file name carries every field that tells two evaluations apart (stage,
evaluator, split, data, step, origin), so no two commands overwrite each other.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections

from uvim_givt import config as config_lib
from uvim_givt.errors import UserError

REQUIRED_KEYS = ("task", "stage", "split", "data", "step", "metrics")


# ----------------------------------------------------------------------------- config
def config_hash(config: Mapping[str, Any] | ml_collections.ConfigDict | str) -> str:
    """Stable short hash of a resolved config, for telling runs apart."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config_lib.to_dict(config)
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (missing counts)."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


#: Keys that say how a step is laid out on the machine, not what is trained (parameters
#: and optimiser state split over devices, micro-batches, stage-1 codes precomputed): a run
#: may resume with other values (e.g. on fewer devices); config.json then holds the new ones.
LAYOUT_KEYS = re.compile(r"(vae|givt)\.train\.(fsdp|grad_accum|cached_codes)")


def start_run(run_dir: str, cfg: ml_collections.ConfigDict, write: bool = True) -> None:
    """Creates ``run_dir`` with ``config.json``, or checks a rerun uses the same config up to
    :data:`LAYOUT_KEYS` (``write=False``: only the check, for the processes of a run that
    are not process 0)."""
    path = os.path.join(run_dir, "config.json")
    if os.path.isfile(path):
        saved = config_lib.load_saved_config(run_dir)  # refuses an older run format
        diff = [k for k in config_diff(config_lib.to_dict(saved), config_lib.to_dict(cfg))
                if not LAYOUT_KEYS.fullmatch(k)]
        if diff:
            raise UserError(
                f"{run_dir} was created with a different config ({', '.join(diff[:8])}"
                f"{' ...' if len(diff) > 8 else ''} differ). Rerunning the same command "
                "resumes; to train with other settings, pass another --workdir.")
    if write:
        config_lib.save_config(cfg, run_dir)


def load_run_config(run_dir: str, task: str | None = None) -> ml_collections.ConfigDict:
    """The saved config of a run directory (checked to belong to ``task`` when given)."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory {run_dir} does not exist")
    cfg = config_lib.load_saved_config(run_dir)
    if task is not None and cfg.get("task") != task:
        raise UserError(f"{run_dir} is a {cfg.get('task')!r} run, not {task!r}")
    return cfg


def default_workdir(cfg: ml_collections.ConfigDict, source_kind: str, source_arg: str,
                    suffix: str = "") -> str:
    """``runs/<task>_<size>_<data>[_<suffix>]``."""
    tag = source_kind if source_kind == "embedded" else \
        source_arg.replace("/", "_").replace(":", "_")
    name = f"{cfg.task}_{cfg.size}_{os.path.basename(tag.rstrip('/'))}"
    return os.path.join("runs", name + (f"_{suffix}" if suffix else ""))


@contextlib.contextmanager
def locked(run_dir: str, flag: str = "--workdir") -> Iterator[None]:
    """Holds an exclusive lock on ``run_dir`` (``RUN/.lock``) so that two trainings never
    write the same run; a second one stops at once, naming the holder. The OS drops the
    lock when its process dies, so a killed run never leaves a stale one behind; a clean
    exit removes the file."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"{run_dir} is a file, not a directory: pass another folder")
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{run_dir} is in use by {holder}; wait for it to finish (or "
                            f"stop it), or pass another {flag}") from None
        # The holder before us may have removed the file after we opened it: then this
        # lock is on a dead inode, and the next command would lock a new file. Retry.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: no one can take a lock on it meanwhile
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- run_info
def read_run_info(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "run_info.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def update_run_info(run_dir: str, **fields: Any) -> str:
    """Merges ``fields`` into run_info.json (dict values are merged key by key)."""
    info = read_run_info(run_dir)
    for key, value in fields.items():
        if isinstance(value, Mapping):
            info.setdefault(key, {}).update(value)
        else:
            info[key] = value
    path = os.path.join(run_dir, "run_info.json")
    write_json(path, info)
    return path


def begin_session(run_dir: str, entry: Mapping[str, Any]) -> int:
    """Appends a training command's provenance (:mod:`uvim_givt.provenance`) to
    run_info.json's ``sessions``; returns its index."""
    info = read_run_info(run_dir)
    sessions = list(info.get("sessions", []))
    sessions.append(dict(entry))
    update_run_info(run_dir, sessions=sessions)
    return len(sessions) - 1


def end_session(run_dir: str, index: int, outcome: str, ended: str) -> None:
    """Records how session ``index`` ended ("finished", "stopped ...", "failed: ...")."""
    sessions = list(read_run_info(run_dir).get("sessions", []))
    if 0 <= index < len(sessions):
        sessions[index] = dict(sessions[index], ended=ended, outcome=outcome)
        update_run_info(run_dir, sessions=sessions)


# ---------------------------------------------------------------------------- records
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def record_name(record: Mapping[str, Any]) -> str:
    """The file name (without .json) of a record: every field that tells two apart."""
    parts = [record["stage"], record.get("evaluator") or "", record["split"],
             record["data"], f"step{int(record['step']):08d}", record.get("origin") or "",
             record.get("tag") or ""]
    return "_".join(_slug(str(p)) for p in parts if p != "")


def write_eval_record(run_dir: str, record: Mapping[str, Any]) -> str:
    """Validates and writes one record atomically (process 0 of a multi-process run
    only); returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"eval record is missing keys {missing}: {sorted(record)}")
    rec = dict(record)
    rec.setdefault("time", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    rec["metrics"] = {k: float(v) for k, v in rec["metrics"].items()}
    path = os.path.join(run_dir, "eval", record_name(rec) + ".json")
    import jax  # the process index; jax is loaded wherever records are made
    if jax.process_index() == 0:
        write_json(path, rec)
    return path


def read_eval_records(run_dir: str, on_error: Callable[[str, str], None] | None = None
                      ) -> list[dict[str, Any]]:
    """All records of a run, by stage then step, each with its file as ``"_path"``. A file
    that is unreadable or not an eval record raises naming the file; with ``on_error``,
    ``on_error(path, why)`` is called instead and that file left out."""
    out_dir = os.path.join(run_dir, "eval")
    if not os.path.isdir(out_dir):
        return []
    records = []
    for name in sorted(os.listdir(out_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(out_dir, name)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError) as e:
            why, error, cause = f"unreadable ({e})", f"unreadable eval record {path}: {e}", e
        else:
            if isinstance(rec, dict) and all(k in rec for k in REQUIRED_KEYS):
                rec["_path"] = path
                records.append(rec)
                continue
            why = f"not an eval record (needs keys {', '.join(REQUIRED_KEYS)})"
            error, cause = f"{path} is not an eval record (needs keys {REQUIRED_KEYS})", None
        if on_error is None:
            raise ValueError(error) from cause
        on_error(path, why)
    records.sort(key=lambda r: (str(r["stage"]), r["step"]))
    return records


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (a temporary file renamed), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)
