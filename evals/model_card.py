"""RUN/MODEL_CARD.md: what a run is, what it was trained on, what it scores, and where it
came from, in one page a reader can open without the suite.

Written after training and after ``eval`` (and by ``python -m evals.model_card RUN``); the
leaderboard links every run to it. Everything in it comes from the run directory: the
config, ``run_info.json`` (parameters, training time, the provenance of each training
command: :mod:`uvim_givt.provenance`) and the eval records (the latest of each evaluator).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from uvim_givt import config as config_lib
from uvim_givt import rundir
from uvim_givt.errors import ArgumentParser, UserError, add_verbose_argument, run_cli

NAME = "MODEL_CARD.md"
#: metrics shown per record (the family's display order first)
MAX_METRICS = 5


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}"


def _headline(record: dict[str, Any]) -> str:
    metrics = record["metrics"]
    order = (record.get("metric_meta") or {}).get("order") or []
    names = [k for k in order if k in metrics] or [
        k for k in metrics if not k.startswith(("num_", "gap/"))]
    units = (record.get("metric_meta") or {}).get("units") or {}
    parts = [f"{k} {_fmt(metrics[k])}{(' ' + units[k]) if k in units else ''}"
             for k in names[:MAX_METRICS]]
    return ", ".join(parts)


def latest_records(run_dir: str) -> list[dict[str, Any]]:
    """The newest final (not periodic, not re-tagged) record of each evaluator."""
    best: dict[str, dict[str, Any]] = {}
    for rec in rundir.read_eval_records(run_dir, on_error=lambda path, why: None):
        if rec.get("tag") or (rec.get("extra") or {}).get("periodic"):
            continue
        key = rec["evaluator"]
        if key not in best or (rec["step"], rec.get("time", "")) >= (
                best[key]["step"], best[key].get("time", "")):
            best[key] = rec
    return sorted(best.values(), key=lambda r: ({"vae": 0, "givt": 1}.get(r["stage"], 2),
                                                r["evaluator"]))


def render(run_dir: str) -> str:
    """The model card of ``run_dir`` as markdown."""
    cfg = config_lib.load_saved_config(run_dir)
    info = rundir.read_run_info(run_dir)
    name = os.path.basename(os.path.normpath(run_dir))
    source = str(cfg.data.source)
    params = info.get("num_params", {})
    times = info.get("train_time_s", {})
    lines = [f"# Model card: {name}", "",
             f"{cfg.task} with UViM: stage 1 a `{cfg.vae.kind}` VAE over the task's outputs, "
             + ("stage 2 the original UViM's VTT generating its code ids." if
                str(cfg.givt.kind) == "vtt" else
                f"stage 2 a GIVT (`{cfg.givt.model.style}`) generating its codes."), "",
             "| | |", "|---|---|",
             f"| config | `config.json`, preset `{cfg.size}`, hash "
             f"`{rundir.config_hash(cfg)[:12]}` |",
             f"| data | `{source}`, trained on split `{cfg.data.train_split}` at "
             f"{int(cfg.data.image_size)} px |"]
    for stage, label in (("vae", "stage 1"), ("givt", "stage 2")):
        if stage in params or stage in times:
            n = params.get(stage)
            steps = int(cfg[stage].train.total_steps)
            lines.append(f"| {label} | {n:,} parameters, {steps:,} steps"
                         + (f", {times[stage]:.0f} s of training" if stage in times else "")
                         + " |" if n is not None else f"| {label} | {steps:,} steps |")
    sessions = info.get("sessions", [])
    if sessions:
        first, last = sessions[0], sessions[-1]
        commit = last.get("commit") or {}
        code = (f"commit `{commit['sha'][:12]}`" + (" with uncommitted changes"
                                                    if commit.get("dirty") else "")
                if commit.get("sha") else "not a git checkout")
        v = last.get("versions", {})
        dev = last.get("devices", {})
        lines += [
            f"| trained by | `{last.get('command', '?')}` ({len(sessions)} command(s), "
            f"{first.get('started', '?')} to {last.get('ended') or 'unfinished'}, "
            f"last: {last.get('outcome') or 'running or killed'}) |",
            f"| code | uvim_givt {v.get('uvim_givt', '?')}, {code} |",
            f"| libraries | jax {v.get('jax', '?')}, flax {v.get('flax', '?')}, optax "
            f"{v.get('optax', '?')}, numpy {v.get('numpy', '?')} |",
            f"| machine | {last.get('host', '?')}: {dev.get('count', '?')} x "
            f"{dev.get('kind', '?')} ({dev.get('backend', '?')}), "
            f"{dev.get('processes', 1)} process(es) |"]
    lines += ["", "## Results", ""]
    records = latest_records(run_dir)
    if records:
        lines += ["| evaluator | stage | step | data, split | examples | metrics |",
                  "|---|---|---|---|---|---|"]
        for r in records:
            lines.append(f"| {r['evaluator']} | {r['stage']} | {r['step']:,} | "
                         f"`{r['data']}`, {r['split']} | {r.get('num_examples', '')} | "
                         f"{_headline(r)} |")
        lines += ["", "Each row is the newest record of that evaluator in `eval/` (the "
                  "full metrics are there)."]
    else:
        lines.append(f"No evaluation recorded yet (`python -m tasks.{cfg.task} eval --ckpt "
                     "RUN`).")
    lines += ["", "## Intended use and limits", ""]
    if source == "embedded":
        lines.append("Trained on the suite's embedded dataset: small synthetic data with the "
                     "features of the real one, built locally. The run shows that the "
                     "pipeline works end to end; it is not a model of real images, and its "
                     "numbers are not comparable with the papers' (measured on real data at "
                     "paper scale).")
    else:
        lines.append(f"Trained on `{source}`. Compare its numbers with published ones only "
                     "on the same data, split and protocol (docs/DEVIATIONS.md lists where the "
                     "presets differ from the published recipes).")
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: str) -> str | None:
    """Writes RUN/MODEL_CARD.md; returns its path, or None (with a warning) when the run
    directory cannot be written (a read-only run still evaluates)."""
    import jax  # several processes train one run: process 0 writes its files

    if jax.process_index() != 0:
        return None
    path = os.path.join(run_dir, NAME)
    text = render(run_dir)
    try:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError as e:
        print(f"warning: could not write {path} ({e.strerror or e})", file=sys.stderr)
        return None
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m evals.model_card", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run directory")
    add_verbose_argument(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(os.path.join(args.run, "config.json")):
        raise UserError(f"{args.run} is not a run directory (no config.json)")
    path = write_model_card(args.run)
    if path:
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
