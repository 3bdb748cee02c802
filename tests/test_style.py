"""House style that ruff does not check: continuation lines aligned (pycodestyle's E127,
E128, E131), so that renames do not leave argument lists ragged."""

from __future__ import annotations

from pathlib import Path

import pycodestyle

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("uvim_givt", "tasks", "evals", "configs", "benchmarks", "tests")
ALIGNMENT = ["E127", "E128", "E131"]


def _report(paths: list[str]) -> pycodestyle.BaseReport:
    style = pycodestyle.StyleGuide(select=ALIGNMENT, max_line_length=100, quiet=True)
    return style.check_files(paths)


def test_continuation_lines_are_aligned():
    files = sorted(str(p) for d in CHECKED for p in (ROOT / d).rglob("*.py"))
    report = _report(files)
    assert report.total_errors == 0, report.get_statistics()


def test_the_alignment_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = max(1,\n           2)\ny = max(1,\n    2)\n")
    assert _report([str(bad)]).total_errors == 2
