"""Leaderboard: every run's eval records in one table per task, with plots and samples.

    python -m evals.leaderboard [RUN_DIR ...] [--root runs/] [--out report/]
                                [--format md|html|both] [--log-loss]

Finds run directories under each ``--root``, following symlinks (a folder of links
to runs is the usual way to gather them); loops, second paths to a run, broken
links, unreadable folders and folders without run files are listed in the report's
"Skipped folders" with the reason, as are runs without eval records.

Reads, per run directory: ``eval/*.json`` (:func:`uvim_givt.rundir.read_eval_records`),
and when present ``config.json`` (``task``, ``size``, ``model``,
``<stage>.train.total_steps``), ``metrics.jsonl`` (``{"stage", "step", "loss", ...,
"time"}`` per line), ``run_info.json`` (``{"num_params": {stage: n}, "train_time_s":
{stage: s}}``) and PNGs under ``samples/`` or ``predictions/``. Missing optional files
are fine; unreadable ones are reported in the report's warnings, never silently skipped.

Plots, per task: training curves (a column per stage, as each stage counts its own
steps: every run's training loss with its held-out loss evaluations on top, the
stage's headline eval metric below, on the same step axis; ``--log-loss`` puts the
loss panels on a log scale), and a bar per run and stage of the headline metric (PQ,
RMSE, FID) beside the published values drawn as labelled horizontal lines. Counters
(``num_images``, ``time``, ...: see :func:`is_counter`) are never drawn or tabled as
metrics; the number of evaluated images goes into the "data" column.

Writes ``report/leaderboard.md`` (plots and thumbnails as files next to it) and
``report/leaderboard.html`` (one self-contained file: images inlined as data
URIs). With ``--format md`` the markdown is also printed to stdout with aligned
columns. Each table ends with the published numbers of the GIVT / UViM papers,
marked "published (real dataset)": the project's embedded datasets are small
stand-ins, so those rows are a reference point, not a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as _dt
import html
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from uvim_givt.errors import ArgumentParser, UserError, add_verbose_argument, run_command
from uvim_givt.rundir import read_eval_records

PUBLISHED_LABEL = "published (real dataset)"

# (task, model, data, metric, value): the papers' numbers (GIVT, UViM), embedded so a
# fresh clone needs nothing else.
PUBLISHED_RESULTS: tuple[tuple[str, str, str, str, float], ...] = (
    ("panoptic", "VAE stage 1 (oracle: encode GT, decode)", "COCO 2017 val", "PQ", 71.0),
    ("panoptic", "GIVT stage 2", "COCO 2017 val", "PQ", 40.2),
    ("panoptic", "UViM (VQ-VAE, discrete)", "COCO 2017 val", "PQ", 45.8),
    ("depth", "VAE stage 1 (oracle)", "NYU Depth v2 val", "RMSE", 0.195),
    ("depth", "GIVT stage 2", "NYU Depth v2 val", "RMSE", 0.474),
    ("depth", "UViM (VQ-VAE, discrete)", "NYU Depth v2 val", "RMSE", 0.467),
    ("imagenet", "GIVT-Causal 256px, t=0.95, DB-CFG 0.4", "ImageNet 256", "FID", 3.35),
    ("imagenet", "GIVT-MaskGIT 256px, t_C=35, DB-CFG 0.1", "ImageNet 256", "FID", 4.53),
    ("imagenet", "GIVT-MaskGIT 512px, t_C=140", "ImageNet 512", "FID", 4.86),
)

TASK_ORDER = ("panoptic", "depth", "imagenet")
TASK_ALIASES = {"generation": "imagenet"}
# Known metrics first, in this order; then any other metric alphabetically.
METRIC_ORDER = {
    "panoptic": ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"),
    "depth": ("RMSE", "AbsRel", "log10", "delta1", "delta2", "delta3"),
    "imagenet": ("FID", "FID_recon", "IS", "IS_std", "class_accuracy"),
}
# Metric the rows are ranked by, and whether higher is better.
PRIMARY_METRIC = {"panoptic": ("PQ", True), "depth": ("RMSE", False), "imagenet": ("FID", False)}
# Units shown on plot axes.
METRIC_UNITS = {"PQ": "%", "SQ": "%", "RQ": "%", "RMSE": "m"}
# Counts and bookkeeping that evaluators and the trainer log beside their metrics: shown
# as counts (the "data" column), never as metrics. Besides these names, any name whose
# last part starts with "num_" or ends in "_count" is a counter (see is_counter).
COUNTER_NAMES = frozenset({
    "num_images", "num_examples", "num_samples", "num_reference", "num_classes", "step",
    "steps", "time", "epoch", "steps_per_s", "examples_per_s", "sampling_seconds",
    "train_time_s", "num_images_without_valid_pixels",
})
# Stage columns of the training-curve plots, in this order; other stages follow.
STAGE_ORDER = ("vae", "givt")
STAGE_TITLES = {"vae": "stage 1 (VAE)", "givt": "stage 2 (GIVT)"}
# A held-out loss record's metric in the unit of the stage's training loss: stage 1
# logs the beta-weighted loss, stage 2 its NLL per token.
HELDOUT_LOSS_KEYS = ("nll_per_token", "loss")
IMAGE_DIRS = ("samples", "predictions")
IMAGES_PER_RUN = 4
THUMB_SIZE = 256
BASE_COLUMNS = ("run", "stage", "model size", "parameters", "data", "steps", "training time")


class LeaderboardError(UserError, ValueError):
    """A run directory or argument that cannot be used as given."""


# ----------------------------------------------------------------------------- gathering


@dataclasses.dataclass
class Run:
    """Everything the leaderboard knows about one run directory."""

    name: str
    path: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    log: list[dict[str, Any]]  # metrics.jsonl lines
    info: dict[str, Any]  # run_info.json
    images: list[str]

    @property
    def tasks(self) -> list[str]:
        found = {_canonical_task(r["task"]) for r in self.records}
        if not found and isinstance(self.config.get("task"), str):
            found = {_canonical_task(self.config["task"])}
        return sorted(found)


def _canonical_task(task: str) -> str:
    return TASK_ALIASES.get(task, task)


RUN_FILES = ("config.json", "metrics.jsonl", "run_info.json", "eval")


def is_run_dir(path: str) -> bool:
    """A directory holding at least one of the files a run writes."""
    return any(os.path.exists(os.path.join(path, n)) for n in RUN_FILES)


def _under(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip(os.sep) + os.sep)


def find_run_dirs(root: str, skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Run directories under ``root``, following symlinks (not descending into a run).

    ``skipped`` receives ``(folder, why)`` for what was not searched or held no run: a
    symlink loop, a second path to a folder already searched, a broken symlink, an
    unreadable folder, a folder without run files (the topmost one of such a subtree).
    Hidden folders (``.git``) are passed over silently.
    """
    skipped = [] if skipped is None else skipped
    found: list[str] = []
    seen = {os.path.realpath(root): root}  # real path -> the first path it was reached by
    empty: list[str] = []  # searched folders that are no run

    def unreadable(e: OSError) -> None:
        skipped.append((str(e.filename), f"unreadable ({e.strerror or e})"))

    # followlinks: run folders gathered by symlinks are the common case; the seen-set
    # keeps a link to an ancestor from looping and a second link from double counting.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        if is_run_dir(dirpath):
            found.append(dirpath)
            dirnames[:] = []
            continue
        if dirpath != root:
            empty.append(dirpath)
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            child = os.path.join(dirpath, d)
            real = os.path.realpath(child)
            if _under(here, real):  # a link to the folder itself or one above it
                skipped.append((child, f"a symlink loop (to {os.readlink(child)}, a folder "
                                "above it)"))
                continue
            if real in seen:
                skipped.append((child, f"the same folder as {seen[real]} (read once)"))
                continue
            seen[real] = child
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            link = os.path.join(dirpath, f)
            if os.path.islink(link) and not os.path.exists(link):
                skipped.append((link, f"a broken symlink (to {os.readlink(link)})"))
    above_runs = set()  # the walked folders with a run somewhere below
    for r in found:
        while r not in above_runs and r != root and os.path.dirname(r) != r:
            above_runs.add(r)
            r = os.path.dirname(r)
    runless = {d for d in empty if d not in above_runs} - {p for p, _ in skipped}
    for d in sorted(runless):  # the topmost folder of each subtree without a run
        if os.path.dirname(d) not in runless:
            skipped.append((d, "no run files (" + ", ".join(RUN_FILES[:3]) + " or eval/)"))
    return sorted(found)


