"""Compile time of the GPU suite's train steps without and with the persistent compile cache.

Runs ``gpu_suite.py`` twice on a fresh, empty cache directory (each run its own processes)
and prints each run's ``compile_s`` per row and their ratio: the second run should load
what the first compiled instead of compiling it again.

    python benchmarks/bench_compile_cache.py                 # --smoke rows (CPU: ~1 min)
    python benchmarks/bench_compile_cache.py --full          # the suite's own sizes (device)

JSON (``benchmarks/results/bench_compile_cache.json``): ``{"machine", "rows": [{variant, stage,
size, first_compile_s, second_compile_s, ratio}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from uvim_givt import errors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ("variant", "stage", "size", "first_compile_s", "second_compile_s", "ratio")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true",
                   help="the suite's default sizes instead of --smoke")
    p.add_argument("--variants", default="bf16_fused",
                   help="gpu_suite.py --variants (default bf16_fused)")
    p.add_argument("--stages", default="encdec,vit_vae",
                   help="gpu_suite.py --stages (default both)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="passed on to gpu_suite.py --set")
    _machine.add_output_arguments(p, __file__)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        for i in (1, 2):
            out = os.path.join(tmp, f"run{i}.json")
            cmd = [sys.executable, os.path.join(HERE, "gpu_suite.py"), "--no-sampling",
                   "--variants", args.variants, "--stages", args.stages,
                   "--cache-dir", cache, "--json", out]
            cmd += [] if args.full else ["--smoke"]
            for item in args.overrides:
                cmd += ["--set", item]
            print(f"run {i}: gpu_suite.py {'(full)' if args.full else '--smoke'}, cache "
                  f"{'empty' if i == 1 else 'filled by run 1'} ...", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                runs.append(json.load(f)["train"])
    rows = []
    for first, second in zip(*runs, strict=True):
        a, b = first.get("compile_s"), second.get("compile_s")
        rows.append({"variant": first["variant"], "stage": first.get("stage"),
                     "size": first["size"],
                     "first_compile_s": a, "second_compile_s": b,
                     "ratio": b / a if a and b else None})
    _machine.print_table(rows, COLUMNS, title="\ncompile time, empty cache vs filled cache",
                         markdown=args.markdown)
    return _machine.finish(args.json, {"rows": rows}, machine)


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
