"""Leaderboard: every run's eval records in one table per task, with plots and samples.

    python -m evals.leaderboard [RUN_DIR ...] [--root runs/] [--out report/]
                                [--format md|html|both] [--compare PATH] [--log-loss]

Writes ``report/leaderboard.md`` (plots and thumbnails as files next to it) and
``report/leaderboard.html`` (one self-contained file: images inlined as data URIs).
With ``--format md`` the markdown is also printed to stdout with aligned columns.

The leaderboard knows no task: the tasks are the records' ``task`` values, by name, and
what their metrics mean (order, the metric rows are ranked by, direction, units,
published values) comes from the records' ``metric_meta`` (:mod:`.records`). Each table
ends with those published values, marked "published (real dataset)": the project's
embedded datasets are small stand-ins, so those rows are a reference point, not a
like-for-like comparison.

Modules, by job:

* :mod:`.runs`: finding run directories (symlinks, skipped folders) and reading their
  files (eval records, config, training log, run info, images)
* :mod:`.records`: an eval record's fields, the task's metric metadata, counters
* :mod:`.tables`: the per-task tables (metric order, ranking, formatting)
* :mod:`.comparisons`: the token-kind tables of ``python -m evals.compare``
  (``compare.json`` under the roots or named by ``--compare``), in their tasks' sections
* :mod:`.figures`: training curves, the primary-metric chart, thumbnails
* :mod:`.report`: gathering it all, rendering markdown and HTML
* :mod:`.cli`: the command line (``__main__`` runs it)
"""

from evals.leaderboard.cli import build_parser, main
from evals.leaderboard.figures import (
    StageCurves,
    figure_headline,
    figure_png,
    figure_training,
    headline_results,
    plot_task,
    thumbnail_png,
    training_curves,
)
from evals.leaderboard.records import (
    COUNTER_NAMES,
    MetricMeta,
    Reference,
    TaskMeta,
    is_counter,
    metric_items,
    task_meta,
)
from evals.leaderboard.report import (
    Report,
    build_report,
    markdown_table,
    render_html,
    render_markdown,
    write_markdown_assets,
)
from evals.leaderboard.runs import (
    STAGE_ORDER,
    STAGE_TITLES,
    LeaderboardError,
    Run,
    find_run_dirs,
    gather_runs,
    is_run_dir,
    load_run,
    read_records,
)
from evals.leaderboard.tables import (
    BASE_COLUMNS,
    PUBLISHED_LABEL,
    Table,
    build_table,
    format_count,
    format_duration,
    format_metric,
    latest_records,
    report_tasks,
)

__all__ = [
    "BASE_COLUMNS", "COUNTER_NAMES", "PUBLISHED_LABEL", "STAGE_ORDER", "STAGE_TITLES",
    "LeaderboardError", "MetricMeta", "Reference", "Report", "Run", "StageCurves", "Table",
    "TaskMeta", "build_parser", "build_report", "build_table", "figure_headline",
    "figure_png", "figure_training", "find_run_dirs", "format_count", "format_duration",
    "format_metric", "gather_runs", "headline_results", "is_counter", "is_run_dir",
    "latest_records", "load_run", "main", "markdown_table", "metric_items", "plot_task",
    "read_records", "render_html", "render_markdown", "report_tasks", "task_meta",
    "thumbnail_png", "training_curves", "write_markdown_assets",
]
