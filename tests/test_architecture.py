"""The layers the code keeps, and a new task added without touching the library.

1. Import rules, read from every module's AST (static and ``importlib`` imports): the
   library ``uvim_givt`` imports no ``tasks``, ``evals`` or ``configs``; ``evals`` imports
   no ``tasks``; ``configs`` imports neither.
2. docs/ARCHITECTURE.md's add-a-task recipe, followed literally: its code blocks become
   ``tasks/toy_bands.py`` and ``configs/toy_bands.py``, and ``python -m tasks.toy_bands
   train`` trains both stages through the generic runner, scores the task's own metric
   declared in its config, and ``eval`` re-scores the run directory.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evals.evaluators import Evaluators, evaluate_run
from uvim_givt import config as config_lib
from uvim_givt.errors import UserError
from uvim_givt.task import DenseTask, Task, get_task, register_task
from uvim_givt.training.runner import load_run

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"uvim_givt": {"tasks", "evals", "configs"}, "evals": {"tasks"},
             "configs": {"tasks", "evals"}}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a module, dynamic ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("import_module", "__import__")):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, package in _imports(path):
                if package in forbidden:
                    bad.append(f"{path.relative_to(root)}:{line} imports {package}")
    return bad


def test_layers_import_one_way():
    assert violations() == []


def test_the_import_check_sees_static_and_dynamic_imports(tmp_path):
    """The checker itself: each kind of forbidden import is caught (it can fail)."""
    lib = tmp_path / "uvim_givt"
    lib.mkdir()
    (lib / "a.py").write_text("import tasks.panoptic\n")
    (lib / "b.py").write_text("from evals.pq import PQAccumulator\n")
    (lib / "c.py").write_text("import importlib\nm = importlib.import_module('configs.depth')\n")
    (lib / "d.py").write_text("from uvim_givt import config\nfrom . import a\n")  # allowed
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "e.py").write_text("from tasks import depth\nimport uvim_givt\n")
    assert violations(tmp_path) == ["uvim_givt/a.py:1 imports tasks",
                                    "uvim_givt/b.py:1 imports evals",
                                    "uvim_givt/c.py:2 imports configs",
                                    "evals/e.py:1 imports tasks"]


# ----------------------------------------------------- the add-a-task recipe, literally
RECIPE = ROOT / "docs" / "ARCHITECTURE.md"


def recipe_files() -> dict[str, str]:
    """The recipe's code blocks, by the file each one names on its first line."""
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", RECIPE.read_text(), flags=re.S)
    return {path: body for path, body in blocks}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """The recipe's files written into a folder of their own (a second ``tasks/`` and
    ``configs/`` on PYTHONPATH, as a task outside this repository would live)."""
    root = tmp_path_factory.mktemp("recipe")
    files = recipe_files()
    assert sorted(files) == ["configs/toy_bands.py", "tasks/toy_bands.py"]
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    return root


def _run(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(recipe), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "tasks.toy_bands", *args], cwd=recipe,
                          env=env, capture_output=True, text=True, timeout=600)