def _read_json(path: str, warnings: list[str]) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        warnings.append(f"unreadable {path} (ignored): {e}")
        return {}
    if not isinstance(data, dict):
        warnings.append(f"{path} is not a JSON object (ignored)")
        return {}
    return data


def _read_jsonl(path: str, warnings: list[str]) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    rows, bad = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int | float):
                rows.append(row)
            else:
                bad += 1
    if bad:
        warnings.append(f"{path}: {bad} unreadable line(s) skipped")
    rows.sort(key=lambda r: r["step"])
    return rows


def _find_images(run_dir: str) -> list[str]:
    paths = []
    for sub in IMAGE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(run_dir, sub)):
            paths += [os.path.join(dirpath, f) for f in files if f.lower().endswith(".png")]
    # The most recent few, shown in name order.
    recent = sorted(paths, key=lambda p: (os.path.getmtime(p), p))[-IMAGES_PER_RUN:]
    return sorted(recent)


def load_run(path: str, name: str, warnings: list[str]) -> Run:
    """Reads one run directory; optional files may be missing."""
    try:
        records = read_eval_records(path)
    except ValueError as e:
        warnings.append(f"run {name}: eval records not used: {e}")
        records = []
    return Run(
        name=name,
        path=path,
        config=_read_json(os.path.join(path, "config.json"), warnings),
        records=records,
        log=_read_jsonl(os.path.join(path, "metrics.jsonl"), warnings),
        info=_read_json(os.path.join(path, "run_info.json"), warnings),
        images=_find_images(path),
    )


