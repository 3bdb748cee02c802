"""The command line every task shares: the commands' arguments and the one ``main``.

    python -m tasks.<task> train [--stage vae|givt|all] [--config FILE[:args]] [--set k=v ...]
                                 [--workdir DIR] [--data SPEC] [--vae-ckpt RUN] [--no-eval]
                                 [--max-eval N]
    python -m tasks.<task> eval --ckpt RUN [--oracle] [--data SPEC] [--split S] [--max-eval N]
    python -m tasks.<task> predict --ckpt RUN --images DIR --out DIR      (dense tasks)
    python -m tasks.<task> complete --ckpt RUN --region R --out DIR       (dense tasks)

A :class:`Command` is a name, a help line and its arguments: nothing here imports JAX or
TensorFlow, so a task module can answer ``--help`` (:func:`exit_if_help`) before it loads
them. What a command runs is handed to :func:`main` by the task (``tasks/common.py``), and
the evaluation machinery with it, so the library imports no evaluator. Errors a user can
cause (:class:`UserError`, including those raised inside tf.data) print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from uvim_givt.errors import (
    EXIT_USER_ERROR,
    ArgumentParser,
    add_verbose_argument,
    positive_float,
    positive_int,
    run_command,
)
from uvim_givt.sampling.completion import REGIONS  # NumPy only (the samplers load lazily)

STAGES = ("vae", "givt", "all")  # train --stage


@dataclasses.dataclass(frozen=True)
class Command:
    """A sub-command: its name, its help line and how to add its arguments."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default after its help (not the empty ones: None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


# ---------------------------------------------------------------------------- arguments
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="train stage 1 (the VAE), stage 2 (the GIVT, from the run's or "
                        "--vae-ckpt's VAE), or both in turn")
    p.add_argument("--config", default=None,
                   help="config FILE[:args], e.g. configs/panoptic.py:size=base "
                        "(default: configs/<task>.py, the tiny preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (repeatable; an unknown key or bad value is "
                        "refused)")
    p.add_argument("--workdir", default=None,
                   help="run directory (default: runs/<task>_<size>_<data>); rerunning "
                        "resumes it")
    p.add_argument("--data", default=None,
                   help="embedded | tfds:NAME | folder:PATH (default: the config's, embedded)")
    p.add_argument("--vae-ckpt", default=None,
                   help="run directory whose stage-1 VAE stage 2 trains on (--stage givt)")
    p.add_argument("--no-eval", dest="eval", action="store_false",
                   help="train only; evaluate later with the eval command")
    p.add_argument("--max-eval", type=positive_int, default=None,
                   help="cap on evaluation examples (default: each evaluator's num_examples)")
    _add_reeval_argument(p)


