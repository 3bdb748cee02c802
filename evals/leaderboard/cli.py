"""The command line: ``python -m evals.leaderboard [RUN_DIR ...] [--root runs/]
[--out report/] [--format md|html|both] [--compare PATH] [--log-loss]``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from evals.leaderboard.comparisons import gather_comparisons
from evals.leaderboard.report import (
    build_report,
    render_html,
    render_markdown,
    write_markdown_assets,
)
from evals.leaderboard.runs import gather_runs
from uvim_givt.errors import ArgumentParser, add_verbose_argument, run_cli


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
    p.add_argument("--compare", action="append", default=[], metavar="PATH",
                   help="also show this token-kind comparison (a compare.json of "
                        "python -m evals.compare, or its folder; repeatable; those under the "
                        "roots are found anyway)")
    p.add_argument("--log-loss", action="store_true",
                   help="draw the training-curve loss panels on a log scale")
    add_verbose_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(build_parser().parse_args, _main, argv)


def _main(args: argparse.Namespace) -> int:
    roots = args.root if args.root is not None else ([] if args.run_dirs else ["runs"])
    warnings: list[str] = []
    if not args.run_dirs and roots == ["runs"] and not os.path.isdir("runs"):
        warnings.append("no runs/ folder here: the report is empty")
        roots = []
    skipped: list[tuple[str, str]] = []
    runs = gather_runs(args.run_dirs, roots, warnings, skipped)
    searched = roots + [d for d in args.run_dirs if os.path.isdir(d)]
    comparisons = gather_comparisons(args.compare, searched, warnings)
    report = build_report(runs, warnings, skipped, log_loss=args.log_loss,
                          comparisons=comparisons)
    os.makedirs(args.out, exist_ok=True)
    written = []
    if args.format in ("md", "both"):
        write_markdown_assets(report, args.out)
        path = os.path.join(args.out, "leaderboard.md")
        with open(path, "w") as f:
            f.write(render_markdown(report, asset_prefix=".", out_dir=args.out))
        written.append(path)
    if args.format in ("html", "both"):
        path = os.path.join(args.out, "leaderboard.html")
        with open(path, "w") as f:
            f.write(render_html(report, out_dir=args.out))
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
