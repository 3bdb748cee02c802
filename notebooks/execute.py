"""Runs notebooks/demo.ipynb on trained default runs and stores it with its outputs.

    python -m tasks.panoptic train && python -m tasks.depth train && python -m tasks.imagenet train
    python notebooks/execute.py                 # loads runs/<task>_tiny_embedded (~2 min)

The notebook's parameters are set by a cell inserted after its parameters cell (tagged
``injected-parameters``, as papermill does): ``RUN_ROOT`` the runs folder (relative to the
notebook, as Jupyter starts the kernel there), ``STEPS = None`` (the default runs, loaded,
never trained here: a missing run is an error). The kernel runs in ``notebooks/``. What
the stored outputs must and must not hold is checked by tests/test_notebook.py.
"""

from __future__ import annotations

import argparse
import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, "demo.ipynb")
TASKS = ("panoptic", "depth", "imagenet")
INJECTED = "injected-parameters"


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs, execution counts and injected parameters."""
    nb.cells = [c for c in nb.cells if INJECTED not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join(HERE, "..", "runs"),
                   help="folder holding <task>_tiny_embedded run directories (default: runs)")
    args = p.parse_args(argv)
    missing = [t for t in TASKS if not os.path.isdir(
        os.path.join(args.runs, f"{t}_tiny_embedded", "checkpoints", "givt"))]
    if missing:
        print(f"error: no trained default run of {', '.join(missing)} in {args.runs}: run "
              + " && ".join(f"python -m tasks.{t} train" for t in missing), file=sys.stderr)
        return 2
    nb = strip(nbformat.read(NOTEBOOK, as_version=4))
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    run_root = os.path.relpath(os.path.abspath(args.runs), HERE)
    cell = nbformat.v4.new_code_cell(
        "# Parameters of the stored outputs (notebooks/execute.py): the default runs\n"
        f"RUN_ROOT = {run_root!r}\nSTEPS = None")
    cell.metadata["tags"] = [INJECTED]
    nb.cells.insert(first_code + 1, cell)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": HERE}}).execute()
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK} with its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