def gather_runs(run_dirs: Sequence[str], roots: Sequence[str], warnings: list[str],
                skipped: list[tuple[str, str]] | None = None) -> list[Run]:
    """Runs named directly (a directory that is no run is searched like a root) + under roots.

    ``skipped`` receives ``(folder, why)`` for every folder passed over (see
    :func:`find_run_dirs`), including a second path to a run already read.
    """
    skipped = [] if skipped is None else skipped
    named: list[tuple[str, str]] = []
    for d in run_dirs:
        if not os.path.isdir(d):
            raise LeaderboardError(f"run directory {d} does not exist")
        if is_run_dir(d):
            rel = os.path.relpath(d)
            named.append((d, os.path.basename(os.path.abspath(d)) if rel.startswith("..") else rel))
        else:
            roots = [*roots, d]
    for root in roots:
        if not os.path.isdir(root):
            raise LeaderboardError(f"runs root {root} does not exist")
        for d in find_run_dirs(root, skipped):
            rel = os.path.relpath(d, root)
            named.append((d, os.path.basename(os.path.abspath(d)) if rel == "." else rel))
    runs, seen, names = [], {}, set()
    for d, name in named:
        real = os.path.realpath(d)
        if real in seen:
            skipped.append((d, f"the same folder as {seen[real]} (read once)"))
            continue
        seen[real] = d
        base, k = name, 2
        while name in names:
            name, k = f"{base}~{k}", k + 1
        names.add(name)
        runs.append(load_run(d, name, warnings))
    return runs


# ----------------------------------------------------------------------------- tables


def _config_value(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, else the first ``key`` one or two levels down."""
    if key in config:
        return config[key]
    for level in (1, 2):
        stack = [config]
        for _ in range(level):
            stack = [v for d in stack for v in d.values() if isinstance(v, dict)]
        for d in stack:
            if key in d and not isinstance(d[key], dict):
                return d[key]
    return None


def _stage_total_steps(config: dict[str, Any], stage: str) -> Any:
    """``<stage>.train.total_steps`` (each stage counts its own steps), else any
    ``total_steps`` of the config; None for a stage that does not train (baseline)."""
    group = config.get(stage)
    if isinstance(group, dict):
        train = group.get("train")
        if isinstance(train, dict) and "total_steps" in train:
            return train["total_steps"]
    if any(isinstance(config.get(s), dict) for s in STAGE_ORDER):
        return None  # a per-stage config without this stage
    return _config_value(config, "total_steps")


def _by_stage(value: Any, stage: str) -> Any:
    if isinstance(value, dict):
        return value.get(stage)
    return value


def format_count(n: Any) -> str:
    """12345678 -> '12.3M'."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def format_duration(seconds: Any) -> str:
    """3725 -> '1h02m'; 65 -> '1m05s'; 4.2 -> '4.2s'."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return ""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def format_metric(v: Any) -> str:
    """Compact number: one decimal from 10 up (PQ 40.2, FID 12.5), else 4 significant digits."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return ""
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.4g}"


def _train_time(run: Run, stage: str, step: int) -> Any:
    t = _by_stage(run.info.get("train_time_s"), stage)
    if t is not None:
        return t
    # Wall time logged at the last step not after the evaluated one.
    times = [r["time"] for r in run.log
             if r["step"] <= step and isinstance(r.get("time"), int | float)]
    return times[-1] if times else None


def _model_size(config: dict[str, Any]) -> str:
    size = _config_value(config, "size")
    model = config.get("model")
    if isinstance(model, dict):
        model = model.get("name") or model.get("type")
    parts = [str(p) for p in (model, size) if isinstance(p, str | int) and p != ""]
    return "/".join(parts)


def latest_records(run: Run, task: str) -> list[dict[str, Any]]:
    """The latest record (by step, then time) of each (stage, evaluator, split, data) of
    ``task``: the same evaluation run by two commands is shown once."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in run.records:
        if _canonical_task(r["task"]) != task or (r.get("extra") or {}).get("periodic"):
            continue
        key = (r["stage"], _evaluator(r), r["split"], r["data"])
        if key not in latest or (r["step"], r.get("time", "")) >= (
                latest[key]["step"], latest[key].get("time", "")):
            latest[key] = r
    return [latest[k] for k in sorted(latest, key=lambda k: tuple(map(str, k)))]


def _evaluator(record: dict[str, Any]) -> str:
    """The evaluator that wrote a record (older records name it ``tag``)."""
    return str(record.get("evaluator") or record.get("tag") or "")


def is_counter(name: str) -> bool:
    """A count or bookkeeping value (``num_images``, ``eval/oracle/num_images``, ``time``)."""
    last = name.rsplit("/", 1)[-1]
    return (name in COUNTER_NAMES or last in COUNTER_NAMES or last.startswith("num_")
            or last.endswith("_count"))


def metric_items(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numeric metrics, counters left out."""
    out = {}
    for k, v in (record.get("metrics") or {}).items():
        if (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                and not is_counter(k)):
            out[k] = float(v)
    return out


