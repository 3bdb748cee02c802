"""notebooks/demo.ipynb: parameterised in its first code cell, stored with the outputs of the
default runs (notebooks/execute.py) and clean ones (no absolute paths, terminal codes or
library noise), and run from top to bottom (its own smoke defaults: a few steps per stage)
through nbclient, drawing its pictures and writing nothing into the repository."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "demo.ipynb"
#: cells (by tag) that must show pictures, and how many
PICTURES = {"panoptic": 1, "depth": 1, "codes": 2, "digits": 1}
#: folders whose contents are nobody's output (caches, environments)
_NOT_OUTPUT = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "venv"}


def _read() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(nb: nbformat.NotebookNode) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def _repo_files() -> set[str]:
    out = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _NOT_OUTPUT and not d.endswith(".egg-info")]
        out.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files)
    return out


def _pictures(cell: nbformat.NotebookNode) -> int:
    return sum(o.output_type == "display_data" and "image/png" in o.get("data", {})
               for o in cell.outputs)


def _execute_module():
    spec = importlib.util.spec_from_file_location("nb_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What no stored or fresh output may hold: a path of the machine that ran it, terminal
# control codes, TFDS's build chatter, absl records, a traceback.
_DIRTY = re.compile(r"(?<![\w.])/(tmp|home|root|work|Users|var)/|\x1b\[|Downloading and "
                    r"preparing|Generating splits|WARNING:absl|Traceback \(most recent")


def _dirty_outputs(nb: nbformat.NotebookNode, own: str = "") -> list[str]:
    """What the outputs hold that they should not (``own``: a folder the run may name)."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                found.append(f"cell {i}: error {out.ename}")
            text = out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
            text = text.replace(own, "OWN") if own else text
            found += [f"cell {i}: {m.group(0)!r}" for m in _DIRTY.finditer(text)]
    return found


def test_notebook_is_stored_with_clean_outputs_and_parameterised():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # run top to bottom once (notebooks/execute.py), every picture drawn, nothing dirty
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        for tag in cell.metadata.get("tags", []):
            if tag in PICTURES:
                assert _pictures(cell) == PICTURES[tag], tag
    assert _dirty_outputs(nb) == []
    injected = nb.cells[_parameters_index(nb) + 1]
    assert injected.metadata.get("tags") == ["injected-parameters"]
    assert re.search(r"^STEPS = None$", injected.source, re.M)  # the default runs
    params = nb.cells[_parameters_index(nb)]
    assert "parameters" in params.metadata.get("tags", [])
    for name in ("RUN_ROOT", "STEPS", "IMAGE_DIR"):
        assert re.search(rf"^{name} = ", params.source, re.M), name
    tags = [t for c in code for t in c.metadata.get("tags", [])]
    assert set(PICTURES) <= set(tags)
    # each step that draws is explained by the markdown cell before it
    for prev, cell in zip(nb.cells, nb.cells[1:], strict=False):
        if set(cell.metadata.get("tags", [])) & set(PICTURES):
            assert prev.cell_type == "markdown" and len(prev.source) > 100, cell.source[:80]


def test_stored_notebook_fits_the_limit_for_tracked_files():
    # The repository tracks no file over 2 MiB; the notebook's pictures are what grows it
    # (at matplotlib's 100 dpi its figures once took it to 4.2 MB).
    size = os.path.getsize(NOTEBOOK)
    assert size < 2 * 2**20, f"{NOTEBOOK}: {size:,} bytes"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nb = _execute_module().strip(_read())  # as stored, less its outputs and injected cell
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")
    runs = tmp_path / "runs"
    # As papermill does: a cell after the parameters overrides them (the run folder here).
    nb.cells.insert(_parameters_index(nb) + 1,
                    nbformat.v4.new_code_cell(f"RUN_ROOT = {str(runs)!r}"))
    # The kernel inherits the environment: its temporary folders (image fallback) go under
    # tmp_path, and its embedded datasets (small: seconds to build) into a folder of its own,
    # where no other test worker builds the same dataset at the same time.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    # The kernel is this interpreter, whatever other "python3" kernels the machine has.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    before = _repo_files()
    work = tmp_path / "cwd"
    work.mkdir()
    # raises CellExecutionError, with the cell and its traceback, if any cell fails
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    for cell in code:
        for tag in cell.metadata.get("tags", []):
            if tag in PICTURES:
                assert _pictures(cell) == PICTURES[tag], (tag, [o.output_type for o in
                                                                cell.outputs])
    assert _dirty_outputs(nb, str(tmp_path)) == []  # quiet cells: no build chatter or codes
    trained = sorted(p.name for p in runs.iterdir())
    assert [re.sub(r"_smoke_\d+steps$", "", n) for n in trained] == [
        "depth", "imagenet", "panoptic"], trained
    for name in trained:
        assert (runs / name / "checkpoints" / "givt").is_dir()
    assert _repo_files() - before == set(), "the notebook wrote into the repository"
    assert not os.listdir(work)