def _add_reeval_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reeval", action="store_true",
                   help="recompute evaluations already recorded for the same step, data, "
                        "settings and example cap (by default their records are reused)")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--data", default=None, help="data source (default: the run's)")
    p.add_argument("--split", default=None, help="data split (default: each evaluator's)")
    p.add_argument("--oracle", action="store_true", help="evaluate stage 1 (encode GT, decode)")
    p.add_argument("--max-eval", type=positive_int, default=None,
                   help="cap on evaluation examples (default: each evaluator's num_examples)")
    _add_reeval_argument(p)
    p.add_argument("--evaluator", action="append", metavar="NAME",
                   help="run these declared evaluators only (of either stage), including "
                        "those run only when named, e.g. exposure (the exposure-bias curve)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="evaluate with another decoding, sampling or protocol setting (data.*, "
                        "givt.sampling.*, evals.*); the record is tagged with the settings")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per model call")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or truncated images (listed in OUT/skipped.json)")
    p.add_argument("--images-json", default=None,
                   help="COCO-style JSON whose 'images' give each file's image id (default: "
                        "the file stem, as an integer when it is numeric, as COCO's are)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="predict with another sampling or decoding setting (givt.sampling.*, "
                        "data.*), checked as eval --set checks it")


def add_complete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--region", default="bottom", choices=REGIONS,
                   help="the part of the output to generate: top/bottom/left/right (that "
                        "share of the rows or columns), centre (a centred box) or border "
                        "(around one); the ground truth's codes elsewhere are kept")
    p.add_argument("--fraction", type=positive_float, default=0.5,
                   help="share of the side the region spans, in (0, 1)")
    p.add_argument("--num", type=positive_int, default=8, help="images of the split")
    p.add_argument("--split", default="validation", help="the split (with ground truth)")
    p.add_argument("--data", default=None, help="data source (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", required=True, help="directory for complete.json and pictures")


TRAIN = Command("train", "train stage 1 (VAE) and/or stage 2 (GIVT), then evaluate",
                add_train_arguments)
EVAL = Command("eval", "run a run directory's declared evaluators", add_eval_arguments)
COMPLETE = Command("complete", "complete a partial output: keep the ground truth's codes "
                   "outside a region, generate the region", add_complete_arguments)


def dense_commands(predict_help: str) -> tuple[Command, ...]:
    """A dense task's commands: train, eval, predict (``predict_help`` says what it writes),
    complete."""
    return (TRAIN, EVAL, Command("predict", predict_help, add_predict_arguments), COMPLETE)


# ---------------------------------------------------------------------------- the parser
def build_parser(task_name: str, commands: Sequence[Command], description: str = ""
                 ) -> ArgumentParser:
    """``python -m tasks.<task_name>`` with a sub-command per ``commands``."""
    # a module docstring as the description: its title and usage lines (first two paragraphs)
    summary = "\n\n".join(description.strip().split("\n\n")[:2]) if description else ""
    p = ArgumentParser(prog=f"python -m tasks.{task_name}", formatter_class=HelpFormatter,
                       description=summary or f"UViM + GIVT: {task_name}.",
                       epilog="Each command has its own --help (python -m tasks."
                              f"{task_name} COMMAND --help).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for c in commands:
        sp = sub.add_parser(c.name, help=c.help, description=c.help,
                            formatter_class=HelpFormatter)
        c.add_arguments(sp)
        add_verbose_argument(sp)
    return p


def exit_if_help(module: str, task_name: str, commands: Sequence[Command],
                 description: str = "", argv: Sequence[str] | None = None) -> None:
    """Answers ``--help`` (or no command) and exits, when ``module`` is ``"__main__"``: a
    task module calls it before importing TensorFlow and JAX, so help costs no model stack."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if module != "__main__" or not (not argv or "-h" in argv or "--help" in argv):
        return
    parser = build_parser(task_name, commands, description)
    if not argv:
        parser.print_help()
        raise SystemExit(EXIT_USER_ERROR)
    parser.parse_args(argv)  # prints the help and exits (or reports a bad flag first)
    raise SystemExit(0)


Run = Callable[[Any, argparse.Namespace], Any]


def main(task: Any, commands: Sequence[Command], runs: Mapping[str, Run],
         argv: Sequence[str] | None = None, description: str = "") -> int:
    """Parses ``argv`` and runs the chosen command's ``runs[name](task, args)``; returns
    the exit status."""
    missing = [c.name for c in commands if c.name not in runs]
    if missing:
        raise ValueError(f"no run function for command(s) {missing}")
    p = build_parser(task.name, commands, description)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    # what a run's provenance records: the command as typed, also when called in-process
    args.command_line = shlex.join(["python", "-m", f"tasks.{task.name}", *argv])
    if args.command is None:
        p.print_help()
        return EXIT_USER_ERROR
    return run_command(lambda: runs[args.command](task, args), args.verbose)


# ------------------------------------------------------------------ train and eval runs
def load_task_config(task: Any, args: argparse.Namespace):
    """The config a ``train`` command asks for: file, ``--set`` overrides, ``--data``."""
    from uvim_givt import config as config_lib
    from uvim_givt.data import catalog

    cfg = config_lib.load_config(args.config or f"configs/{task.name}.py", args.set or [])
    if args.data:
        cfg.data.source = args.data
    catalog.parse_source(cfg.data.source)  # validates the spec early
    return cfg


def default_workdir(cfg) -> str:
    from uvim_givt import config as config_lib
    from uvim_givt import rundir
    from uvim_givt.data import catalog

    kind, arg = catalog.parse_source(cfg.data.source)
    style = config_lib.stage2_style(cfg)
    # the original UViM's runs (VQ-VAE codes) beside the GIVT ones, not in their folder
    suffix = "vq" if str(cfg.vae.kind) == "vqvae" else "masked" if style == "masked" else ""
    return rundir.default_workdir(cfg, kind, arg, suffix=suffix)


def train_run(evaluators: type, after: Callable[[str], Any] | None = None) -> Run:
    """``train``; ``after(run_dir)`` runs once training and its evaluations are done (the
    tasks write the model card with it)."""
    def run(task: Any, args: argparse.Namespace):
        from uvim_givt.training import runner

        cfg = load_task_config(task, args)
        hooks = evaluators(task, cfg, origin="train", max_examples=args.max_eval,
                           reeval=args.reeval) if args.eval else None
        trained = runner.train_run(task, cfg, args.workdir or default_workdir(cfg),
                                   args.stage, args.vae_ckpt, hooks,
                                   command=getattr(args, "command_line", None))
        if after is not None:
            after(trained.run_dir)
        return trained
    return run


def eval_run(evaluate_run: Callable[..., dict[str, dict[str, float]]],
             after: Callable[[str], Any] | None = None) -> Run:
    """``eval``: ``evaluate_run`` (evals.evaluators) on the run, then ``after(run_dir)``."""
    def run(task: Any, args: argparse.Namespace) -> dict:
        stage = "vae" if args.oracle else None if args.evaluator else "givt"
        results = evaluate_run(args.ckpt, "eval", stage=stage, names=args.evaluator,
                               source=args.data, split=args.split,
                               max_examples=args.max_eval, task=task,
                               overrides=args.set or (), reeval=args.reeval)
        if after is not None:
            after(args.ckpt)
        print(json.dumps(results, indent=1))
        return results
    return run
