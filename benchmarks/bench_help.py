"""How long a task's ``--help`` takes, against importing the task (what help cost before the
command line answered it ahead of TensorFlow and JAX) and against an empty interpreter. The
checkpoint converter (``uvim_givt.compat.big_vision``) is compared with importing it together
with the trainer and model builders, which it loaded at import before.

Each figure is the median wall time of ``--repeats`` fresh processes (``python -m
tasks.<task> --help``, ``python -c "import tasks.<task>"``, ``python -c pass``), run one after
the other on an otherwise idle machine; the ratio is help / import of the same task.

    python benchmarks/bench_help.py                   # 5 repeats per task (~2 min on 2 cores)
    python benchmarks/bench_help.py --repeats 9 --tasks panoptic

JSON (``benchmarks/results/bench_help.json``): ``{"machine", "python_s", "rows": [{task,
help_s, import_s, ratio}]}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from uvim_givt import errors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("task", "help_s", "import_s", "ratio")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="panoptic,depth,imagenet,uvim_givt.compat.big_vision",
                   help="comma-separated task names or dotted module names (default: the three "
                        "tasks and the checkpoint converter)")
    p.add_argument("--repeats", type=errors.positive_int, default=5,
                   help="processes per figure (the median is reported)")
    _machine.add_output_arguments(p, __file__)
    return p.parse_args(argv)


def median_wall_s(cmd: list[str], repeats: int) -> float:
    """Median wall seconds of ``cmd`` run ``repeats`` times (output discarded; must exit 0)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    python_s = median_wall_s([sys.executable, "-c", "pass"], args.repeats)
    rows = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        print(f"{task}: --help and import, {args.repeats} processes each ...", flush=True)
        module = task if "." in task else f"tasks.{task}"
        help_s = median_wall_s([sys.executable, "-m", module, "--help"], args.repeats)
        # What help cost before: the module with everything it uses imported.
        heavy = "; import uvim_givt.training.trainer" if "." in task else ""
        import_s = median_wall_s([sys.executable, "-c", f"import {module}{heavy}"],
                                 args.repeats)
        rows.append({"task": task, "help_s": help_s, "import_s": import_s,
                     "ratio": help_s / import_s})
    _machine.print_table(rows, COLUMNS, markdown=args.markdown,
                         title=f"\nmedian wall seconds (an empty interpreter: {python_s:.3f} s)")
    return _machine.finish(args.json, {"python_s": python_s, "rows": rows}, machine)


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
