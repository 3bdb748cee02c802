"""Finding run directories and reading their files.

Finds run directories under a root, following symlinks (a folder of links to runs is
the usual way to gather them); loops, second paths to a run, broken links, unreadable
folders and folders without run files are returned as skipped, with the reason.

Reads, per run directory: ``eval/*.json`` (the records of
:func:`uvim_givt.rundir.write_eval_record`; an unreadable one is left out with a
warning naming its file, the run's other records are kept), and when present
``config.json``, ``metrics.jsonl`` (``{"stage", "step", "loss", ..., "time"}`` per
line), ``run_info.json`` (``{"num_params": {stage: n}, "train_time_s": {stage: s}}``)
and PNGs under ``samples/`` or ``predictions/``. Missing optional files are fine;
unreadable ones are reported in the warnings, never silently skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from evals.compare import COMPARE_FILE
from uvim_givt.errors import UserError
from uvim_givt.rundir import read_eval_records

RUN_FILES = ("config.json", "metrics.jsonl", "run_info.json", "eval")
# Stages a run trains, in this order (each counts its own steps); other stages follow.
STAGE_ORDER = ("vae", "givt")
STAGE_TITLES = {"vae": "stage 1 (VAE)", "givt": "stage 2 (GIVT)"}
IMAGE_DIRS = ("samples", "predictions")
IMAGES_PER_RUN = 4


class LeaderboardError(UserError, ValueError):
    """A run directory or argument that cannot be used as given."""


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
    unreadable_records: list[str] = dataclasses.field(default_factory=list)  # eval/ files

    @property
    def tasks(self) -> list[str]:
        found = {str(r["task"]) for r in self.records}
        if not found and isinstance(self.config.get("task"), str):
            found = {self.config["task"]}
        return sorted(found)


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key of stages: STAGE_ORDER first, then by name."""
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def records_of(runs: Sequence[Run], task: str) -> list[dict[str, Any]]:
    """Every eval record of ``task`` in ``runs``."""
    return [r for run in runs for r in run.records if str(r["task"]) == task]


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
    compared: list[str] = []  # folders with an evals.compare table

    def unreadable(e: OSError) -> None:
        skipped.append((str(e.filename), f"unreadable ({e.strerror or e})"))

    # followlinks: run folders gathered by symlinks are the common case; the seen-set
    # keeps a link to an ancestor from looping and a second link from double counting.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        if is_run_dir(dirpath):
            found.append(dirpath)
            dirnames[:] = []
            continue
        if COMPARE_FILE in filenames:  # a token-kind comparison: shown, not skipped
            compared.append(dirpath)
        elif dirpath != root:
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
    above_runs = set()  # the walked folders with a run (or a comparison) somewhere below
    for r in found + compared:
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


#: which pictures a run shows first: its real predictions, then the diagnostics
PICTURE_PRIORITY = ("sampled", "teacher_forced", "baseline", "oracle", "completed",
                    "uncertainty")


def _rank(prediction: str | None) -> int:
    return PICTURE_PRIORITY.index(prediction) if prediction in PICTURE_PRIORITY else \
        len(PICTURE_PRIORITY)


def _find_images(run_dir: str, records: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Up to IMAGES_PER_RUN pictures: those the newest records say they wrote
    (``extra.pngs``), the sampled predictions first and research pictures last; for runs
    whose records name none, the files in IMAGE_DIRS by the same priority of their names
    (never by file time, which a copy changes)."""
    chosen: list[str] = []
    ranked = sorted((r for r in records if (r.get("extra") or {}).get("pngs")),
                    key=lambda r: (_rank(r.get("prediction")), -int(r.get("step", 0))))
    for record in ranked:
        for rel in record["extra"]["pngs"]:
            path = os.path.join(run_dir, rel)
            if path not in chosen and os.path.isfile(path):
                chosen.append(path)
    if not chosen:
        paths = []
        for sub in IMAGE_DIRS:
            for dirpath, _, files in os.walk(os.path.join(run_dir, sub)):
                paths += [os.path.join(dirpath, f) for f in files
                          if f.lower().endswith(".png")]

        def by_name(path: str) -> tuple[int, str]:
            name = os.path.basename(path)
            hits = [i for i, p in enumerate(PICTURE_PRIORITY) if name.startswith(p)]
            return (hits[0] if hits else len(PICTURE_PRIORITY), path)
        chosen = sorted(paths, key=by_name)
    return chosen[:IMAGES_PER_RUN]


def read_records(run_dir: str, warnings: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's eval records by stage then step (as :func:`uvim_givt.rundir.read_eval_records`
    reads them), and the paths of the unreadable ones: each is left out with a warning
    naming its file; the others are kept."""
    broken: list[str] = []

    def skip(path: str, why: str) -> None:
        broken.append(path)
        warnings.append(f"eval record {path} skipped: {why}; the run's other records are "
                        "shown")

    return read_eval_records(run_dir, on_error=skip), broken


def load_run(path: str, name: str, warnings: list[str]) -> Run:
    """Reads one run directory; optional files may be missing."""
    records, broken = read_records(path, warnings)
    return Run(
        name=name,
        path=path,
        config=_read_json(os.path.join(path, "config.json"), warnings),
        records=records,
        log=_read_jsonl(os.path.join(path, "metrics.jsonl"), warnings),
        info=_read_json(os.path.join(path, "run_info.json"), warnings),
        images=_find_images(path, records),
        unreadable_records=broken,
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
