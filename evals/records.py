"""Evaluation records: one JSON file per evaluation in ``RUN_DIR/eval/``.

Every evaluator (inside training or from the command line) writes the same
record shape, and the leaderboard reads nothing else:

    {
      "task": "panoptic",            # task name
      "stage": "vae" | "givt",       # which model was evaluated ("oracle" runs are stage "vae")
      "split": "validation",
      "data": "embedded",            # data source string as given to --data
      "step": 1000,                  # training step of the evaluated checkpoint
      "metrics": {"PQ": 41.2, ...},  # flat name -> float
      "num_examples": 200,
      "config_hash": "ab12...",      # sha1 of the resolved config JSON
      "time": "2026-11-22T01:02:03Z",
      "extra": {...}                 # optional: per-class tables, sample paths, ...
    }
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

REQUIRED_KEYS = ("task", "stage", "split", "data", "step", "metrics")


def config_hash(config: Mapping[str, Any] | str) -> str:
    """Stable short hash of a (resolved) config, for telling runs apart."""
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def write_eval_record(run_dir: str, record: Mapping[str, Any]) -> str:
    """Validates and writes one record; returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"eval record is missing keys {missing}: {sorted(record)}")
    rec = dict(record)
    rec.setdefault("time", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    rec["metrics"] = {k: float(v) for k, v in rec["metrics"].items()}
    out_dir = os.path.join(run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    name = f"{_slug(rec['stage'])}_{_slug(rec['split'])}_step{int(rec['step']):08d}"
    if rec.get("tag"):
        name += f"_{_slug(str(rec['tag']))}"
    path = os.path.join(out_dir, name + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)
    return path


def read_eval_records(run_dir: str) -> list[dict[str, Any]]:
    """All records of a run, oldest step first. Unreadable files raise naming the file."""
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
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable eval record {path}: {e}") from e
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED_KEYS):
            raise ValueError(f"{path} is not an eval record (needs keys {REQUIRED_KEYS})")
        rec["_path"] = path
        records.append(rec)
    records.sort(key=lambda r: (r["stage"], r["step"]))
    return records