def _num_examples(record: dict[str, Any]) -> Any:
    n = record.get("num_examples")
    if n is None:
        n = (record.get("metrics") or {}).get("num_images")
    return int(n) if isinstance(n, int | float) and not isinstance(n, bool) and n > 0 else None


def ordered_metrics(task: str, names: set[str]) -> list[str]:
    known = [m for m in METRIC_ORDER.get(task, ()) if m in names]
    return known + sorted(names - set(known))


@dataclasses.dataclass
class Table:
    """One task's leaderboard: header, our rows, published rows."""

    task: str
    columns: list[str]
    rows: list[list[str]]
    published: list[list[str]]
    numeric: list[bool]


def build_table(task: str, runs: Sequence[Run]) -> Table:
    """Rows of our runs (best first by the task's primary metric), then published rows."""
    entries = [(run, rec) for run in runs for rec in latest_records(run, task)]
    published = [p for p in PUBLISHED_RESULTS if p[0] == task]
    names = ({m for _, rec in entries for m in rec["metrics"] if not is_counter(m)}
             | {p[3] for p in published})
    metrics = ordered_metrics(task, names)
    primary = PRIMARY_METRIC.get(task)
    if primary:
        name, higher = primary

        def rank(entry: tuple[Run, dict[str, Any]]) -> tuple:
            v = entry[1]["metrics"].get(name)
            if not isinstance(v, int | float) or not math.isfinite(v):
                return (1, 0.0, entry[0].name)
            return (0, -v if higher else v, entry[0].name)

        entries.sort(key=rank)
    rows = []
    for run, rec in entries:
        stage = str(rec["stage"]) + (f" [{_evaluator(rec)}]" if _evaluator(rec) else "")
        total = _stage_total_steps(run.config, str(rec["stage"]))
        step = int(rec["step"])
        steps = f"{step}/{total}" if isinstance(total, int) and total != step else str(step)
        rows.append([
            run.name,
            stage,
            _model_size(run.config),
            format_count(_by_stage(run.info.get("num_params"), rec["stage"])),
            f"{rec['data']} {rec['split']}" + (f" ({n} images)" if (n := _num_examples(rec))
                                               else ""),
            steps,
            format_duration(_train_time(run, rec["stage"], step)),
            *(format_metric(rec["metrics"].get(m)) for m in metrics),
        ])
    pub_rows = [
        [PUBLISHED_LABEL, model, "paper", "", data, "", "",
         *(format_metric(value) if m == metric else "" for m in metrics)]
        for _, model, data, metric, value in published
    ]
    columns = [*BASE_COLUMNS, *metrics]
    numeric = [c in ("parameters", "steps", "training time") or c in metrics for c in columns]
    return Table(task, columns, rows, pub_rows, numeric)


def report_tasks(runs: Sequence[Run]) -> list[str]:
    """Tasks with runs or published results, the known ones first."""
    found = {t for run in runs for t in run.tasks}
    return [t for t in TASK_ORDER] + sorted(found - set(TASK_ORDER))


# ----------------------------------------------------------------------------- plots/images


Points = list[tuple[int, float]]


@dataclasses.dataclass
class StageCurves:
    """What the training-curve plot draws for one stage of one task."""

    stage: str
    train_loss: dict[str, Points]  # run -> (step, loss) from metrics.jsonl
    heldout_loss: dict[str, Points]  # run -> (step, loss) from held-out loss records
    metric: str | None  # the stage's headline eval metric
    evals: dict[tuple[str, str], Points]  # (run, evaluator label) -> (step, metric)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_loss_record(record: dict[str, Any]) -> bool:
    kind = record.get("kind")
    return kind == "loss" if kind else _evaluator(record).endswith("_loss")


def _stage_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def _add_point(series: dict, key: Any, step: int, value: float, when: str = "") -> None:
    """One point per step: a step evaluated twice keeps its latest value."""
    by_step = series.setdefault(key, {})
    if step not in by_step or when >= by_step[step][0]:
        by_step[step] = (when, value)


def _points(series: dict) -> dict[Any, Points]:
    return {k: sorted((s, v) for s, (_, v) in by_step.items()) for k, by_step in series.items()}


