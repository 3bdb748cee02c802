"""The token-kind comparisons in the leaderboard: every ``compare.json`` that
``python -m evals.compare`` wrote (continuous against discrete codes of one task) under the
roots searched for runs, or named with ``--compare``, shown as a table in its task's
section, with the same cells as the command's own ``compare.md``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from evals.compare import COMPARE_FILE, HEAD, NOTE, cells
from evals.leaderboard.tables import Table


@dataclasses.dataclass
class Comparison:
    """One compare.json: where it is, its task and the table of its rows."""

    path: str
    task: str
    table: Table
    note: str


def is_comparison_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPARE_FILE))


def read_comparison(path: str, warnings: list[str]) -> Comparison | None:
    """``path``: a compare.json or its folder; None (and a warning naming the file and what
    is wrong) for a file that cannot be read as one."""
    file = os.path.join(path, COMPARE_FILE) if os.path.isdir(path) else path
    try:
        with open(file) as f:
            data = json.load(f)
        rows, task = data["rows"], str(data["task"])
        table = Table(task=task, columns=list(HEAD), rows=cells(rows), published=[],
                      numeric=[c not in ("run", "tokens", "metric") for c in HEAD])
        note = NOTE.format(batch=data.get("batch", "?"), repeats=data.get("repeats", "?"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"no key {e}" if isinstance(e, KeyError) else str(e)
        warnings.append(f"unreadable comparison {file} (not shown): {what}")
        return None
    return Comparison(file, task, table, note)


def gather_comparisons(paths: Sequence[str], roots: Sequence[str], warnings: list[str]
                       ) -> list[Comparison]:
    """The comparisons named in ``paths`` (files or folders) and every compare.json under
    ``roots``, each read once, in path order."""
    files = []
    for p in paths:
        if not (os.path.isfile(p) or is_comparison_dir(p)):
            warnings.append(f"--compare {p}: no {COMPARE_FILE} there (not shown)")
            continue
        files.append(os.path.join(p, COMPARE_FILE) if os.path.isdir(p) else p)
    walked: set[str] = set()  # real paths: a symlink loop is walked once
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            walked.add(os.path.realpath(dirpath))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                                 os.path.realpath(os.path.join(dirpath, d)) not in walked)
            if COMPARE_FILE in filenames:
                files.append(os.path.join(dirpath, COMPARE_FILE))
    out, seen = [], set()
    for f in sorted(files):
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            c = read_comparison(f, warnings)
            if c is not None:
                out.append(c)
    return out
