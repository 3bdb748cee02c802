"""The layers the code keeps, and a new task added without touching the library.

1. Import rules, read from every module's AST (static and ``importlib`` imports): the
   library ``uvim_givt`` imports no ``tasks``, ``evals`` or ``configs``; ``evals`` imports
   no ``tasks``; ``configs`` imports neither.
2. A toy dense task defined here (a file in ``tasks/`` would look the same) trains both
   stages through the generic runner, is evaluated by its own metric declared in its
   config, and is found by name for ``evals``-style checkpoint evaluation.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs.common import evaluator, givt_encdec_model, init_group, train_group
from evals.evaluators import Evaluators, evaluate_run
from uvim_givt.errors import UserError
from uvim_givt.task import DenseTask, Task, get_task, register_task
from uvim_givt.training.runner import load_run, train_run

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


# ------------------------------------------------------------------------- a toy task
SIZE, CLASSES = 16, 3


def _toy_examples(n: int, seed: int) -> dict[str, np.ndarray]:
    """Images whose rows are bands of colour k in {0, 1, 2}; the label map is k."""
    rng = np.random.default_rng(seed)
    bands = rng.integers(0, CLASSES, size=(n, 4))
    labels = np.repeat(bands, SIZE // 4, axis=1)[:, :, None] * np.ones((1, 1, SIZE), np.int64)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    return {"image": palette[labels], "mask": labels.astype(np.int64)}


class PixelAccuracy:
    """The toy task's own metric family: per-pixel accuracy."""

    def __init__(self):
        self.right = self.total = self.images = 0

    def add(self, example, prediction):
        self.right += int((prediction == example["mask"]).sum())
        self.total += prediction.size
        self.images += 1

    def result(self):
        return {"accuracy": self.right / self.total, "num_images": float(self.images)}


class Bands:
    """A dense task in ~30 lines: data, preprocessing, decoding, a metric, a picture."""

    name = "toy_bands"
    mirror_equivariant = True

    def load(self, cfg, source, split):
        return tf.data.Dataset.from_tensor_slices(
            _toy_examples(64 if split == "train" else 8, seed=split == "train"))

    def preprocess(self, cfg, example, train, seed=None):
        image = tf.cast(example["image"], tf.float32) / 127.5 - 1.0
        return {"image": image, "labels": tf.cast(example["mask"][..., None], tf.int32)}

    def postprocess(self, cfg, logits, example=None):
        return np.argmax(logits["band"], axis=-1)

    def metric(self, cfg, kind):
        assert kind == "pixel_accuracy"
        return PixelAccuracy()

    def draw(self, cfg, example, prediction):
        return np.concatenate([example["image"], (prediction[..., None] * 80).astype(
            np.uint8).repeat(3, -1)], axis=1)


def toy_config() -> ml_collections.ConfigDict:
    """The task's config, built from the shared helpers as configs/<task>.py would be."""
    vae = dict(input_size=(SIZE, SIZE), patch_size=(8, 8), width=32, depth=1, decoder_depth=1,
               mlp_dim=64, num_heads=2, code_len=4, codeword_dim=4, dropout=0.0,
               code_dropout="none", scan=False, label_channels={"band": (0, CLASSES)})
    givt = givt_encdec_model("tiny", out_dim=4, seq_len=4, input_size=(SIZE, SIZE))
    givt.update(emb_dim=32, mlp_dim=64, num_heads=2, num_layers=1, patches=(8, 8), stem=())
    c = ml_collections.ConfigDict()
    c.task, c.size, c.seed = "toy_bands", "tiny", 0
    c.data = dict(source="embedded", image_size=SIZE, train_split="train",
                  val_split="validation", shuffle_buffer=64, cache=True)
    c.vae = dict(kind="vit", model=vae, init=init_group(), ignore_zero=(), ema_decay=0.0,
                 beta=1e-4,
                 train=train_group("tiny", steps=4, batch_size=8, lr=1e-3, wd=0.0))
    c.givt = dict(model=givt, init=init_group(), posterior="mean", input_noise=0.0,
                  init_encoder="",
                  train=train_group("tiny", steps=4, batch_size=8, lr=1e-3, wd=0.0),
                  sampling=dict(temperature=1.0, temperature_probs=1.0, beam_size=1,
                                fan_size=1, num_steps=4, choice_temperature=1.0,
                                num_samples=1, test_time_flip=False))
    c.evals = dict(
        oracle=evaluator("pixel_accuracy", "oracle", batch_size=4, every=2, overlays=1),
        sampled=evaluator("pixel_accuracy", "sampled", batch_size=4, overlays=1),
        teacher_forced=evaluator("pixel_accuracy", "teacher_forced", batch_size=4),
        vae_loss=evaluator("loss", "oracle", batch_size=4, every=2),
        held_out_nll=evaluator("loss", "teacher_forced", batch_size=4))
    return c