def training_curves(runs: Sequence[Run], task: str) -> list[StageCurves]:
    """Per stage: each run's training loss, held-out losses and headline metric by step.

    Stages count their own steps, so a run's stages are separate series (joining them
    would zig-zag between the VAE's and the GIVT's loss scales). Baseline records (no
    training) and counters are left out.
    """
    train: dict[str, dict] = {}
    heldout: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    eval_recs: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        if task not in run.tasks:
            continue
        recs = [r for r in run.records if _canonical_task(r["task"]) == task
                and r["stage"] != "baseline" and r.get("prediction") != "baseline"]
        # Rows without a stage (older logs): the run's one evaluated stage, if one.
        rec_stages = {str(r["stage"]) for r in recs}
        unnamed = rec_stages.pop() if len(rec_stages) == 1 else "train"
        for row in run.log:
            if _finite(row.get("loss")):
                _add_point(train.setdefault(str(row.get("stage") or unnamed), {}), run.name,
                           int(row["step"]), float(row["loss"]))
        for r in recs:
            stage, metrics = str(r["stage"]), metric_items(r)
            if _is_loss_record(r):
                key = next((k for k in HELDOUT_LOSS_KEYS if k in metrics), None)
                if key:
                    _add_point(heldout.setdefault(stage, {}), run.name, int(r["step"]),
                               metrics[key], str(r.get("time", "")))
            elif metrics:
                eval_recs.setdefault(stage, []).append((run, r))
    for stage, pairs in eval_recs.items():
        names = {m for _, r in pairs for m in metric_items(r)}
        primary = PRIMARY_METRIC.get(task, ("", True))[0]
        metric = primary if primary in names else ordered_metrics(task, names)[0]
        several_sources = len({(r["data"], r["split"]) for _, r in pairs}) > 1
        for run, r in pairs:
            value = metric_items(r).get(metric)
            if value is None:
                continue
            label = _evaluator(r) or "eval"
            if r.get("tag") and r["tag"] != label:
                label += f" {r['tag']}"
            if several_sources:  # say which data source and split a series scored
                label += f" ({r['data']} {r['split']})"
            _add_point(evals.setdefault(stage, {"metric": metric}), (run.name, label),
                       int(r["step"]), value, str(r.get("time", "")))
    out = []
    for stage in sorted(set(train) | set(heldout) | set(evals), key=_stage_key):
        ev = dict(evals.get(stage, {}))
        metric = ev.pop("metric", None)
        out.append(StageCurves(stage, _points(train.get(stage, {})),
                               _points(heldout.get(stage, {})), metric, _points(ev)))
    return out


def _run_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(names))}


def _metric_label(task: str, metric: str) -> str:
    unit = METRIC_UNITS.get(metric)
    text = metric + (f" ({unit})" if unit else "")
    primary = PRIMARY_METRIC.get(task)
    if primary and primary[0] == metric:
        text += ", higher is better" if primary[1] else ", lower is better"
    return text


EVAL_MARKERS = {"oracle": "o", "sampled": "^", "teacher_forced": "v"}
_EXTRA_MARKERS = ("D", "P", "X", "*", "h", "p")


