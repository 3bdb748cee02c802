"""``python -m evals.panoptic``: PQ of COCO panoptic predictions on disk, or of a run.

Files mode (the inputs of panopticapi's ``pq_compute``)::

    python -m evals.panoptic --gt-json gt.json --gt-dir gt/ --pred-json pred.json --pred-dir pred/

Checkpoint mode (the run's declared ``panoptic`` evaluators, through the same runner API
as ``python -m tasks.panoptic eval``; writes ``RUN_DIR/eval/*.json``)::

    python -m evals.panoptic --ckpt RUN_DIR [--data SRC] [--split validation] [--max-examples N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from evals.panoptic_io import PanopticEvalError
from evals.pq import evaluate_files, format_table, results_json
from uvim_givt.errors import ArgumentParser, add_verbose_argument, positive_int, run_cli
from uvim_givt.rundir import write_json

# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (files mode or --ckpt mode)."""
    p = ArgumentParser(
        prog="python -m evals.panoptic",
        description="Panoptic quality (PQ/SQ/RQ) as panopticapi's pq_compute computes it.",
    )
    files = p.add_argument_group("files mode (same inputs as panopticapi)")
    files.add_argument("--gt-json", help="ground-truth COCO panoptic JSON")
    files.add_argument("--gt-dir", help="ground-truth PNG folder (default: GT_JSON minus .json)")
    files.add_argument("--pred-json", help="predictions COCO panoptic JSON")
    files.add_argument("--pred-dir", help="prediction PNG folder (default: PRED_JSON minus .json)")
    files.add_argument("--categories", help="categories JSON (default: the ground truth's)")
    ckpt = p.add_argument_group("checkpoint mode (the run's declared panoptic evaluators)")
    ckpt.add_argument("--ckpt", metavar="RUN_DIR", help="run directory to evaluate")
    ckpt.add_argument("--data", help="data source, as the task's --data takes it")
    ckpt.add_argument("--split", default=None,
                      help="score every evaluator on this split (default: each one's own)")
    ckpt.add_argument("--max-examples", type=positive_int, help="evaluate at most this many images")
    p.add_argument("--out", help="also write the results (with per-class figures) to this JSON")
    p.add_argument("--workers", type=positive_int,
                   help="worker processes, forked (default: usable CPUs, at most 8)")
    add_verbose_argument(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses and checks the mode's required arguments (exits 2 on misuse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    file_args = [args.gt_json, args.gt_dir, args.pred_json, args.pred_dir, args.categories]
    if args.ckpt:
        if any(a is not None for a in file_args):
            parser.error("--ckpt evaluates a run; leave out --gt-json/--gt-dir/--pred-json/...")
    else:
        if args.gt_json is None or args.pred_json is None:
            parser.error("give --gt-json and --pred-json (files mode) or --ckpt RUN_DIR")
        if args.data is not None or args.max_examples is not None:
            parser.error("--data and --max-examples go with --ckpt")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.max_examples is not None and args.max_examples < 1:
        parser.error("--max-examples must be at least 1")
    return args


def _run_ckpt(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The run's declared panoptic evaluators of stage 2 (its task found by name)."""
    from evals.evaluators import evaluate_run  # the models: only this mode needs them
    return evaluate_run(args.ckpt, "cli", stage="givt", kind="panoptic", source=args.data,
                        split=args.split, max_examples=args.max_examples)


def _flat_table(results: dict[str, dict[str, float]]) -> str:
    """One line per evaluator: PQ, SQ, RQ (x100) for All/Things/Stuff."""
    lines = [f"{'':12s} {'':6s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s}"]
    for name, m in results.items():
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            lines.append(f"{name:12s} {group:6s} " + " ".join(
                f"{m[k + suffix]:6.1f}" for k in ("PQ", "SQ", "RQ")))
    return "\n".join(lines)


def _write_out(path: str, obj: Any) -> None:
    try:
        write_json(path, obj)
    except OSError as e:
        raise PanopticEvalError(f"cannot write --out {path}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for bad input, with the message, no traceback)."""
    return run_cli(parse_args, _main, argv)


def _main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.ckpt:
        results = _run_ckpt(args)
        if args.out:
            _write_out(args.out, results)
        print(_flat_table(results))
        print(f"{int(next(iter(results.values()))['num_images'])} images in "
              f"{time.perf_counter() - start:.2f} s")
        return 0
    results, acc = evaluate_files(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir,
                                  args.categories, args.workers)
    if args.out:
        _write_out(args.out, results_json(results, acc))
    print(format_table(results))
    print(f"{acc.num_images} images in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
