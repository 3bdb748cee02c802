r"""Both token kinds of a task side by side, in one table: GIVT (continuous codes: a VAE and a
GIVT) against the discrete-token systems (a VQ-VAE and the VTT, the original UViM, for the
dense tasks; a VQ tokenizer and the same transformer over ids for generation).

    python -m evals.compare --task colorization        # runs/compare/colorization_tiny_*
    python -m evals.compare --task panoptic --size tiny --workdir runs/compare
    python -m evals.compare --task imagenet --args style=masked     # digits, MaskGIT
    python -m evals.compare --runs RUN_A RUN_B --out DIR      # runs that exist already
    python -m evals.leaderboard                     # shows the tables under runs/ too

With ``--task`` it trains ``configs/<task>.py:size=S,tokens=continuous`` and ``...,tokens=vq``
(plus ``--args``; ``python -m tasks.<task> train``; the presets give both kinds the same
steps and batch), or resumes them, or reuses them when finished, then compares. Columns,
per run:

* the task's primary metric of stage 2's samples, of its teacher-forced means (dense
  tasks) and of the stage-1 oracle (generation: ``FID_recon``), the latest record of each
  from the run's ``eval/``;
* ``code bits``: what one image's codes take to store: ``code_len * log2(dict_size)`` for
  code ids, ``code_len * code_dim * 32`` for float32 codes;
* ``NLL / image``: stage 2's held-out NLL per code times the codes per image, in nats (a
  probability of ids for the VTT, a density of real vectors for the GIVT: not the same
  quantity, shown for each side's own progress);
* ``sampling s / image``: stage 2 sampling and stage-1 decoding of one batch (``--batch``)
  of validation images (generation: of class labels), the median of ``--repeats`` timed
  calls after a compiling one, divided by the batch (measured here, now, on this machine);
* parameters of stage 1 and stage 2.

Writes ``OUT/compare.md`` and ``OUT/compare.json`` (default ``OUT`` with ``--task``:
``WORKDIR/<task>_<size>_compared``, beside the two runs, where the leaderboard finds it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from uvim_givt import errors, rundir
from uvim_givt.errors import UserError

TOKENS = ("continuous", "vq")
DISCRETE_KINDS = ("vqvae", "vqgan")  # stage-1 kinds whose codes are ids
COMPARE_FILE = "compare.json"
COLUMNS = ("run", "tokens", "metric", "sampled", "teacher_forced", "oracle", "code_bits",
           "nll_per_image", "sample_s_per_image", "params_stage1", "params_stage2")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="python -m evals.compare",
                              description=__doc__.split("\n\n")[0].replace("\n", " "))
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="a task with both token kinds (panoptic, depth, "
                                     "colorization, imagenet): train or reuse its two runs")
    what.add_argument("--runs", nargs="+", metavar="RUN", help="compare these run folders")
    p.add_argument("--size", default="tiny", help="the preset of --task (default tiny)")
    p.add_argument("--args", default="", metavar="K=V,...",
                   help="more config arguments of --task's two runs (e.g. style=masked)")
    p.add_argument("--workdir", default="runs/compare",
                   help="where --task's runs go: WORKDIR/<task>_<size>_<tokens>")
    p.add_argument("--out", help="folder for compare.md and compare.json (default with "
                                 "--task: WORKDIR/<task>_<size>_compared, which the "
                                 "leaderboard of WORKDIR's root shows)")
    p.add_argument("--batch", type=errors.positive_int, default=8,
                   help="validation images per timed sampling call (default 8)")
    p.add_argument("--repeats", type=errors.positive_int, default=3,
                   help="timed sampling calls, after a compiling one (default 3)")
    errors.add_verbose_argument(p)
    args = p.parse_args(argv)
    if args.runs and not args.out:
        p.error("--runs needs --out (the folder for compare.md and compare.json)")
    return args


# ------------------------------------------------------------------------------ the runs
def _tag(args: str) -> str:
    """``style=masked`` -> ``_style-masked``: the config arguments in folder names."""
    return "".join(f"_{a.strip().replace('=', '-')}" for a in args.split(",") if a.strip())


def train_both(task: str, size: str, workdir: str, args: str = "") -> list[str]:
    """Trains (or resumes, or reuses) the two token kinds of ``task``; returns their runs."""
    runs = []
    extra = "".join(f",{a}" for a in args.split(",") if a.strip())
    for tokens in TOKENS:
        run = os.path.join(workdir, f"{task}_{size}{_tag(args)}_{tokens}")
        cmd = [sys.executable, "-m", f"tasks.{task}", "train", "--config",
               f"configs/{task}.py:size={size},tokens={tokens}{extra}", "--workdir", run]
        print("$ " + " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"training the {tokens} run of {task} failed (above); rerun to "
                            "resume it")
        runs.append(run)
    return runs


def latest(records: Sequence[dict[str, Any]], stage: str, evaluator: str
           ) -> dict[str, Any] | None:
    """The record of ``evaluator`` of ``stage`` at the highest step (a rerun's last)."""
    found = [r for r in records if r.get("stage") == stage and r.get("evaluator") == evaluator]
    return max(found, key=lambda r: (int(r["step"]), r.get("time", ""))) if found else None


def is_discrete(cfg: Any) -> bool:
    return str(cfg.vae.kind) in DISCRETE_KINDS


def code_len(cfg: Any) -> int:
    """Codes per image (the stage-1 model's, built without parameters)."""
    from uvim_givt.models import builders
    return int(builders.build_model("vae", cfg).code_len)


def code_bits(cfg: Any) -> float:
    """Bits to store one image's codes: ids of a dictionary, or float32 vectors."""
    if is_discrete(cfg):
        return code_len(cfg) * math.log2(int(cfg.vae.model.dict_size))
    return code_len(cfg) * int(cfg.givt.model.out_dim) * 32.0


def sampling_seconds(run_dir: str, batch: int, repeats: int) -> float:
    """Seconds per image of stage 2 sampling plus stage-1 decoding on validation images."""
    import jax
    import numpy as np

    from uvim_givt.data import catalog, pipeline
    from uvim_givt.sampling.predictor import Predictor
    from uvim_givt.training.runner import load_run

    run = load_run(run_dir)
    cfg, task = run.cfg, run.task
    ds = catalog.load(task.readers, cfg, str(cfg.data.source), str(cfg.data.val_split))
    images = next(iter(pipeline.eval_batches(
        ds.take(batch), lambda ex: task.preprocess(cfg, ex, "eval"), batch)))["image"]
    predictor = Predictor(cfg, run.vae_params, run.givt_params, batch_size=batch)
    generation = not predictor.model.has_encoder  # class-conditional: labels, not images
    labels = np.arange(batch, dtype=np.int32) % int(predictor.model.num_labels or 1)

    def once(seed: int) -> float:
        t0 = time.perf_counter()
        if generation:
            predictor.decode_images(predictor.sample_latents(labels, seed=seed))
        else:
            jax.block_until_ready(predictor.predict(
                images, seed=seed, mirror_equivariant=task.mirror_equivariant))
        return time.perf_counter() - t0

    once(0)  # compiles
    return statistics.median(once(i + 1) for i in range(repeats)) / int(np.shape(images)[0])


def row(run_dir: str, batch: int, repeats: int) -> dict[str, Any]:
    """One run's line of the table."""

    cfg = rundir.load_run_config(run_dir)
    records = rundir.read_eval_records(run_dir)
    sampled = latest(records, "givt", "sampled")
    if sampled is None:
        raise UserError(f"{run_dir} has no stage-2 'sampled' record: train or evaluate it "
                        "first (python -m tasks.<task> eval --ckpt RUN)")
    metric = sampled["metric_meta"]["primary"]

    def value(stage: str, evaluator: str, key: str = metric) -> float | None:
        rec = latest(records, stage, evaluator)
        if rec is None:
            return None
        # a generation oracle scores reconstructions: FID_recon for FID
        return rec["metrics"].get(key, rec["metrics"].get(f"{key}_recon"))

    nll = value("givt", "givt_loss", "nll_per_token")
    info_path = os.path.join(run_dir, "run_info.json")
    params = {}
    if os.path.isfile(info_path):
        with open(info_path) as f:
            params = json.load(f).get("num_params", {})
    print(f"timing sampling of {run_dir} ...", flush=True)
    return {
        "run": run_dir,
        "tokens": _tokens_label(cfg),
        "metric": metric,
        "sampled": sampled["metrics"][metric],
        "teacher_forced": value("givt", "teacher_forced"),
        "oracle": value("vae", "oracle"),
        "code_bits": code_bits(cfg),
        "nll_per_image": None if nll is None else nll * code_len(cfg),
        "sample_s_per_image": sampling_seconds(run_dir, batch, repeats),
        "params_stage1": params.get("vae"),
        "params_stage2": params.get("givt"),
        "num_images": sampled["metrics"].get("num_images"),
        "data": sampled.get("data"),
    }


def _tokens_label(cfg: Any) -> str:
    style = "" if str(cfg.givt.kind) == "vtt" else f", {cfg.givt.model.style}"
    if str(cfg.vae.kind) == "vqvae":
        return "discrete (VQ-VAE + VTT)"
    if is_discrete(cfg):
        lookup = "factorised l2" if int(cfg.vae.model.get("factorized_dim", 0)) else "VQGAN"
        return f"discrete ({lookup} tokenizer + transformer{style})"
    return f"continuous ({cfg.vae.kind} VAE + GIVT{style})"


# ------------------------------------------------------------------------------ the table
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 100:
        v = int(v)  # 448.0 code bits
    if isinstance(v, float):
        return (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if abs(v) >= 1 else
                f"{v:.3g}")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


HEAD = ("run", "tokens", "metric", "stage 2 samples", "teacher-forced", "stage-1 oracle",
        "code bits / image", "stage-2 NLL / image (nats)", "sampling s / image",
        "params stage 1", "params stage 2")
NOTE = ("NLL / image: nats of code ids (discrete) or a density of real codes (continuous), "
        "not comparable across kinds. Sampling time measured when the table was written, on "
        "that machine, batch {batch}, median of {repeats}.")


def cells(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The table's formatted cells, a list per row in ``HEAD``'s order (this command's
    Markdown and the leaderboard's comparison tables)."""
    return [[_fmt(r.get(c)) if c != "run" else os.path.basename(os.path.normpath(r[c]))
             for c in COLUMNS] for r in rows]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in cells(rows)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = (train_both(args.task, args.size, args.workdir, args.args) if args.task
            else list(args.runs))
    rows = [row(r, args.batch, args.repeats) for r in runs]
    tasks = {rundir.load_run_config(r).task for r in runs}
    if len(tasks) > 1:
        raise UserError(f"the runs are of different tasks ({', '.join(sorted(tasks))}): "
                        "compare runs of one task")
    task = tasks.pop()
    out = args.out or os.path.join(args.workdir, f"{args.task}_{args.size}{_tag(args.args)}"
                                                 "_compared")
    os.makedirs(out, exist_ok=True)
    table = markdown(rows)
    note = NOTE.format(batch=args.batch, repeats=args.repeats) + "\n"
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(f"# {task}: continuous against discrete tokens\n\n{table}\n{note}")
    # The leaderboard shows every compare.json under its roots (evals/leaderboard).
    rundir.write_json(os.path.join(out, COMPARE_FILE),
                      {"task": task, "rows": rows, "batch": args.batch,
                       "repeats": args.repeats})
    print(table + note + f"wrote {os.path.join(out, 'compare.md')} and {COMPARE_FILE}")
    return {"rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
