"""The plots of a task (matplotlib, drawn off-screen) and the thumbnails of run images.

Per task: training curves (a column per stage, as each stage counts its own steps:
every run's training loss with its held-out loss evaluations on top, the stage's
headline eval metric below, on the same step axis; ``log_loss`` puts the loss panels on
a log scale), and a bar per run and stage of the task's primary metric (as its records'
``metric_meta`` declares it) beside the published values drawn as labelled horizontal
lines. Counters are never drawn.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from evals.leaderboard.records import (
    TaskMeta,
    evaluator_of,
    is_counter,
    is_finite_number,
    is_loss_record,
    metric_items,
    task_meta,
)
from evals.leaderboard.research import figure_exposure, is_research
from evals.leaderboard.runs import STAGE_TITLES, Run, records_of, stage_key
from evals.leaderboard.tables import format_metric, latest_records

# What the loss panel draws, from a held-out loss record and from a training log row alike:
# stage 2's NLL per token (also when it trains on a label-smoothed cross-entropy, which
# its rows log as xent_smoothed), else the stage's loss (stage 1's beta-weighted one).
HELDOUT_LOSS_KEYS = ("nll_per_token", "loss")
THUMB_SIZE = 256
Points = list[tuple[int, float]]


@dataclasses.dataclass
class StageCurves:
    """What the training-curve plot draws for one stage of one task."""

    stage: str
    train_loss: dict[str, Points]  # run -> (step, loss) from metrics.jsonl
    heldout_loss: dict[str, Points]  # run -> (step, loss) from held-out loss records
    metric: str | None  # the stage's headline eval metric
    evals: dict[tuple[str, str], Points]  # (run, evaluator label) -> (step, metric)
    # (run, part) -> (step, value): the loss's logged parts (xent, kl, nll_per_dim, ...)
    parts: dict[tuple[str, str], Points] = dataclasses.field(default_factory=dict)
    # (run, "lr" | "grad_norm") -> (step, value)
    optim: dict[tuple[str, str], Points] = dataclasses.field(default_factory=dict)
    # (run, evaluator label) -> {step: images scored}
    counts: dict[tuple[str, str], dict[int, int]] = dataclasses.field(default_factory=dict)
    loss_label: str = "loss"  # the training loss and its unit, for the axis
    notes: list[str] = dataclasses.field(default_factory=list)  # printed under the loss panel


# Logged beside the loss but not its parts: the optimiser's panel and bookkeeping.
OPTIM_KEYS = ("lr", "grad_norm")
_NOT_PARTS = frozenset({"stage", "step", "time", "loss", *OPTIM_KEYS})
MAX_PARTS = 6


def loss_label(stage: str, row_keys: set[str]) -> str:
    """The training loss of a stage and its unit, from what its log rows hold."""
    if "nll_per_token" in row_keys or stage == "givt":
        return "NLL per code (nats)"
    if "xent" in row_keys:
        return "cross-entropy per pixel + beta x KL (nats)"
    if "rec" in row_keys:
        return "reconstruction + beta x KL"
    return "loss"


def _stage_2_notes(run: Run, stage: str) -> list[str]:
    """Why a run's stage-2 training loss is not its held-out one: the training inputs get
    noise (``givt.input_noise``; the held-out ones do not, as published), or it trains on
    label-smoothed code ids (``givt.label_smoothing``; the curves are its plain NLL)."""
    givt = run.config.get("givt") if isinstance(run.config, dict) else None
    if stage != "givt" or not isinstance(givt, dict):
        return []
    noise, smoothing = givt.get("input_noise"), givt.get("label_smoothing")
    notes = []
    if is_finite_number(noise) and float(noise) > 0:
        notes.append(f"training loss: inputs with noise (givt.input_noise={noise:g});\n"
                     "held-out loss: without (as big_vision's validation)")
    if is_finite_number(smoothing) and float(smoothing) > 0:
        notes.append("trained on label-smoothed cross-entropy (givt.label_smoothing="
                     f"{smoothing:g},\nparts: xent_smoothed); the curves are its plain NLL")
    return notes


def _add_point(series: dict, key: Any, step: int, value: float, when: str = "") -> None:
    """One point per step: a step evaluated twice keeps its latest value."""
    by_step = series.setdefault(key, {})
    if step not in by_step or when >= by_step[step][0]:
        by_step[step] = (when, value)


def _points(series: dict) -> dict[Any, Points]:
    return {k: sorted((s, v) for s, (_, v) in by_step.items()) for k, by_step in series.items()}


def training_curves(runs: Sequence[Run], task: str, meta: TaskMeta | None = None
                    ) -> list[StageCurves]:
    """Per stage: each run's training loss (and its parts, learning rate and gradient
    norm), held-out losses and headline metric by step.

    Stages count their own steps, so a run's stages are separate series (joining them
    would zig-zag between the VAE's and the GIVT's loss scales). The headline metric is
    the task's primary metric where the stage scored it, else its first metric in the
    declared order. Baseline records (no training) and counters are left out.
    """
    meta = task_meta(records_of(runs, task)) if meta is None else meta
    train: dict[str, dict] = {}
    parts: dict[str, dict] = {}
    optim: dict[str, dict] = {}
    row_keys: dict[str, set[str]] = {}
    notes: dict[str, list[str]] = {}
    heldout: dict[str, dict] = {}
    evals: dict[str, dict] = {}
    counts: dict[str, dict] = {}
    eval_recs: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        if task not in run.tasks:
            continue
        recs = [r for r in run.records if str(r["task"]) == task
                and r["stage"] != "baseline" and r.get("prediction") != "baseline"
                and not is_research(r)]
        # Rows without a stage (older logs): the run's one evaluated stage, if one.
        rec_stages = {str(r["stage"]) for r in recs}
        unnamed = rec_stages.pop() if len(rec_stages) == 1 else "train"
        for row in run.log:
            if not is_finite_number(row.get("loss")):
                continue
            stage, step = str(row.get("stage") or unnamed), int(row["step"])
            drawn = next(float(row[k]) for k in HELDOUT_LOSS_KEYS
                         if is_finite_number(row.get(k)))
            _add_point(train.setdefault(stage, {}), run.name, step, drawn)
            row_keys.setdefault(stage, set()).update(row)
            for key, value in row.items():
                if not is_finite_number(value) or is_counter(key):
                    continue
                if key in OPTIM_KEYS:
                    _add_point(optim.setdefault(stage, {}), (run.name, key), step, float(value))
                elif key not in _NOT_PARTS and not key.startswith("weight/") \
                        and value != drawn:  # nll_per_token is the stage-2 curve itself
                    _add_point(parts.setdefault(stage, {}), (run.name, key), step,
                               float(value))
        for stage in {str(row.get("stage") or unnamed) for row in run.log}:
            for note in _stage_2_notes(run, stage):
                if note not in notes.get(stage, []):
                    notes.setdefault(stage, []).append(note)
        for r in recs:
            stage, metrics = str(r["stage"]), metric_items(r)
            if is_loss_record(r):
                key = next((k for k in HELDOUT_LOSS_KEYS if k in metrics), None)
                if key:
                    _add_point(heldout.setdefault(stage, {}), run.name, int(r["step"]),
                               metrics[key], str(r.get("time", "")))
            elif metrics:
                eval_recs.setdefault(stage, []).append((run, r))
    for stage, pairs in eval_recs.items():
        names = {m for _, r in pairs for m in metric_items(r)}
        metric = meta.primary if meta.primary in names else meta.ordered(names)[0]
        several_sources = len({(r["data"], r["split"]) for _, r in pairs}) > 1
        for run, r in pairs:
            value = metric_items(r).get(metric)
            if value is None:
                continue
            label = evaluator_of(r) or "eval"
            if r.get("tag") and r["tag"] != label:
                label += f" {r['tag']}"
            if several_sources:  # say which data source and split a series scored
                label += f" ({r['data']} {r['split']})"
            _add_point(evals.setdefault(stage, {"metric": metric}), (run.name, label),
                       int(r["step"]), value, str(r.get("time", "")))
            n = r.get("metrics", {}).get("num_images", r.get("num_examples"))
            if is_finite_number(n):
                counts.setdefault(stage, {}).setdefault((run.name, label), {})[
                    int(r["step"])] = int(n)
    out = []
    for stage in sorted(set(train) | set(heldout) | set(evals), key=stage_key):
        ev = dict(evals.get(stage, {}))
        metric = ev.pop("metric", None)
        kept_parts = _points(parts.get(stage, {}))
        if len({p for _, p in kept_parts}) > MAX_PARTS:  # the first parts by name
            names = sorted({p for _, p in kept_parts})[:MAX_PARTS]
            kept_parts = {k: v for k, v in kept_parts.items() if k[1] in names}
        out.append(StageCurves(stage, _points(train.get(stage, {})),
                               _points(heldout.get(stage, {})), metric, _points(ev),
                               kept_parts, _points(optim.get(stage, {})),
                               counts.get(stage, {}),
                               loss_label(stage, row_keys.get(stage, set())),
                               notes.get(stage, [])))
    return out


def _run_colours(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(names))}


EVAL_MARKERS = {"oracle": "o", "sampled": "^", "teacher_forced": "v"}
_EXTRA_MARKERS = ("D", "P", "X", "*", "h", "p")
_PART_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 2)))
# A series with at most this many evaluations is drawn as labelled points, not a curve.
FEW_POINTS = 2


def _loss_panel(ax: Any, c: StageCurves, colours: dict, title: str, log_loss: bool) -> None:
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
    ax.set_ylabel(c.loss_label, fontsize=8)
    if not values:
        ax.text(0.5, 0.5, "no training log (metrics.jsonl)", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="0.4")
    if c.notes:  # top right: above a falling loss
        ax.text(0.98, 0.96, "\n".join(c.notes), transform=ax.transAxes, fontsize=7,
                ha="right", va="top", color="0.3")


def _parts_panel(ax: Any, c: StageCurves, colours: dict, styles: dict, title: str) -> None:
    """The loss's logged parts, one line style per part; on a log scale when they span
    more than a decade (KL and cross-entropy differ by orders of magnitude)."""
    for (run, part), pts in c.parts.items():
        ax.plot(*zip(*pts, strict=True), color=colours[run], lw=1.1, ls=styles[part])
    values = [v for p in c.parts.values() for _, v in p]
    if values and min(values) > 0 and max(values) > 10 * min(values):
        ax.set_yscale("log")
    ax.set_title(f"{title}: loss parts (training)", fontsize=10)
    ax.set_ylabel("value (log scale)" if ax.get_yscale() == "log" else "value", fontsize=8)
    if not c.parts:
        ax.text(0.5, 0.5, "no parts logged", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="0.4")


def _optim_panel(ax: Any, c: StageCurves, colours: dict, title: str) -> None:
    """Learning rate (left axis, solid) and gradient norm (right axis, dotted)."""
    right = ax.twinx()
    for (run, key), pts in c.optim.items():
        (ax if key == "lr" else right).plot(*zip(*pts, strict=True), color=colours[run],
                                            lw=1.2, ls="-" if key == "lr" else ":")
    ax.set_title(f"{title}: learning rate (solid), gradient norm (dotted)", fontsize=10)
    ax.set_ylabel("learning rate", fontsize=8)
    right.set_ylabel("global gradient norm", fontsize=8)
    right.tick_params(labelsize=8)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if not c.optim:
        ax.text(0.5, 0.5, "no lr or grad_norm logged", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, color="0.4")


def _eval_panel(ax: Any, c: StageCurves, colours: dict, markers: dict, title: str,
                meta: TaskMeta) -> None:
    """The headline metric: curves for periodic evaluations, labelled points (value and
    images scored) for a series of one or two; % metrics on 0-100, others from 0 when
    every value is positive, so one point does not fill the axes."""
    values = []
    for (name, label), pts in c.evals.items():
        xs, ys = zip(*pts, strict=True)
        values += ys
        few = len(pts) <= FEW_POINTS
        ax.plot(xs, ys, color=colours[name], lw=0 if few else 1.2, marker=markers[label],
                ms=7 if few else 6)
        if few:
            for x, y in pts:
                n = c.counts.get((name, label), {}).get(x)
                ax.annotate(f"{format_metric(y)}" + (f" (n={n})" if n else ""), (x, y),
                            textcoords="offset points", xytext=(6, 4), fontsize=7.5,
                            color=colours[name])
    if not c.metric:
        ax.set_title(f"{title}: no evaluations", fontsize=10)
        ax.set_yticks([])
        return
    ax.set_title(f"{title}: {c.metric} (eval)", fontsize=10)
    ax.set_ylabel(meta.label(c.metric), fontsize=8)
    unit = next((m.units.get(c.metric) for m in meta.by_kind.values()
                 if c.metric in m.units), "")
    if values and unit == "%" and 0 <= min(values) and max(values) <= 100:
        ax.set_ylim(0, 105)
    elif values and min(values) >= 0:
        ax.set_ylim(0, max(values) * 1.25 or 1.0)


def figure_training(runs: Sequence[Run], task: str, log_loss: bool = False,
                    meta: TaskMeta | None = None) -> Any:
    """A matplotlib Figure: per stage (columns), against the stage's steps: the training
    and held-out loss, the loss's parts, the learning rate and gradient norm, and the
    headline eval metric (rows; a row only when some stage has it). None when nothing to
    draw. ``log_loss``: the loss panels on a log scale (where every loss is positive)."""
    meta = task_meta(records_of(runs, task)) if meta is None else meta
    curves = training_curves(runs, task, meta)
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
    kinds = ["loss"] + [k for k, has in (("parts", any(c.parts for c in curves)),
                                         ("optim", any(c.optim for c in curves)),
                                         ("evals", any(c.evals for c in curves))) if has]
    cols = len(curves)
    fig = Figure(figsize=(max(4.8 * cols, 7.0), 2.7 * len(kinds) + 1.3), dpi=100,
                 layout="constrained")
    axes = fig.subplots(len(kinds), cols, squeeze=False, sharex="col")
    part_names = sorted({p for c in curves for _, p in c.parts})
    styles = dict(zip(part_names, _PART_STYLES * len(part_names), strict=False))
    for j, c in enumerate(curves):
        title = STAGE_TITLES.get(c.stage, f"stage {c.stage}")
        for i, kind in enumerate(kinds):
            ax = axes[i][j]
            if kind == "loss":
                _loss_panel(ax, c, colours, title, log_loss)
            elif kind == "parts":
                _parts_panel(ax, c, colours, styles, title)
            elif kind == "optim":
                _optim_panel(ax, c, colours, title)
            else:
                _eval_panel(ax, c, colours, markers, title, meta)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        axes[-1][j].set_xlabel("training step of this stage", fontsize=9)
    handles = [Line2D([], [], color=colours[n], lw=2.5, label=n) for n in run_names]
    handles += [Line2D([], [], color="0.2", lw=1.5, label="training loss"),
                Line2D([], [], color="0.2", lw=1.2, ls="--", marker="s", mfc="white",
                       label="held-out loss (eval)")]
    handles += [Line2D([], [], color="0.2", ls="none", marker=markers[lab], ms=6,
                       label=f"eval: {lab}") for lab in labels]
    handles += [Line2D([], [], color="0.3", lw=1.1, ls=styles[n], label=f"part: {n}")
                for n in part_names]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
               ncols=len(handles) if len(handles) <= 6 else 5)
    fig.suptitle(f"{task}: training curves (colour: run)", fontsize=11)
    return fig


def headline_results(runs: Sequence[Run], task: str, meta: TaskMeta | None = None
                     ) -> list[tuple[Run, dict[str, Any], float]]:
    """(run, latest record, value) of each evaluation that scored the task's primary
    metric, as in the table (periodic evaluations left out), by run then stage; none
    when the task's records declare no primary metric."""
    meta = task_meta(records_of(runs, task)) if meta is None else meta
    if not meta.primary:
        return []
    out = []
    for run in sorted(runs, key=lambda r: r.name):
        recs = sorted(latest_records(run, task), key=lambda r: stage_key(str(r["stage"])))
        for rec in recs:
            value = metric_items(rec).get(meta.primary)
            if value is not None:
                out.append((run, rec, value))
    return out