def _toy_task(recipe: Path):
    spec = importlib.util.spec_from_file_location("toy_bands_recipe",
                                                  recipe / "tasks" / "toy_bands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_recipe_trains_and_evaluates_from_the_command_line(recipe):
    """docs/ARCHITECTURE.md's recipe, followed literally: its two files, then
    ``python -m tasks.toy_bands train`` and ``eval``; the new task trains both stages
    through the generic runner and is scored by its own metric declared in its config."""
    done = _run(recipe, "train", "--workdir", "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("training toy_bands stage 1 (VAE) and stage 2 (GIVT)")
    run_dir = recipe / "run"
    records = {r: json.loads((run_dir / "eval" / r).read_text())
               for r in sorted(os.listdir(run_dir / "eval"))}
    assert sorted(records) == [
        "givt_held_out_nll_validation_embedded_step00000004_train.json",
        "givt_sampled_validation_embedded_step00000004_train.json",
        "givt_teacher_forced_validation_embedded_step00000004_train.json",
        "vae_oracle_validation_embedded_step00000002_train.json",  # every=2, during training
        "vae_oracle_validation_embedded_step00000004_train.json",
        "vae_vae_loss_validation_embedded_step00000002_train.json",
        "vae_vae_loss_validation_embedded_step00000004_train.json"]
    for rec in records.values():
        assert rec["task"] == "toy_bands"
    sampled = records["givt_sampled_validation_embedded_step00000004_train.json"]
    assert 0.0 <= sampled["metrics"]["accuracy"] <= 100.0
    assert sampled["metrics"]["num_images"] == 8
    # the task's declared metadata travels with its records (the leaderboard reads them)
    assert sampled["metric_meta"]["primary"] == "accuracy"
    assert sampled["metric_meta"]["units"] == {"accuracy": "%"}
    nll = records["givt_held_out_nll_validation_embedded_step00000004_train.json"]["metrics"]
    assert np.isfinite(nll["nll_per_token"]) and nll["loss"] == nll["nll_per_token"]
    np.testing.assert_allclose(nll["nll_per_dim"], nll["nll_per_token"] / 4, rtol=1e-6)
    vae_loss = records["vae_vae_loss_validation_embedded_step00000004_train.json"]["metrics"]
    np.testing.assert_allclose(vae_loss["loss"], vae_loss["xent"] + 1e-4 * vae_loss["kl"],
                               rtol=1e-5)
    forced = records["givt_teacher_forced_validation_embedded_step00000004_train.json"]
    assert forced["num_examples"] == 8
    # the exposure-bias gap, in the second record of the pair
    assert forced["metrics"]["gap/accuracy"] == pytest.approx(
        sampled["metrics"]["accuracy"] - forced["metrics"]["accuracy"])

    # Evaluation from the run directory alone gives the same numbers, from the command
    # line and (the task registered in-process, as an entry point would) by name.
    again = _run(recipe, "eval", "--ckpt", "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout[again.stdout.index("{"):])["sampled"] == sampled["metrics"]
    task = register_task(_toy_task(recipe).TASK)
    assert isinstance(task, Task) and isinstance(task, DenseTask)
    assert get_task("toy_bands") is task
    assert load_run(str(run_dir)).task is task
    by_name = evaluate_run(str(run_dir), "cli", names=["sampled"])
    assert by_name["sampled"] == sampled["metrics"]


def test_bad_evaluator_declarations_name_the_key(recipe):
    module = _toy_task(recipe)
    task = register_task(module.TASK)
    cfg = config_lib.load_config(str(recipe / "configs" / "toy_bands.py"))
    cfg.evals.sampled.prediction = "teacher_forcd"
    with pytest.raises(UserError, match="evals.sampled.prediction='teacher_forcd'"):
        Evaluators(task, cfg)
    cfg = config_lib.load_config(str(recipe / "configs" / "toy_bands.py"))
    cfg.evals.oracle.every = -1
    with pytest.raises(UserError, match="evals.oracle.every=-1"):
        Evaluators(task, cfg)
    with pytest.raises(UserError, match="no task named 'nope'"):
        get_task("nope")


def test_a_run_directory_of_an_older_format_fails_with_what_changed(tmp_path):
    """One policy for runs written by older versions: refused, saying what changed."""
    cfg = config_lib.load_config("configs/panoptic.py")
    os.makedirs(tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    with pytest.raises(UserError, match=r"older uvim_givt \(run format 1, this version reads "
                                        r"6\)\. What changed: format 2: givt\.sampling.*; "
                                        r"format 3: every evaluator.*; format 4: the train "
                                        r"groups have grad_accum.*; format 5: stage 2 has a "
                                        r"kind.*; format 6: stage 2 has label_smoothing"):
        load_run(str(tmp_path / "old"))
    config_lib.save_config(cfg, str(tmp_path / "new"))
    assert config_lib.to_dict(config_lib.load_saved_config(str(tmp_path / "new"))) \
        == config_lib.to_dict(cfg)


def test_a_format_3_run_resumes_with_the_keys_it_ran_without(tmp_path):
    """Formats 4 to 6 only added keys whose values reproduce what format 3 did (grad_accum
    1, cached_codes off, a GIVT stage 2, no label smoothing, full recomputation in scanned
    stacks): a format-3 run reads with them
    and resumes under today's config, also on another machine layout (FSDP, micro-batches);
    another recipe is still refused."""
    from uvim_givt.rundir import start_run
    cfg = config_lib.load_config("configs/panoptic.py")
    old = config_lib.to_dict(cfg)
    for stage in ("vae", "givt"):
        del old[stage]["train"]["grad_accum"], old[stage]["train"]["cached_codes"]
    del old["givt"]["kind"], old["givt"]["label_smoothing"]
    for stage in ("vae", "givt"):
        del old[stage]["model"]["remat_policy"]
    run = tmp_path / "run"
    os.makedirs(run)
    (run / "config.json").write_text(json.dumps({**old, config_lib.FORMAT_KEY: 3}))
    saved = config_lib.load_saved_config(str(run))
    assert config_lib.to_dict(saved) == config_lib.to_dict(cfg)
    assert saved.givt.train.grad_accum == 1 and saved.vae.train.cached_codes is False
    assert saved.givt.kind == "givt" and saved.givt.label_smoothing == 0.0
    assert saved.vae.model.remat_policy == saved.givt.model.remat_policy == "nothing_saveable"
    start_run(str(run), cfg)  # resumes
    moved = config_lib.load_config("configs/panoptic.py", [
        "vae.train.fsdp=True", "givt.train.grad_accum=4", "givt.train.cached_codes=True"])
    start_run(str(run), moved)
    assert json.loads((run / "config.json").read_text())["givt"]["train"]["grad_accum"] == 4
    with pytest.raises(UserError, match=r"different config \(vae\.beta differ"):
        start_run(str(run), config_lib.load_config("configs/panoptic.py", ["vae.beta=0.5"]))


def test_end_of_run_summary_is_aligned():
    """One block per evaluator, names padded to one width, every value with 4 significant
    digits (no mixed precisions), counters in brackets."""
    from uvim_givt.training.runner import summary_lines
    lines = summary_lines({"oracle": {"PQ": 80.4912, "SQ": 7.75, "num_images": 200.0},
                           "vae_loss": {"loss": 0.19512, "kl": 709.41}}, per_line=2)
    assert lines == ["  oracle    PQ    80.49   SQ    7.750   (200 images)",
                     "  vae_loss  loss   0.1951   kl    709.4"]
