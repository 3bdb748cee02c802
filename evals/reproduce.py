"""Reproduce a published number in one command: convert released big_vision checkpoints,
run the config's published protocol on the named data, and write a "reproduced against
published" table.

::

    python -m evals.reproduce --vae-npz vae_coco_panoptic_params.npz \\
        --givt-npz givt_coco_panoptic_params.npz --config configs/panoptic.py:size=paper \\
        --data tfds:coco/2017_panoptic --out repro/panoptic

The run directory ``OUT/run`` holds the converted checkpoints and the evaluation records
(the evaluators declared in the config: the stage-1 oracle and the stage-2 samples for the
dense tasks, FID for ImageNet). ``OUT/reproduced.md`` and ``.json`` list, for every
published value of the task (its metadata's references), the metric, the published value,
ours, the difference and whether our data is the data it was measured on, with the
provenance: each checkpoint file's SHA-256, the config and overrides, the data source,
split and number of images, the library versions and the commit of this code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from uvim_givt import provenance, rundir
from uvim_givt.errors import (
    ArgumentParser,
    UserError,
    add_verbose_argument,
    positive_int,
    run_command,
)
from uvim_givt.task import dataset_name

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu",
             "tensorflow-datasets")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_commit() -> dict[str, Any]:
    """The git commit of this code and whether its tree has changes ({} outside git)."""
    found = provenance.git_commit()
    return {"commit": found["sha"], "dirty": found["dirty"]} if found else {}


def library_versions() -> dict[str, str]:
    return provenance.versions(LIBRARIES)


def comparison_rows(records: list[dict[str, Any]], datasets: dict[str, str]
                    ) -> list[dict[str, Any]]:
    """One row per published value of the records' metric families: ours from the record
    of the same prediction (oracle or sampled), the difference, and whether our data is
    the reference's."""
    rows = []
    for rec in records:
        meta = rec.get("metric_meta") or {}
        ours_data = dataset_name(datasets, str(rec.get("data", "")))
        for ref in meta.get("references", []):
            if ref["prediction"] != rec["prediction"] or ref["metric"] not in rec["metrics"]:
                continue
            ours = float(rec["metrics"][ref["metric"]])
            rows.append({
                "model": ref["model"], "metric": ref["metric"], "prediction": ref["prediction"],
                "published": ref["value"], "ours": ours, "difference": ours - ref["value"],
                "published_data": ref["data"], "our_data": ours_data,
                "same_data": ours_data == ref["data"], "num_images": rec.get("num_examples"),
                "evaluator": rec["evaluator"], "step": rec["step"]})
    return rows


def write_table(path: str, rows: list[dict[str, Any]], provenance: dict[str, Any]) -> str:
    lines = ["# Reproduced against published", "",
             "| model | metric | published | ours | difference | published on | ours on | "
             "images |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r["same_data"] else " (other data: not comparable)"
        lines.append(f"| {r['model']} | {r['metric']} ({r['prediction']}) | "
                     f"{r['published']:.4g} | {r['ours']:.4g} | {r['difference']:+.4g}{flag} | "
                     f"{r['published_data']} | {r['our_data']} | {r['num_images']} |")
    if not rows:
        lines.append("| (no published value matches these evaluations) | | | | | | | |")
    lines += ["", "## Provenance", "", "```json", json.dumps(provenance, indent=1), "```", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def reproduce(args: argparse.Namespace) -> dict[str, Any]:
    # the models and evaluators: imported here, so --help and bad flags answer at once
    from evals.evaluators import evaluate_run
    from uvim_givt.compat.big_vision import convert

    for flag, path in (("--vae-npz", args.vae_npz), ("--givt-npz", args.givt_npz)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such file")
    run_dir = os.path.join(args.out, "run")
    if os.path.exists(os.path.join(run_dir, "checkpoints")):
        raise UserError(f"{run_dir} already holds checkpoints: give a new --out")
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.source={args.data!r}")
    print(f"reproducing {args.config} from released checkpoints into {args.out}")
    checkpoints = {}
    for stage, path in (("vae", args.vae_npz), ("givt", args.givt_npz)):
        if path:
            convert(path, args.config, run_dir, overrides, stage=stage, log=lambda s: None)
            checkpoints[stage] = {"file": os.path.basename(path), "sha256": file_sha256(path)}
            print(f"  converted {path} ({stage})")
    stage = None if args.givt_npz else "vae"
    results = evaluate_run(run_dir, "reproduce", stage=stage, split=args.split,
                           max_examples=args.max_eval)
    records = [r for r in rundir.read_eval_records(run_dir) if r.get("origin") == "reproduce"
               and r["evaluator"] in results]
    cfg = rundir.load_run_config(run_dir)
    from uvim_givt.task import get_task
    task = get_task(str(cfg.task))
    rows = comparison_rows(records, dict(task.metadata.datasets))
    provenance = {
        "checkpoints": checkpoints, "config": args.config, "overrides": overrides,
        "data": str(cfg.data.source),
        "evaluations": {r["evaluator"]: {"split": r["split"], "num_images": r["num_examples"],
                                         "step": r["step"]} for r in records},
        "libraries": library_versions(), "code": code_commit(),
    }
    out = {"rows": rows, "provenance": provenance}
    rundir.write_json(os.path.join(args.out, "reproduced.json"), out)
    table = write_table(os.path.join(args.out, "reproduced.md"), rows, provenance)
    for r in rows:
        print(f"  {r['model']:<40s} {r['metric']:>5s}  published {r['published']:8.4g}  "
              f"ours {r['ours']:8.4g}  ({r['difference']:+.4g})"
              + ("" if r["same_data"] else f"  [ours on {r['our_data']}]"))
    print(f"wrote {table} and reproduced.json")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m evals.reproduce",
                       description="Convert released big_vision checkpoints, run the "
                                   "published protocol, compare with the published values.")
    p.add_argument("--vae-npz", required=True, help="released stage-1 checkpoint (.npz)")
    p.add_argument("--givt-npz", default=None,
                   help="released stage-2 checkpoint (.npz); without it, stage 1 alone")
    p.add_argument("--config", required=True,
                   help="FILE[:args] of the published model, e.g. configs/panoptic.py:"
                        "size=paper")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (e.g. the adaptor of a released GIVT)")
    p.add_argument("--data", default=None, help="data source (default: the config's)")
    p.add_argument("--split", default=None, help="default: each evaluator's split")
    p.add_argument("--max-eval", type=positive_int, default=None,
                   help="cap on evaluated images (a smoke test: not the published protocol)")
    p.add_argument("--out", required=True, help="directory for the run and the table")
    add_verbose_argument(p)
    args = p.parse_args(argv)
    return run_command(lambda: reproduce(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