def stages_of(results: Sequence[tuple[Run, dict[str, Any], float]]) -> list[str]:
    return [str(rec["stage"]) for _, rec, _ in results]


# Stage colours from outside the palette of the training figure (where a colour is a run).
_STAGE_COLOURS = {"vae": "#9ecae1", "givt": "#08519c", "baseline": "#bdbdbd"}
#: predictions that diagnose a model rather than measure it: hatched, and named so
DIAGNOSTICS = {"oracle": "oracle: stage 1 alone on the true codes",
               "teacher_forced": "teacher-forced: given the true previous codes"}
# (colour, line style, marker) of the published lines: told apart in grey print too.
_PUBLISHED_STYLES = (("#222222", "--", "D"), ("#b22222", "-.", "s"), ("#2e8b57", ":", "o"),
                     ("#6a3d9a", (0, (5, 1, 1, 1)), "^"))


def figure_headline(runs: Sequence[Run], task: str, meta: TaskMeta | None = None) -> Any:
    """A matplotlib Figure: a bar per run and stage of the task's primary metric, the
    published values as labelled horizontal lines; None when no run scored it."""
    meta = task_meta(records_of(runs, task)) if meta is None else meta
    results = headline_results(runs, task, meta)
    if not results:
        return None
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    metric = meta.primary
    # Published values are drawn only beside runs scored on their dataset: a line across
    # bars measured on other (e.g. small synthetic) data invites the wrong comparison.
    datasets = {rec.get("dataset") for _, rec, _ in results}
    published = [r for r in meta.references if r.metric == metric and r.data in datasets]
    hidden = sorted({r.data for r in meta.references
                     if r.metric == metric and r.data not in datasets})
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
    diagnostic = [rec.get("prediction") in DIAGNOSTICS for _, rec, _ in results]
    bars = ax.bar(xs, values, width=0.6, color=[colour_of[s] for s in stages],
                  hatch=["//" if d else "" for d in diagnostic], edgecolor="#333333",
                  linewidth=0.6)
    ax.bar_label(bars, labels=[format_metric(v) for v in values], fontsize=8, padding=2,
                 bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    ticks = []
    several_sources = len({(rec["data"], rec["split"]) for _, rec, _ in results}) > 1
    for run, rec, _ in results:
        ev = evaluator_of(rec)
        n = rec.get("num_examples") or rec.get("metrics", {}).get("num_images")
        ticks.append(f"{run.name}\n{rec['stage']}" + (f" [{ev}]" if ev and ev != rec["stage"]
                                                      else "")
                     + (f"\n{rec['data']} {rec['split']}" if several_sources else "")
                     + (f"\nn={int(n)}" if n else ""))
    ax.set_xticks(xs, ticks, fontsize=8, rotation=20 if len(results) > 4 else 0,
                  ha="right" if len(results) > 4 else "center")
    handles = [Patch(facecolor=colour_of[s], edgecolor="#333333",
                     label=f"ours: {STAGE_TITLES.get(s, s)}") for s in dict.fromkeys(stages)]
    shown = {rec.get("prediction") for (_, rec, _), d in zip(results, diagnostic, strict=True)
             if d}
    if shown:
        handles.append(Patch(facecolor="white", edgecolor="#333333", hatch="//",
                             label="hatched: diagnostics, not results ("
                             + "; ".join(DIAGNOSTICS[p] for p in DIAGNOSTICS if p in shown)
                             + ")"))
    pad = max(0.0, (3 - len(results)) / 2)  # one or two bars: not as wide as the plot
    left, right = -0.5 - pad, len(results) - 0.5 + pad
    for ref, (colour, ls, marker) in zip(
            published, _PUBLISHED_STYLES * len(published), strict=False):
        handles += ax.plot([left, right], [ref.value, ref.value], color=colour, ls=ls,
                           lw=1.4, marker=marker, ms=6,
                           label=f"{ref.model}: {format_metric(ref.value)} ({ref.data})")
    everything = values + [r.value for r in published]
    if min(everything) > 0 and max(everything) / min(everything) > 30:
        ax.set_yscale("log")  # tiny runs far from the papers: both stay readable
        ax.set_ylabel(meta.label(metric) + " (log scale)", fontsize=9)
    else:
        ax.set_ylim(0, max(everything) * 1.15)
        ax.set_ylabel(meta.label(metric), fontsize=9)
    ax.set_xlim(left - 0.15, right + 0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    title = "bars: our runs (n: images scored)"
    if published:
        title += "; lines: published results on the same data"
    if hidden:
        title += (f"; published values on {', '.join(hidden)} not drawn: no run here was "
                  "scored on that data")
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
               title=title, title_fontsize=8, ncols=2 if len(results) > 3 else 1)
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
    """The task's plots as (file stem, caption, PNG): training curves, primary metric."""
    meta = task_meta(records_of(runs, task))
    out = []
    fig = figure_training(runs, task, log_loss, meta)
    if fig is not None:
        out.append((f"{task}_training", f"{task} training curves", figure_png(fig)))
    fig = figure_headline(runs, task, meta)
    if fig is not None:
        metric = meta.primary
        out.append((f"{task}_{metric}", f"{task} {metric} per run and stage",
                    figure_png(fig)))
    fig = figure_exposure(runs, task)
    if fig is not None:
        out.append((f"{task}_exposure", f"{task} exposure bias: {meta.primary} against the "
                    "true codes given, NLL per code position", figure_png(fig)))
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

