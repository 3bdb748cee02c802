"""The report: tables, plots and thumbnails of the runs, rendered as markdown (plots and
thumbnails as files next to it) or as one self-contained HTML page (images inlined as
data URIs). Folders passed over are listed under "Skipped folders", unreadable files
under "Warnings"."""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import os
import re
from collections.abc import Sequence

from evals.leaderboard.comparisons import Comparison
from evals.leaderboard.figures import plot_task, thumbnail_png
from evals.leaderboard.research import uncertainty_lines
from evals.leaderboard.runs import Run
from evals.leaderboard.tables import PUBLISHED_LABEL, Table, build_table, report_tasks


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
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)

    def sections(self) -> list[str]:
        """The tasks with a section: those with runs, then those with comparisons only."""
        tasks = [t.task for t in self.tables]
        return tasks + sorted({c.task for c in self.comparisons} - set(tasks))

    def table_of(self, task: str) -> Table | None:
        return next((t for t in self.tables if t.task == task), None)

    def comparisons_of(self, task: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.task == task]


def build_report(runs: list[Run], warnings: list[str],
                 skipped: Sequence[tuple[str, str]] = (), log_loss: bool = False,
                 comparisons: Sequence[Comparison] = ()) -> Report:
    """Tables, plots and thumbnails of ``runs``; ``skipped``: folders passed over;
    ``comparisons``: token-kind tables of evals.compare, shown in their tasks' sections."""
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
    return Report(runs, tables, plots, images, warnings, created, skipped, list(comparisons))


_INTRO = (
    "Rows marked *{label}* are published results, as the tasks declare them in their "
    "eval records, on the datasets named in each row; the project's runs may use small "
    "embedded stand-in datasets, so compare with care. Each run shows its latest "
    "evaluation per stage, split and data source."
)


def _runs_of(report: Report, task: str) -> list[Run]:
    return [r for r in report.runs if task in r.tasks]


def _card(run: Run, out_dir: str | None) -> str | None:
    """The run's MODEL_CARD.md relative to the report's folder (None: the run has none)."""
    path = os.path.join(run.path, "MODEL_CARD.md")
    if not os.path.isfile(path):
        return None
    return os.path.relpath(path, out_dir or os.getcwd()).replace(os.sep, "/")


def _shown_path(path: str, out_dir: str | None) -> str:
    """A file named in the report: relative to the report's folder, never this machine's
    absolute path."""
    return os.path.relpath(path, out_dir or os.getcwd()).replace(os.sep, "/")


def render_markdown(report: Report, asset_prefix: str | None, out_dir: str | None = None
                    ) -> str:
    """Markdown; ``asset_prefix`` is the folder of the plot/thumbnail files (None: omit them);
    links to the runs' model cards are relative to ``out_dir`` (default: the current
    folder)."""
    out = ["# Leaderboard", "",
           f"Generated {report.created} from {len(report.runs)} run(s).", "",
           _INTRO.format(label=PUBLISHED_LABEL), ""]
    for task in report.sections():
        out += [f"## {task}", ""]
        table = report.table_of(task)
        if table is not None:
            if not table.rows:
                out += ["_No evaluated runs yet._", ""]
            out += [markdown_table(table), ""]
        for c in report.comparisons_of(task):
            out += [f"Token kinds compared (`{_shown_path(c.path, out_dir)}`, "
                    "python -m evals.compare):", "", markdown_table(c.table), "", c.note, ""]
        if table is None:
            continue
        if asset_prefix is not None:
            out += [f"![{caption}]({asset_prefix}/plots/{_slug(stem)}.png)\n"
                    for stem, caption, _ in report.plots.get(table.task, [])]
        calibration = uncertainty_lines(_runs_of(report, table.task), table.task)
        if calibration:
            out += ["Uncertainty (several samples per image; evals/calibration.py):", "",
                    *calibration, ""]
        cards = [(r.name, _card(r, out_dir)) for r in _runs_of(report, table.task)]
        if any(link for _, link in cards):
            out += ["Model cards: " + ", ".join(f"[{name}]({link})" for name, link in cards
                                                if link), ""]
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


def _html_table(table: Table) -> list[str]:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
           + "</tr></thead><tbody>"]
    for cls, rows in (("run", table.rows), ("published", table.published)):
        for row in rows:
            tds = "".join(f'<td class="num">{html.escape(c)}</td>' if num else
                          f"<td>{html.escape(c)}</td>"
                          for c, num in zip(row, table.numeric, strict=True))
            out.append(f'<tr class="{cls}">{tds}</tr>')
    return out + ["</tbody></table>"]


def render_html(report: Report, out_dir: str | None = None) -> str:
    """One self-contained HTML page (styles inline, images as data URIs); links to the runs'
    model cards and the names of pictures are relative to ``out_dir``."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>uvim_givt leaderboard</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>Leaderboard</h1>",
           f"<p>Generated {e(report.created)} from {len(report.runs)} run(s).</p>",
           f"<p>{e(_INTRO.format(label=PUBLISHED_LABEL).replace('*', ''))}</p>"]
    for task in report.sections():
        out.append(f"<h2>{e(task)}</h2>")
        table = report.table_of(task)
        if table is not None:
            if not table.rows:
                out.append("<p><em>No evaluated runs yet.</em></p>")
            out += _html_table(table)
        for c in report.comparisons_of(task):
            out.append(f"<p>Token kinds compared (<code>{e(_shown_path(c.path, out_dir))}"
                       "</code>, python -m evals.compare):</p>")
            out += [*_html_table(c.table), f"<p>{e(c.note)}</p>"]
        if table is None:
            continue
        for _, caption, png in report.plots.get(table.task, []):
            out.append(f'<p><img alt="{e(caption)}" src="{_data_uri(png)}"></p>')
        calibration = uncertainty_lines(_runs_of(report, table.task), table.task)
        if calibration:
            out.append("<p>Uncertainty (several samples per image):</p><ul>")
            out += [f"<li>{e(line[2:].replace('**', ''))}</li>" for line in calibration]
            out.append("</ul>")
        cards = [(r.name, _card(r, out_dir)) for r in _runs_of(report, table.task)]
        if any(link for _, link in cards):
            out.append("<p>Model cards: " + ", ".join(
                f'<a href="{e(link)}">{e(name)}</a>' for name, link in cards if link) + "</p>")
        for run in _runs_of(report, table.task):
            imgs = report.images.get(run.name)
            if imgs:
                out.append(f"<h3>{e(run.name)}: samples / predictions</h3><div class=\"thumbs\">")
                out += [f'<img title="{e(_shown_path(p, out_dir))}" '
                        f'alt="{e(os.path.basename(p))}" src="{_data_uri(png)}">'
                        for p, png in imgs]
                out.append("</div>")
    if report.skipped:
        out.append("<h2>Skipped folders</h2><ul>")
        out += [f"<li><code>{e(_shown_path(p, out_dir))}</code>: {e(why)}</li>"
                for p, why in report.skipped]
        out.append("</ul>")
    if report.warnings:
        out.append("<h2>Warnings</h2><ul>")
        out += [f'<li class="warn">{e(w)}</li>' for w in report.warnings]
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)

