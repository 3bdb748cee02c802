"""The command line every task shares: ``train`` and ``eval``, plus the task's own commands.

    python -m tasks.<task> train [--stage vae|givt|all] [--config FILE[:args]] [--set k=v ...]
                                 [--workdir DIR] [--data SPEC] [--vae-ckpt RUN] [--no-eval]
                                 [--max-eval N]
    python -m tasks.<task> eval --ckpt RUN [--oracle] [--data SPEC] [--split S] [--max-eval N]

The evaluation machinery is handed in (``evaluators``: ``evals.evaluators.Evaluators``), so
the library imports no evaluator. Errors a user can cause (:class:`UserError`, including
those raised inside tf.data) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from uvim_givt import config as config_lib
from uvim_givt import rundir
from uvim_givt.data import catalog
from uvim_givt.errors import (
    EXIT_USER_ERROR,
    ArgumentParser,
    add_verbose_argument,
    positive_int,
    run_command,
)
from uvim_givt.task import Task
from uvim_givt.training import runner


@dataclasses.dataclass
class Command:
    """A sub-command: its name, help, how to add its arguments and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Task, argparse.Namespace], Any]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=runner.STAGES, default="all")
    p.add_argument("--config", default=None, help="FILE[:args], default configs/<task>.py")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--workdir", default=None,
                   help="run directory (default runs/<task>_<size>_<data>)")
    p.add_argument("--data", default=None, help="embedded | tfds:NAME | folder:PATH")
    p.add_argument("--vae-ckpt", default=None, help="run directory whose VAE stage 2 uses")
    p.add_argument("--no-eval", dest="eval", action="store_false",
                   help="train only; evaluate later with the eval command")
    p.add_argument("--max-eval", type=positive_int, default=None, help="cap on evaluation examples")
    _add_reeval_argument(p)


def _add_reeval_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reeval", action="store_true",
                   help="recompute evaluations already recorded for the same step, data, "
                        "settings and example cap (by default their records are reused)")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run directory")
    p.add_argument("--data", default=None, help="data source (default: the run's)")
    p.add_argument("--split", default=None, help="default: each evaluator's split")
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


def load_task_config(task: Task, args: argparse.Namespace):
    """The config a ``train`` command asks for: file, ``--set`` overrides, ``--data``."""
    cfg = config_lib.load_config(args.config or f"configs/{task.name}.py", args.set or [])
    if args.data:
        cfg.data.source = args.data
    catalog.parse_source(cfg.data.source)  # validates the spec early
    return cfg


def default_workdir(cfg) -> str:
    kind, arg = catalog.parse_source(cfg.data.source)
    style = cfg.givt.model.style
    return rundir.default_workdir(cfg, kind, arg, suffix="masked" if style == "masked" else "")


def train_command(evaluators: type, after: Callable[[str], Any] | None = None) -> Command:
    """``train``; ``after(run_dir)`` runs once training and its evaluations are done (the
    tasks write the model card with it)."""
    def run(task: Task, args: argparse.Namespace) -> runner.Run:
        cfg = load_task_config(task, args)
        hooks = evaluators(task, cfg, origin="train", max_examples=args.max_eval,
                           reeval=args.reeval) if args.eval else None
        trained = runner.train_run(task, cfg, args.workdir or default_workdir(cfg),
                                   args.stage, args.vae_ckpt, hooks,
                                   command=getattr(args, "command_line", None))
        if after is not None:
            after(trained.run_dir)
        return trained
    return Command("train", "train stage 1 (VAE) and/or stage 2 (GIVT), then evaluate",
                   add_train_arguments, run)


def eval_command(evaluate_run: Callable[..., dict[str, dict[str, float]]],
                 after: Callable[[str], Any] | None = None) -> Command:
    def run(task: Task, args: argparse.Namespace) -> dict:
        stage = "vae" if args.oracle else None if args.evaluator else "givt"
        results = evaluate_run(args.ckpt, "eval", stage=stage, names=args.evaluator,
                               source=args.data, split=args.split,
                               max_examples=args.max_eval, task=task,
                               overrides=args.set or (), reeval=args.reeval)
        if after is not None:
            after(args.ckpt)
        print(json.dumps(results, indent=1))
        return results
    return Command("eval", "run a run directory's declared evaluators", add_eval_arguments,
                   run)


def main(task: Task, commands: Sequence[Command], argv: Sequence[str] | None = None,
         description: str = "") -> int:
    """Parses ``argv`` and runs the chosen command; returns the exit status."""
    p = ArgumentParser(prog=f"python -m tasks.{task.name}",
                       description=description or f"UViM + GIVT: {task.name}.")
    sub = p.add_subparsers(dest="command")
    by_name = {}
    for c in commands:
        c.add_arguments(sp := sub.add_parser(c.name, help=c.help))
        add_verbose_argument(sp)
        by_name[c.name] = c
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    # what a run's provenance records: the command as typed, also when called in-process
    args.command_line = shlex.join(["python", "-m", f"tasks.{task.name}", *argv])
    if args.command not in by_name:
        p.print_help()
        return EXIT_USER_ERROR
    return run_command(lambda: by_name[args.command].run(task, args), args.verbose)
