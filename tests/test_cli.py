"""The task command lines: ``--help`` answers without the model stack, every flag has help
text, and defaults are shown (the help timing is a benchmark: benchmarks/bench_help.py)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest

from uvim_givt import cli

TASKS = ("panoptic", "depth", "imagenet", "colorization")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a module as ``python -m`` does, with --help, and reports which heavy packages the help
# path imported.
_PROBE = """
import json, runpy, sys
sys.argv = ["x", *sys.argv[1:]]
try:
    runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("tensorflow", "jax", "flax", "tensorflow_datasets", "cv2")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize("task,argv", [("panoptic", ["--help"]),
                                       ("depth", ["predict", "--help"]),
                                       ("imagenet", ["sample", "-h"]),
                                       ("panoptic", [])])
def test_help_imports_neither_tensorflow_nor_jax(task, argv):
    result, stdout = _probe_help("tasks." + task, argv)
    assert result == {"code": 0 if argv else 2, "heavy": []}
    assert "usage: python -m tasks." in stdout


def test_converter_help_imports_neither_tensorflow_nor_jax():
    result, stdout = _probe_help("uvim_givt.compat.big_vision", ["--help"])
    assert result == {"code": 0, "heavy": []}
    assert "--msgpack-params {ema_params,g_params}" in stdout


def _probe_help(module: str, argv: list[str]) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, module, *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("task", TASKS)
def test_every_command_and_flag_has_help_text(task):
    module = importlib.import_module(f"tasks.{task}")
    parser = cli.build_parser(task, module.COMMANDS, module.__doc__)
    commands = _subparsers(parser)
    assert set(commands) >= {"train", "eval"}
    undocumented = [f"{name} {'/'.join(a.option_strings)}"
                    for name, p in commands.items() for a in p._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert undocumented == []
    for c in module.COMMANDS:  # each command's help line, in the list and on its own page
        assert c.help and commands[c.name].description == c.help


def test_help_shows_defaults_but_not_empty_ones(capsys):
    module = importlib.import_module("tasks.depth")
    parser = cli.build_parser("depth", module.COMMANDS)
    with pytest.raises(SystemExit):
        parser.parse_args(["complete", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in text  # --fraction
    assert "(default: bottom)" in text  # --region
    assert "(default: 0)" in text  # --seed: a zero default is still shown
    assert "(default: None)" not in text and "(default: False)" not in text


def test_exit_if_help_is_silent_unless_the_module_runs_as_main(capsys):
    cli.exit_if_help("tasks.panoptic", "panoptic", cli.dense_commands("p"), argv=["--help"])
    cli.exit_if_help("__main__", "panoptic", cli.dense_commands("p"), argv=["train"])
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as e:
        cli.exit_if_help("__main__", "panoptic", cli.dense_commands("p"),
                         argv=["train", "--help"])
    assert e.value.code == 0 and "--vae-ckpt" in capsys.readouterr().out


def test_a_command_without_a_run_is_a_wiring_error():
    from tasks import panoptic

    with pytest.raises(ValueError, match="complete"):
        cli.main(panoptic.TASK, panoptic.COMMANDS, {"train": print, "eval": print,
                                                    "predict": print}, ["eval", "--ckpt", "x"])


def test_bad_flag_values_are_one_line(capsys):
    from tasks import depth

    with pytest.raises(SystemExit) as e:
        depth.main(["complete", "--ckpt", "R", "--out", "O", "--fraction", "-1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--fraction" in err and "-1 must be > 0" in err


def test_default_run_folders_keep_the_token_kinds_apart():
    from uvim_givt import config as config_lib

    folders = {arg: cli.default_workdir(config_lib.load_config(f"configs/panoptic.py{arg}"))
               for arg in ("", ":tokens=vq")}
    assert folders == {"": os.path.join("runs", "panoptic_tiny_embedded"),
                       ":tokens=vq": os.path.join("runs", "panoptic_tiny_embedded_vq")}
