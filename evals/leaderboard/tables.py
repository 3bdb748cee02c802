"""The tables: one per task, a row per run and evaluation (the latest of each), ranked by
the task's primary metric, then the published values from the records' metadata."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from evals.leaderboard.records import (
    TaskMeta,
    evaluator_of,
    is_counter,
    num_examples,
    task_meta,
)
from evals.leaderboard.research import is_research
from evals.leaderboard.runs import STAGE_ORDER, Run, records_of

PUBLISHED_LABEL = "published (real dataset)"
BASE_COLUMNS = ("run", "stage", "model size", "parameters", "data", "steps", "training time")


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
        if str(r["task"]) != task or (r.get("extra") or {}).get("periodic") or \
                is_research(r):  # curves and diagnostics: evals/leaderboard/research.py
            continue
        key = (r["stage"], evaluator_of(r), r["split"], r["data"])
        if key not in latest or (r["step"], r.get("time", "")) >= (
                latest[key]["step"], latest[key].get("time", "")):
            latest[key] = r
    return [latest[k] for k in sorted(latest, key=lambda k: tuple(map(str, k)))]


@dataclasses.dataclass
class Table:
    """One task's leaderboard: header, our rows, published rows."""

    task: str
    columns: list[str]
    rows: list[list[str]]
    published: list[list[str]]
    numeric: list[bool]


def build_table(task: str, runs: Sequence[Run], meta: TaskMeta | None = None) -> Table:
    """Rows of our runs (best first by the task's primary metric, when its records declare
    one), then the published rows of its records' metadata. ``meta``: the task's, as
    :func:`~evals.leaderboard.records.task_meta` finds it in ``runs`` when not given."""
    meta = task_meta(records_of(runs, task)) if meta is None else meta
    entries = [(run, rec) for run in runs for rec in latest_records(run, task)]
    references = meta.references
    names = ({m for _, rec in entries for m in rec["metrics"] if not is_counter(m)}
             | {r.metric for r in references})
    metrics = meta.ordered(names)
    if meta.primary:
        name, higher = meta.primary, meta.higher_is_better

        def rank(entry: tuple[Run, dict[str, Any]]) -> tuple:
            v = entry[1]["metrics"].get(name)
            if not isinstance(v, int | float) or not math.isfinite(v):
                return (1, 0.0, entry[0].name)
            return (0, -v if higher else v, entry[0].name)

        entries.sort(key=rank)
    rows = []
    for run, rec in entries:
        ev = evaluator_of(rec)
        stage = str(rec["stage"]) + (f" [{ev}]" if ev else "")
        total = _stage_total_steps(run.config, str(rec["stage"]))
        step = int(rec["step"])
        steps = f"{step}/{total}" if isinstance(total, int) and total != step else str(step)
        rows.append([
            run.name,
            stage,
            _model_size(run.config),
            format_count(_by_stage(run.info.get("num_params"), rec["stage"])),
            f"{rec['data']} {rec['split']}" + (f" ({n} images)" if (n := num_examples(rec))
                                               else ""),
            steps,
            format_duration(_train_time(run, rec["stage"], step)),
            *(format_metric(rec["metrics"].get(m)) for m in metrics),
        ])
    pub_rows = [
        [PUBLISHED_LABEL, ref.model, "paper", "", ref.data, "", "",
         *(format_metric(ref.value) if m == ref.metric else "" for m in metrics)]
        for ref in references
    ]
    columns = [*BASE_COLUMNS, *metrics]
    numeric = [c in ("parameters", "steps", "training time") or c in metrics for c in columns]
    return Table(task, columns, rows, pub_rows, numeric)


def report_tasks(runs: Sequence[Run]) -> list[str]:
    """The tasks of the runs (their records', else their configs'), by name."""
    return sorted({t for run in runs for t in run.tasks})
