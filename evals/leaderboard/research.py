"""The research evaluators' records in the leaderboard: the exposure-bias curves (the task
metric against the share of true codes given, and stage 2's NLL per code position) and
the uncertainty evaluations' calibration, kept out of the main tables (their metrics are
curves and diagnostics, not results)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evals.leaderboard.records import task_meta
from evals.leaderboard.runs import Run

#: predictions of the research evaluators (evals.evaluators): not rows of the main tables
RESEARCH_PREDICTIONS = ("completed", "uncertainty")


def is_research(record: dict[str, Any]) -> bool:
    return record.get("prediction") in RESEARCH_PREDICTIONS


def latest_of(runs: Sequence[Run], task: str, prediction: str
              ) -> list[tuple[Run, dict[str, Any]]]:
    """Each run's latest record of ``prediction`` for ``task`` (by step, then time)."""
    out = []
    for run in runs:
        recs = [r for r in run.records if r.get("task") == task
                and r.get("prediction") == prediction]
        if recs:
            out.append((run, max(recs, key=lambda r: (r["step"], r.get("time", "")))))
    return out


def figure_exposure(runs: Sequence[Run], task: str) -> Any:
    """Left: the task's primary metric against the share of the true codes given (0: the
    sampled prediction, 1: the true codes decoded); right: the teacher-forced NLL per code
    position. One colour per run. None without exposure records."""
    entries = latest_of(runs, task, "completed")
    if not entries:
        return None
    from matplotlib.figure import Figure
    meta = task_meta([rec for _, rec in entries])
    metric = meta.primary or "PQ"
    unit = meta.headline.units.get(metric, "") if meta.headline else ""
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    for k, (run, rec) in enumerate(entries):
        colour = f"C{k % 10}"
        keep = rec["extra"]["keep"]
        values = [rec["metrics"].get(f"keep_{f:g}/{metric}") for f in keep]
        n = rec.get("num_examples") or int(rec["metrics"].get("num_images", 0))
        left.plot(keep, values, "o-", color=colour, label=f"{run.name} (n={n} images)")
        nll = rec["extra"].get("nll_per_position") or []
        right.plot(range(len(nll)), nll, color=colour, label=run.name)
    left.set_xlabel("share of the ground truth's codes given (0 = sampled, 1 = oracle)")
    left.set_ylabel(f"{metric}{f' ({unit})' if unit else ''}")
    left.set_title(f"{task}: {metric} when stage 2 completes given codes", fontsize=10)
    left.legend(fontsize=8)
    right.set_xlabel("code position (sampling order)")
    right.set_ylabel("teacher-forced NLL (nats per code)")
    right.set_title("stage 2's NLL of each code position", fontsize=10)
    return fig


def uncertainty_lines(runs: Sequence[Run], task: str) -> list[str]:
    """Markdown bullet lines: each run's latest uncertainty evaluation, its metrics."""
    lines = []
    for run, rec in latest_of(runs, task, "uncertainty"):
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(rec["metrics"].items())
                            if k != "num_images")
        lines.append(f"- **{run.name}** (step {rec['step']}, {rec.get('num_examples')} "
                     f"images, {rec['extra'].get('draws')} draws): {metrics}")
    return lines