def figure_training(runs: Sequence[Run], task: str, log_loss: bool = False) -> Any:
    """A matplotlib Figure: per stage (columns) the training and held-out loss (top) and
    the headline eval metric (bottom) against the stage's steps; None when nothing to draw.
    ``log_loss``: the loss panels on a log scale (where every loss is positive)."""
    curves = training_curves(runs, task)
    if not curves:
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    run_names = sorted({n for c in curves for n in c.train_loss}
                       | {n for c in curves for n in c.heldout_loss}
                       | {n for c in curves for n, _ in c.evals})
    colours = _run_colours(run_names)
    labels = sorted({lab for c in curves for _, lab in c.evals})
    extra = iter(_EXTRA_MARKERS * (1 + len(labels)))
    markers = {lab: EVAL_MARKERS.get(lab.split(" ")[0]) or next(extra) for lab in labels}
    rows = 2 if any(c.evals for c in curves) else 1
    cols = len(curves)
    fig = Figure(figsize=(max(4.6 * cols, 7.0), 3.0 * rows + 1.2), dpi=100,
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex="col")
    for j, c in enumerate(curves):
        title = STAGE_TITLES.get(c.stage, f"stage {c.stage}")
        ax = axes[0][j]
        for name, pts in c.train_loss.items():
            ax.plot(*zip(*pts, strict=True), color=colours[name], lw=1.5,
                    marker="." if len(pts) < 3 else None)
        for name, pts in c.heldout_loss.items():
            ax.plot(*zip(*pts, strict=True), color=colours[name], lw=1.2, ls="--",
                    marker="s", ms=5, mfc="white")
        values = [v for s in (c.train_loss, c.heldout_loss) for p in s.values() for _, v in p]
        scale = ""
        if log_loss and values:
            if min(values) > 0:
                from matplotlib.ticker import LogFormatter

                ax.set_yscale("log")
                # plain numbers ("2", "0.6") instead of "2x10^0" on short ranges
                for fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                    fmt(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
                scale = ", log scale"
            else:
                scale = ", linear: a loss <= 0"
        ax.set_title(f"{title}: loss{scale}", fontsize=10)
        ax.set_ylabel("loss", fontsize=9)
        if not values:
            ax.text(0.5, 0.5, "no training log (metrics.jsonl)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="0.4")
        if rows == 2:
            ax = axes[1][j]
            for (name, label), pts in c.evals.items():
                ax.plot(*zip(*pts, strict=True), color=colours[name], lw=1.2,
                        marker=markers[label], ms=6)
            if c.metric:
                ax.set_title(f"{title}: {c.metric} (eval)", fontsize=10)
                ax.set_ylabel(_metric_label(task, c.metric), fontsize=9)
            else:
                ax.set_title(f"{title}: no evaluations", fontsize=10)
                ax.set_yticks([])
        for row in axes:
            row[j].grid(alpha=0.3)
            row[j].tick_params(labelsize=8)
        axes[-1][j].set_xlabel("training step of this stage", fontsize=9)
    handles = [Line2D([], [], color=colours[n], lw=2.5, label=n) for n in run_names]
    handles += [Line2D([], [], color="0.2", lw=1.5, label="training loss"),
                Line2D([], [], color="0.2", lw=1.2, ls="--", marker="s", mfc="white",
                       label="held-out loss (eval)")]
    handles += [Line2D([], [], color="0.2", ls="none", marker=markers[lab], ms=6,
                       label=f"eval: {lab}") for lab in labels]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
               ncols=len(handles) if len(handles) <= 6 else 4)
    fig.suptitle(f"{task}: training curves (colour: run)", fontsize=11)
    return fig


def headline_results(runs: Sequence[Run], task: str) -> list[tuple[Run, dict[str, Any], float]]:
    """(run, latest record, value) of each evaluation that scored the task's headline
    metric, as in the table (periodic evaluations left out), by run then stage."""
    primary = PRIMARY_METRIC.get(task)
    if not primary:
        return []
    out = []
    for run in sorted(runs, key=lambda r: r.name):
        recs = sorted(latest_records(run, task), key=lambda r: _stage_key(str(r["stage"])))
        for rec in recs:
            value = metric_items(rec).get(primary[0])
            if value is not None:
                out.append((run, rec, value))
    return out


def stages_of(results: Sequence[tuple[Run, dict[str, Any], float]]) -> list[str]:
    return [str(rec["stage"]) for _, rec, _ in results]


_STAGE_COLOURS = {"vae": "#4c72b0", "givt": "#dd8452", "baseline": "#8c8c8c"}
# (colour, line style, marker) of the published lines: told apart in grey print too.
_PUBLISHED_STYLES = (("#222222", "--", "D"), ("#b22222", "-.", "s"), ("#2e8b57", ":", "o"),
                     ("#6a3d9a", (0, (5, 1, 1, 1)), "^"))


def figure_headline(runs: Sequence[Run], task: str) -> Any:
    """A matplotlib Figure: a bar per run and stage of the task's headline metric, the
    published values as labelled horizontal lines; None when no run scored it."""
    results = headline_results(runs, task)
    if not results:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    metric = PRIMARY_METRIC[task][0]
    published = [p for p in PUBLISHED_RESULTS if p[0] == task and p[3] == metric]
    values = [v for _, _, v in results]
    fig = Figure(figsize=(min(max(7.0, 1.1 * len(results) + 2.5), 24),
                          4.2 + 0.22 * (len(published) + len(set(stages_of(results))))),
                 dpi=100, layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(results))
    stages = stages_of(results)
    extra_colours = iter(("#55a868", "#c44e52", "#8172b3", "#937860") * len(results))
    colour_of = dict(_STAGE_COLOURS)
    for s in stages:
        colour_of.setdefault(s, next(extra_colours))
    bars = ax.bar(xs, values, width=0.6, color=[colour_of[s] for s in stages])
    ax.bar_label(bars, labels=[format_metric(v) for v in values], fontsize=8, padding=2,
                 bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    ticks = []
    several_sources = len({(rec["data"], rec["split"]) for _, rec, _ in results}) > 1
    for run, rec, _ in results:
        ev = _evaluator(rec)
        ticks.append(f"{run.name}\n{rec['stage']}" + (f" [{ev}]" if ev and ev != rec["stage"]
                                                      else "")
                     + (f"\n{rec['data']} {rec['split']}" if several_sources else ""))
    ax.set_xticks(xs, ticks, fontsize=8, rotation=20 if len(results) > 4 else 0,
                  ha="right" if len(results) > 4 else "center")
    handles = [Patch(color=colour_of[s], label=f"ours: {STAGE_TITLES.get(s, s)}")
               for s in dict.fromkeys(stages)]
    pad = max(0.0, (3 - len(results)) / 2)  # one or two bars: not as wide as the plot
    left, right = -0.5 - pad, len(results) - 0.5 + pad
    for (_, model, data, _, value), (colour, ls, marker) in zip(
            published, _PUBLISHED_STYLES * len(published), strict=False):
        handles += ax.plot([left, right], [value, value], color=colour, ls=ls, lw=1.4,
                           marker=marker, ms=6,
                           label=f"{model}: {format_metric(value)} ({data})")
    everything = values + [p[4] for p in published]
    if min(everything) > 0 and max(everything) / min(everything) > 30:
        ax.set_yscale("log")  # tiny runs far from the papers: both stay readable
        ax.set_ylabel(_metric_label(task, metric) + " (log scale)", fontsize=9)
    else:
        ax.set_ylim(0, max(everything) * 1.15)
        ax.set_ylabel(_metric_label(task, metric), fontsize=9)
    ax.set_xlim(left - 0.15, right + 0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
               title="bars: our runs; lines: the papers' results on the real datasets",
               title_fontsize=8, ncols=2 if len(results) > 3 else 1)
    ax.set_title(f"{task}: {metric} of each run and stage", fontsize=11)
    return fig


def figure_png(fig: Any) -> bytes:
    """A Figure as PNG bytes (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_task(runs: Sequence[Run], task: str, log_loss: bool = False
              ) -> list[tuple[str, str, bytes]]:
    """The task's plots as (file stem, caption, PNG): training curves, headline metric."""
    out = []
    fig = figure_training(runs, task, log_loss)
    if fig is not None:
        out.append((f"{task}_training", f"{task} training curves", figure_png(fig)))
    fig = figure_headline(runs, task)
    if fig is not None:
        metric = PRIMARY_METRIC[task][0]
        out.append((f"{task}_{metric}", f"{task} {metric} per run and stage",
                    figure_png(fig)))
    return out


def thumbnail_png(path: str) -> bytes:
    """A PNG at most THUMB_SIZE pixels a side; 16-bit / float maps are stretched to 8 bits."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(img, np.float64)
            lo, hi = (np.percentile(a[a > 0], [1, 99]) if np.any(a > 0) else (0.0, 1.0))
            a = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
            img = Image.fromarray((a * 255).astype(np.uint8))
        elif img.mode not in ("RGB", "RGBA", "L"):
            img = img.convert("RGBA")
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        if img.width < 96:  # tiny samples (32x32 digits) are scaled up for viewing
            f = 96 // img.width
            img = img.resize((img.width * f, img.height * f), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- rendering


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def markdown_table(table: Table) -> str:
    """A pipe table padded to aligned columns (reads well in a terminal)."""
    cells = [table.columns, *table.rows, *table.published]
    cells = [[c.replace("|", "\\|") for c in row] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    widths = [max(w, 3) for w in widths]

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(row, widths, table.numeric, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, table.numeric, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


@dataclasses.dataclass
class Report:
    """The gathered content, rendered to markdown or HTML."""

    runs: list[Run]
    tables: list[Table]
    plots: dict[str, list[tuple[str, str, bytes]]]  # task -> [(file stem, caption, png)]
    images: dict[str, list[tuple[str, bytes]]]  # run name -> [(source path, png)]
    warnings: list[str]
    created: str
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (folder, why)


def build_report(runs: list[Run], warnings: list[str],
                 skipped: Sequence[tuple[str, str]] = (), log_loss: bool = False) -> Report:
    """Tables, plots and thumbnails of ``runs``; ``skipped``: folders passed over."""
    tables = [build_table(t, runs) for t in report_tasks(runs)]
    plots = {}
    for t in tables:
        pngs = plot_task(runs, t.task, log_loss)
        if pngs:
            plots[t.task] = pngs
    images: dict[str, list[tuple[str, bytes]]] = {}
    for run in runs:
        for p in run.images:
            try:
                images.setdefault(run.name, []).append((p, thumbnail_png(p)))
            except Exception as e:  # PIL raises many types for a bad file
                warnings.append(f"unreadable image {p} (not shown): {e}")
    skipped = list(skipped)
    # A run without eval records has no table row; its training curves are still drawn.
    skipped += [(r.path, "no eval records: not in the tables (training curves only)"
                 if r.log else "no eval records and no training log: nothing to show")
                for r in runs if not r.records]
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Report(runs, tables, plots, images, warnings, created, skipped)


_INTRO = (
    "Rows marked *{label}* are the GIVT / UViM papers' results on the real datasets "
    "(COCO 2017, NYU Depth v2, ImageNet); the project's runs may use the small embedded "
    "stand-in datasets, so compare with care. Each run shows its latest evaluation per "
    "stage, split and data source."
)


def _runs_of(report: Report, task: str) -> list[Run]:
    return [r for r in report.runs if task in r.tasks]


def render_markdown(report: Report, asset_prefix: str | None) -> str:
    """Markdown; ``asset_prefix`` is the folder of the plot/thumbnail files (None: omit them)."""
    out = ["# Leaderboard", "",
           f"Generated {report.created} from {len(report.runs)} run(s).", "",
           _INTRO.format(label=PUBLISHED_LABEL), ""]
    for table in report.tables:
        out += [f"## {table.task}", ""]
        if not table.rows:
            out += ["_No evaluated runs yet._", ""]
        out += [markdown_table(table), ""]
        if asset_prefix is not None:
            out += [f"![{caption}]({asset_prefix}/plots/{_slug(stem)}.png)\n"
                    for stem, caption, _ in report.plots.get(table.task, [])]
        if asset_prefix is not None:
            for run in _runs_of(report, table.task):
                imgs = report.images.get(run.name)
                if imgs:
                    links = " ".join(
                        f"![{os.path.basename(p)}]({asset_prefix}/images/{_slug(run.name)}/"
                        f"{i}_{_slug(os.path.basename(p))})"
                        for i, (p, _) in enumerate(imgs)
                    )
                    out += [f"**{run.name}** samples/predictions: {links}", ""]
    if report.skipped:
        out += ["## Skipped folders", "",
                *(f"- `{p}`: {why}" for p, why in report.skipped), ""]
    if report.warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in report.warnings), ""]
    return "\n".join(out)


def write_markdown_assets(report: Report, out_dir: str) -> None:
    """Plot and thumbnail files the markdown refers to."""
    for pngs in report.plots.values():
        for stem, _, png in pngs:
            _write_bytes(os.path.join(out_dir, "plots", f"{_slug(stem)}.png"), png)
    for run_name, imgs in report.images.items():
        for i, (p, png) in enumerate(imgs):
            name = f"{i}_{_slug(os.path.basename(p))}"
            _write_bytes(os.path.join(out_dir, "images", _slug(run_name), name), png)


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.published td { background: #fff8e1; font-style: italic; color: #555; }
.thumbs img { margin: 4px; border: 1px solid #ddd; image-rendering: pixelated; }
p > img { max-width: 100%; height: auto; }
.warn { color: #a00; }
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page (styles inline, images as data URIs)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>uvim_givt leaderboard</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>Leaderboard</h1>",
           f"<p>Generated {e(report.created)} from {len(report.runs)} run(s).</p>",
           f"<p>{e(_INTRO.format(label=PUBLISHED_LABEL).replace('*', ''))}</p>"]
    for table in report.tables:
        out.append(f"<h2>{e(table.task)}</h2>")
        if not table.rows:
            out.append("<p><em>No evaluated runs yet.</em></p>")
        out.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns)
                   + "</tr></thead><tbody>")
        for cls, rows in (("run", table.rows), ("published", table.published)):
            for row in rows:
                tds = "".join(f'<td class="num">{e(c)}</td>' if num else f"<td>{e(c)}</td>"
                              for c, num in zip(row, table.numeric, strict=True))
                out.append(f'<tr class="{cls}">{tds}</tr>')
        out.append("</tbody></table>")
        for _, caption, png in report.plots.get(table.task, []):
            out.append(f'<p><img alt="{e(caption)}" src="{_data_uri(png)}"></p>')
        for run in _runs_of(report, table.task):
            imgs = report.images.get(run.name)
            if imgs:
                out.append(f"<h3>{e(run.name)}: samples / predictions</h3><div class=\"thumbs\">")
                out += [f'<img title="{e(p)}" alt="{e(os.path.basename(p))}" '
                        f'src="{_data_uri(png)}">' for p, png in imgs]
                out.append("</div>")
    if report.skipped:
        out.append("<h2>Skipped folders</h2><ul>")
        out += [f"<li><code>{e(p)}</code>: {e(why)}</li>" for p, why in report.skipped]
        out.append("</ul>")
    if report.warnings:
        out.append("<h2>Warnings</h2><ul>")
        out += [f'<li class="warn">{e(w)}</li>' for w in report.warnings]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = ArgumentParser(
        prog="python -m evals.leaderboard",
        description="Tables, plots and samples of all runs, next to the published results.",
    )
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories")
    p.add_argument("--root", action="append", default=None,
                   help="search this folder for runs (repeatable; default: runs/ when no "
                   "RUN_DIR is given)")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.add_argument("--format", choices=["md", "html", "both"], default="both",
                   help="md also prints the markdown to stdout")
    p.add_argument("--log-loss", action="store_true",
                   help="draw the training-curve loss panels on a log scale")
    add_verbose_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _main(args), args.verbose)


def _main(args: argparse.Namespace) -> int:
    roots = args.root if args.root is not None else ([] if args.run_dirs else ["runs"])
    warnings: list[str] = []
    if not args.run_dirs and roots == ["runs"] and not os.path.isdir("runs"):
        warnings.append("no runs/ folder here: the report has the published rows only")
        roots = []
    skipped: list[tuple[str, str]] = []
    runs = gather_runs(args.run_dirs, roots, warnings, skipped)
    report = build_report(runs, warnings, skipped, log_loss=args.log_loss)
    os.makedirs(args.out, exist_ok=True)
    written = []
    if args.format in ("md", "both"):
        write_markdown_assets(report, args.out)
        path = os.path.join(args.out, "leaderboard.md")
        with open(path, "w") as f:
            f.write(render_markdown(report, asset_prefix="."))
        written.append(path)
    if args.format in ("html", "both"):
        path = os.path.join(args.out, "leaderboard.html")
        with open(path, "w") as f:
            f.write(render_html(report))
        written.append(path)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    summary = f"{len(runs)} run(s)" + (f", {len(report.skipped)} folder(s) skipped or not "
                                      "in the tables (listed in the report)"
                                      if report.skipped else "")
    if args.format == "md":
        print(render_markdown(report, asset_prefix=None))
        print(f"{summary}; wrote " + ", ".join(written), file=sys.stderr)
    else:
        print(f"{summary}; wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