def givt_out_dim(cfg) -> int:
    return int(cfg.givt.model.out_dim)


def test_a_new_task_trains_and_evaluates_through_the_same_runner(tmp_path):
    task = register_task(Bands())
    assert isinstance(task, Task) and isinstance(task, DenseTask)
    cfg, run_dir = toy_config(), str(tmp_path / "run")
    lines = []
    run = train_run(task, cfg, run_dir, hooks=Evaluators(task, cfg), log=lines.append)
    assert run.vae_step == run.givt_step == 4
    records = {r: json.load(open(os.path.join(run_dir, "eval", r)))
               for r in sorted(os.listdir(os.path.join(run_dir, "eval")))}
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
    assert 0.0 <= sampled["metrics"]["accuracy"] <= 1.0 and sampled["metrics"]["num_images"] == 8
    nll = records["givt_held_out_nll_validation_embedded_step00000004_train.json"]["metrics"]
    assert np.isfinite(nll["nll_per_token"])
    np.testing.assert_allclose(nll["nll_per_dim"], nll["nll_per_token"] / givt_out_dim(cfg))
    vae_loss = records["vae_vae_loss_validation_embedded_step00000004_train.json"]["metrics"]
    np.testing.assert_allclose(vae_loss["loss"], vae_loss["xent"] + 1e-4 * vae_loss["kl"],
                               rtol=1e-5)
    tf = records["givt_teacher_forced_validation_embedded_step00000004_train.json"]
    assert 0.0 <= tf["metrics"]["accuracy"] <= 1.0 and tf["num_examples"] == 8
    # the exposure-bias gap, in the second record of the pair
    assert tf["metrics"]["gap/accuracy"] == pytest.approx(
        sampled["metrics"]["accuracy"] - tf["metrics"]["accuracy"])
    assert any(line.startswith("  sampled: accuracy=") for line in lines)

    # Evaluation from the run directory alone: the task is found by its config's name,
    # and the same evaluator gives the same numbers.
    assert get_task("toy_bands") is task
    again = evaluate_run(run_dir, "cli", names=["sampled"])
    assert again["sampled"] == sampled["metrics"]
    assert load_run(run_dir).task is task


def test_bad_evaluator_declarations_name_the_key(tmp_path):
    task = register_task(Bands())
    cfg = toy_config()
    cfg.evals.sampled.prediction = "teacher_forcd"
    with pytest.raises(UserError, match="evals.sampled.prediction='teacher_forcd'"):
        Evaluators(task, cfg)
    cfg = toy_config()
    cfg.evals.oracle.every = -1
    with pytest.raises(UserError, match="evals.oracle.every=-1"):
        Evaluators(task, cfg)
    with pytest.raises(UserError, match="no task named 'nope'"):
        get_task("nope")


def test_a_run_directory_of_the_old_layout_fails_with_what_changed(tmp_path):
    """Run directories written before the config named the VAE kind and the evaluators."""
    cfg = toy_config().to_dict()
    del cfg["vae"]["kind"], cfg["evals"]
    os.makedirs(tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    register_task(Bands())
    with pytest.raises(UserError, match=r"older uvim_givt.*no vae\.kind, evals"):
        load_run(str(tmp_path / "old"))
