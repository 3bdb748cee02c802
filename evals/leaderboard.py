"""Leaderboard: every run's eval records in one table per task, with plots and samples.

    python -m evals.leaderboard [RUN_DIR ...] [--root runs/] [--out report/] [--format md|html|both]

Reads, per run directory: ``eval/*.json`` (:mod:`evals.records`), and when
present ``config.json`` (``task``, ``size``, ``model``, ``total_steps``),
``metrics.jsonl`` (``{"step", "loss", ..., "time"}`` per line), ``run_info.json``
(``{"num_params": {stage: n}, "train_time_s": {stage: s}}``) and PNGs under
``samples/`` or ``predictions/``. Missing optional files are fine; unreadable ones
are reported in the report's warnings, never silently skipped.

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
    "imagenet": ("FID", "IS", "IS_std", "class_accuracy"),
}
# Metric the rows are ranked by, and whether higher is better.
PRIMARY_METRIC = {"panoptic": ("PQ", True), "depth": ("RMSE", False), "imagenet": ("FID", False)}
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


def is_run_dir(path: str) -> bool:
    """A directory holding at least one of the files a run writes."""
    return any(
        os.path.exists(os.path.join(path, n))
        for n in ("config.json", "metrics.jsonl", "run_info.json", "eval")
    )


def find_run_dirs(root: str) -> list[str]:
    """Run directories under ``root`` (not descending into a run)."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if is_run_dir(dirpath):
            found.append(dirpath)
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
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


def gather_runs(
    run_dirs: Sequence[str], roots: Sequence[str], warnings: list[str]
) -> list[Run]:
    """Runs named directly (a directory that is no run is searched like a root) + under roots."""
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
        for d in find_run_dirs(root):
            rel = os.path.relpath(d, root)
            named.append((d, os.path.basename(os.path.abspath(d)) if rel == "." else rel))
    runs, seen, names = [], set(), set()
    for d, name in named:
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
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
    names = {m for _, rec in entries for m in rec["metrics"]} | {p[3] for p in published}
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
        total = _config_value(run.config, "total_steps")
        step = int(rec["step"])
        steps = f"{step}/{total}" if isinstance(total, int) and total != step else str(step)
        rows.append([
            run.name,
            stage,
            _model_size(run.config),
            format_count(_by_stage(run.info.get("num_params"), rec["stage"])),
            f"{rec['data']} {rec['split']}",
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


def _series(runs: Sequence[Run], task: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """metric -> label -> [(step, value)] from the eval records; 'loss' from metrics.jsonl."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        recs = [r for r in run.records if _canonical_task(r["task"]) == task]
        for r in recs:
            label = f"{run.name}/{r['stage']}" + (f" [{_evaluator(r)}]" if _evaluator(r) else "")
            if len({(x["split"], x["data"]) for x in recs}) > 1:
                label += f" ({r['data']} {r['split']})"
            for m, v in r["metrics"].items():
                if isinstance(v, int | float) and math.isfinite(v):
                    out.setdefault(m, {}).setdefault(label, []).append((int(r["step"]), v))
        if task in run.tasks:
            loss = [(int(x["step"]), float(x["loss"])) for x in run.log
                    if isinstance(x.get("loss"), int | float) and math.isfinite(x["loss"])]
            if loss:
                out.setdefault("loss", {})[run.name] = loss
    for by_label in out.values():
        for pts in by_label.values():
            pts.sort()
    return out


def plot_task(runs: Sequence[Run], task: str) -> bytes | None:
    """One PNG with a panel per metric (and the training loss) against steps."""
    series = _series(runs, task)
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = ordered_metrics(task, set(series) - {"loss"}) + (["loss"] if "loss" in series else [])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=90)
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, pts in sorted(series[name].items()):
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, marker="o" if len(pts) < 30 else None, ms=3, label=label)
        ax.set_title("training loss" if name == "loss" else name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        values = [v for pts in series[name].values() for _, v in pts]
        if name == "loss" and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")  # losses spanning decades
        ax.grid(alpha=0.3)
        if len(series[name]) <= 8:
            ax.legend(fontsize=6)
    fig.suptitle(f"{task}: metrics against training steps", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
    plots: dict[str, bytes]
    images: dict[str, list[tuple[str, bytes]]]  # run name -> [(source path, png)]
    warnings: list[str]
    created: str


def build_report(runs: list[Run], warnings: list[str]) -> Report:
    """Tables, plots and thumbnails of ``runs``."""
    tables = [build_table(t, runs) for t in report_tasks(runs)]
    plots = {}
    for t in tables:
        png = plot_task(runs, t.task)
        if png is not None:
            plots[t.task] = png
    images: dict[str, list[tuple[str, bytes]]] = {}
    for run in runs:
        for p in run.images:
            try:
                images.setdefault(run.name, []).append((p, thumbnail_png(p)))
            except Exception as e:  # PIL raises many types for a bad file
                warnings.append(f"unreadable image {p} (not shown): {e}")
    no_eval = [r.name for r in runs if not r.records]
    if no_eval:
        warnings.append(f"{len(no_eval)} run(s) without eval records: {', '.join(no_eval)}")
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Report(runs, tables, plots, images, warnings, created)


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
        if asset_prefix is not None and table.task in report.plots:
            out += [f"![{table.task} metrics]({asset_prefix}/plots/{_slug(table.task)}.png)", ""]
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
    if report.warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in report.warnings), ""]
    return "\n".join(out)


def write_markdown_assets(report: Report, out_dir: str) -> None:
    """Plot and thumbnail files the markdown refers to."""
    for task, png in report.plots.items():
        _write_bytes(os.path.join(out_dir, "plots", f"{_slug(task)}.png"), png)
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
        if table.task in report.plots:
            out.append(f'<p><img alt="{e(table.task)} metrics" '
                       f'src="{_data_uri(report.plots[table.task])}"></p>')
        for run in _runs_of(report, table.task):
            imgs = report.images.get(run.name)
            if imgs:
                out.append(f"<h3>{e(run.name)}: samples / predictions</h3><div class=\"thumbs\">")
                out += [f'<img title="{e(p)}" alt="{e(os.path.basename(p))}" '
                        f'src="{_data_uri(png)}">' for p, png in imgs]
                out.append("</div>")
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
    runs = gather_runs(args.run_dirs, roots, warnings)
    report = build_report(runs, warnings)
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
    if args.format == "md":
        print(render_markdown(report, asset_prefix=None))
        print("wrote " + ", ".join(written), file=sys.stderr)
    else:
        print(f"{len(runs)} run(s); wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
