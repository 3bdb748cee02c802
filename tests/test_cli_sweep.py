"""Every user error on the command line is one ``error: ...`` line and exit status 2, and
nothing is written: a sweep over every ``--set`` key of every task (a wrong-typed and an
out-of-range value each), and over the typed flags of every CLI."""

from __future__ import annotations

import importlib
import os

import pytest

from evals.evaluators import Evaluators
from uvim_givt import config as config_lib
from uvim_givt import schema

TASKS = ("panoptic", "depth", "imagenet", "colorization")


def _rules(task_name: str) -> schema.Rules:
    return schema.rules_of(importlib.import_module(f"tasks.{task_name}").TASK, Evaluators)


def _wrong_type(value):
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, int | float) or value is None:
        return "'abc'"
    if isinstance(value, str):
        return "[1, 2]"
    return "{'a': 1}"  # a sequence key


@pytest.mark.parametrize("task_name,size", [(t, s) for t in TASKS for s in ("tiny", "paper")]
                         + [("panoptic", "base"), ("depth", "base")]
                         + [(t, f"{s},tokens=vq") for t in ("panoptic", "depth", "colorization")
                            for s in ("tiny", "paper")])
def test_every_key_of_every_preset_has_a_rule(task_name, size):
    cfg = config_lib.load_config(f"configs/{task_name}.py:size={size}")
    rules = _rules(task_name)
    assert [k for k, _ in schema.leaves(cfg) if schema.rule_for(k, rules) is None] == []
    if size.startswith("tiny"):  # the default presets satisfy every rule
        schema.check(cfg, rules, require_all=True)


def _cases():
    for name in TASKS:
        cfg = config_lib.load_config(f"configs/{name}.py")
        rules = _rules(name)
        for key, value in schema.leaves(cfg):
            yield name, key, _wrong_type(value)
            rule = schema.rule_for(key, rules)  # a key without one fails the test above
            bad = rule.out_of_range if rule is not None else None
            if bad is not None:
                yield name, key, repr(bad)


CASES = list(_cases())


def test_the_sweep_covers_every_key():
    keys = {(t, k) for t, k, _ in CASES}
    for name in TASKS:
        cfg = config_lib.load_config(f"configs/{name}.py")
        assert {k for k, _ in schema.leaves(cfg)} == {k for t, k in keys if t == name}


@pytest.mark.parametrize("task_name", TASKS)
def test_every_bad_setting_is_one_line_and_exit_2(task_name, tmp_path, capsys):
    """Runs ``train --set KEY=BAD`` in-process for every key: two values per key."""
    main = importlib.import_module(f"tasks.{task_name}").main
    run = tmp_path / "run"
    failures = []
    for _, key, bad in (c for c in CASES if c[0] == task_name):
        status = main(["train", "--workdir", str(run), "--set", f"{key}={bad}"])
        err = capsys.readouterr().err.strip().splitlines()
        ok = status == 2 and len(err) == 1 and err[0].startswith("error: ") and \
            key.split(".")[-1] in err[0] and not run.exists()
        if not ok:
            failures.append(f"{key}={bad}: exit {status}, stderr {err[-3:]}")
    assert failures == []


FLAG_CASES = [
    # (module, argv before the bad flag, flag, wrong-typed value, out-of-range value)
    ("tasks.panoptic", ["train"], "--max-eval", "abc", "0"),
    ("tasks.depth", ["eval", "--ckpt", "RUN"], "--max-eval", "1.5", "-1"),
    ("tasks.panoptic", ["predict", "--ckpt", "R", "--images", "I", "--out", "O"],
     "--batch-size", "x", "0"),
    ("tasks.imagenet", ["sample", "--ckpt", "R", "--classes", "1"], "--num", "x", "0"),
    ("tasks.imagenet", ["sample", "--ckpt", "R", "--classes", "1"], "--temp", "hot", "0"),
    ("tasks.imagenet", ["sample", "--ckpt", "R", "--classes", "1"], "--cfg", "x", "-1"),
    ("tasks.imagenet", ["sweep", "--ckpt", "R"], "--steps", "x", "0"),
    ("tasks.imagenet", ["sweep", "--ckpt", "R"], "--seed", "x", "-3"),
    ("evals.panoptic", ["--gt-json", "g", "--gt-dir", "g", "--pred-json", "p", "--pred-dir",
                        "p"], "--workers", "many", "0"),
    ("evals.panoptic", ["--ckpt", "R"], "--max-examples", "x", "0"),
    ("evals.depth", ["--ckpt", "R"], "--max-examples", "x", "-2"),
    ("evals.depth", ["--pred-dir", "p", "--gt-dir", "g"], "--max-depth", "deep", "0"),
    ("evals.depth", ["--pred-dir", "p", "--gt-dir", "g"], "--min-depth", "x", "-1"),
    ("evals.generation", ["--samples", "s", "--reference", "r"], "--is-splits", "x", "0"),
    ("uvim_givt.compat.big_vision", ["--npz", "x.npz", "--config", "configs/panoptic.py",
                                     "--out", "O"], "--step", "x", "-1"),
    ("evals.compare", ["--runs", "A", "B", "--out", "O"], "--batch", "x", "0"),
    ("evals.compare", ["--runs", "A", "B", "--out", "O"], "--repeats", "x", "-1"),
]


@pytest.mark.parametrize("module,argv,flag,wrong,out_of_range", FLAG_CASES)
def test_every_typed_flag_is_checked(module, argv, flag, wrong, out_of_range, capsys,
                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere
    main = importlib.import_module(module).main
    for value in (wrong, out_of_range):
        with pytest.raises(SystemExit) as e:
            main([*argv, flag, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, (flag, value, err)
        assert err[0].startswith("error: ") and flag in err[0], err
    assert os.listdir(tmp_path) == []
