"""Metric sinks of a run: metrics.jsonl (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Mapping

from tensorboardX import SummaryWriter


def drop_rows_after(path: str, stage: str, step: int) -> int:
    """Rewrites ``path`` (atomically) without the rows of ``stage`` past ``step``; returns
    how many were dropped. A torn last line (a kill mid-write) is dropped too."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (row.get("stage") == stage and int(row.get("step", 0)) > step):
            kept.append(line)
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(k + "\n" for k in kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)


def progress_interval() -> float:
    """Seconds between progress-bar refreshes: live on a terminal, sparse in a log file
    (a redirected run would otherwise write one line per step)."""
    return 0.1 if sys.stderr.isatty() else 30.0


def _board(folder: str) -> SummaryWriter:
    """A TensorBoard writer with a file of its own. tensorboardX names event files by the
    second and the host only, so two writers opened in the same second (two quick
    evaluations, a resume) would write one file and the first one's events would be lost."""
    return SummaryWriter(folder, filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")


def write_eval_board(run_dir: str, record: Mapping) -> None:
    """An evaluation record in TensorBoard (``RUN/tensorboard/eval``): every metric as the
    scalar ``<evaluator>[@tag]/<metric>`` at the record's step, and the pictures it wrote
    (``extra.pngs``, paths relative to the run) as images, so the dashboard shows what the
    leaderboard shows. Training curves are the stages' own boards."""
    import numpy as np
    from PIL import Image

    name = record["evaluator"] + (f"@{record['tag']}" if record.get("tag") else "")
    step = int(record["step"])
    tb = _board(os.path.join(run_dir, "tensorboard", "eval"))
    try:
        for key, value in record["metrics"].items():
            tb.add_scalar(f"{name}/{key}", float(value), step)
        for rel in (record.get("extra") or {}).get("pngs", []):
            try:
                with Image.open(os.path.join(run_dir, rel)) as im:
                    pixels = np.asarray(im.convert("RGB"))
            except OSError:
                continue  # a picture that could not be written was warned about then
            tb.add_image(f"{name}/{os.path.splitext(os.path.basename(rel))[0]}", pixels,
                         step, dataformats="HWC")
    finally:
        tb.close()


class MetricsWriter:
    """Appends ``{"stage", "step", "time", **metrics}`` lines and TensorBoard scalars.

    ``resume_from``: the step training restarts from. Rows this stage logged after it (work
    lost with the process that logged them, and about to be redone) are dropped first, so
    every step appears once in metrics.jsonl.
    """

    def __init__(self, run_dir: str, stage: str, enabled: bool = True, resume_from: int = 0):
        self.enabled = enabled
        self.stage = stage
        self.start = time.time()
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if enabled:
            drop_rows_after(self.path, stage, resume_from)
        self._tb = _board(os.path.join(run_dir, "tensorboard", stage)) if enabled else None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, "step": int(step), "time": round(time.time() - self.start, 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in metrics.items():
            self._tb.add_scalar(f"{self.stage}/{k}", float(v), int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
