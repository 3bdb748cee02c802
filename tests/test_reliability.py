"""Run-directory reliability: one writer per run, every logged step once across a resume,
no silent config-file fallback, bad settings refused before anything is written."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from tasks import common
from tasks import panoptic as P
from tests.test_training import _cfg, _Crash, _crashing
from uvim_givt import config as config_lib
from uvim_givt import rundir
from uvim_givt.data.images import read_rgb, truncation
from uvim_givt.errors import CheckpointError, ConfigError, DataError, UserError, run_command
from uvim_givt.training.metrics import MetricsWriter, drop_rows_after, write_eval_board
from uvim_givt.training.toy import toy_model, toy_stage
from uvim_givt.training.trainer import train


def _steps(run_dir: str, stage: str = "givt") -> list[int]:
    rows = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["step"] for r in rows if r["stage"] == stage]


def test_every_step_is_logged_once_across_a_crash_and_resume(tmp_path):
    """Rows logged after the last checkpoint are redone on resume, so they are dropped."""
    n, run = 4, str(tmp_path / "run")
    cfg = _cfg(2 * n, ckpt_every=n)
    cfg.log_every = 1
    stage = toy_stage(toy_model())
    with pytest.raises(_Crash):
        train(cfg, run, "givt", _crashing(stage, n + 2))
    assert _steps(run) == list(range(1, n + 3))  # steps n+1, n+2 logged, not checkpointed
    train(cfg, run, "givt", stage)
    assert _steps(run) == list(range(1, 2 * n + 1))


def test_drop_rows_after_keeps_other_stages_and_drops_a_torn_line(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    rows = [{"stage": s, "step": k} for s in ("vae", "givt") for k in (1, 2, 3)]
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "givt", "st')
    assert drop_rows_after(path, "givt", 1) == 3  # steps 2, 3 and the torn line
    kept = [json.loads(x) for x in open(path)]
    assert kept == rows[:3] + [{"stage": "givt", "step": 1}]


def test_evaluations_written_in_the_same_second_keep_their_own_board_events(tmp_path,
                                                                            monkeypatch):
    """tensorboardX names event files by the second: two evaluations (or a resumed stage)
    writing in one second must not share, and so overwrite, one file."""
    import tensorboardX.event_file_writer as event_file_writer
    import tensorflow as tf

    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.0)
    for name in ("oracle", "sampled"):
        write_eval_board(str(tmp_path), {"evaluator": name, "step": 3, "metrics": {"PQ": 1.0}})
    for _ in range(2):
        board = MetricsWriter(str(tmp_path), "givt")
        board.write(1, {"loss": 2.0})
        board.close()
    tags = {}
    for stage in ("eval", "givt"):
        folder = tmp_path / "tensorboard" / stage
        tags[stage] = sorted(v.tag for f in os.listdir(folder)
                             for e in tf.compat.v1.train.summary_iterator(str(folder / f))
                             for v in e.summary.value)
    assert tags == {"eval": ["oracle/PQ", "sampled/PQ"], "givt": ["givt/loss", "givt/loss"]}


def test_a_run_directory_has_one_writer(tmp_path):
    run = str(tmp_path / "run")
    with rundir.locked(run):
        with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} on .*--workdir"):
            with rundir.locked(run):
                pass
    with rundir.locked(run):  # released when the holder is done
        pass


def test_a_missing_config_path_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="/some/dir/panoptic.py"):
        config_lib.load_config("/some/dir/panoptic.py")
    with pytest.raises(ConfigError, match="other/panoptic.py"):
        config_lib.load_config("other/panoptic.py")
    monkeypatch.chdir(tmp_path)  # the README's spelling works from any directory
    assert config_lib.load_config("configs/panoptic.py").task == "panoptic"


@pytest.mark.parametrize("setting,message", [
    ("vae.train.total_steps=-5", "vae.train.total_steps=-5: must be >= 1"),
    ("givt.train.optim.optimizer=adamx", "givt.train.optim.optimizer='adamx': one of"),
    ("vae.train.optim.schedule=cosin", "vae.train.optim.schedule='cosin': one of"),
    ("givt.posterior=sampel", "givt.posterior='sampel': one of ('sample', 'mean')"),
    # The models' own shape rules, found by an abstract init before config.json is written.
    ("vae.model.patch_size=(7,7)", "vae.model: this config cannot build the stage-1 model "
     "(input_size (64, 64) is not a multiple of patch_size (7, 7))"),
    ("givt.model.input_size=(60,60)", "givt.model: this config cannot build the stage-2 "
     "model (encoder_skip needs"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, setting,
                                                             message):
    run = tmp_path / "run"
    assert P.main(["train", "--workdir", str(run), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not run.exists()  # no config.json to refuse the corrected rerun


def test_panoptic_categories_must_fit_the_semantics_channel(tmp_path, capsys):
    """Real COCO (133 categories) with the tiny preset (10 + void) is refused at once."""
    data = tmp_path / "coco"
    os.makedirs(data / "annotations")
    cats = [{"id": k + 1, "name": f"c{k}", "isthing": k % 2} for k in range(133)]
    (data / "annotations" / "panoptic_val2017.json").write_text(json.dumps(
        {"categories": cats, "annotations": [], "images": []}))
    run = tmp_path / "run"
    assert P.main(["train", "--workdir", str(run), "--data", f"folder:{data}"]) == 2
    err = capsys.readouterr().err
    assert "has 133 categories, but vae.model.label_channels.semantics has 11" in err
    assert "semantics=(0,134)" in err and not run.exists()


@pytest.mark.parametrize("setting,message", [
    ("data.decode=argmx", "data.decode='argmx': one of ('expectation', 'argmax')"),
    ("data.min_depth=20.0", "need 0 <= min < max"),
])
def test_a_task_checks_its_own_settings_before_writing(tmp_path, capsys, setting, message):
    from tasks import depth as D
    run = tmp_path / "run"
    assert D.main(["train", "--workdir", str(run), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


# ------------------------------------------------------------------------------- images
def _jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    rgb = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def test_a_truncated_jpeg_or_png_is_refused_naming_the_file(tmp_path):
    data = _jpeg_bytes()
    (tmp_path / "ok.jpg").write_bytes(data)
    assert read_rgb(str(tmp_path / "ok.jpg")).shape == (48, 48, 3)
    # OpenCV alone decodes this as a half-grey image with only a libjpeg warning.
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None
    with pytest.raises(DataError, match=r"cut\.jpg: truncated JPEG"):
        read_rgb(str(tmp_path / "cut.jpg"))
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(png[:-12])  # no IEND chunk
    with pytest.raises(DataError, match=r"cut\.png: truncated PNG"):
        read_rgb(str(tmp_path / "cut.png"))
    # An EXIF-style thumbnail (a whole JPEG inside) before a cut main scan is still caught.
    thumb = _jpeg_bytes(1, 8)
    nested = data[:2] + b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb + data[2:]
    (tmp_path / "thumb_ok.jpg").write_bytes(nested)
    assert read_rgb(str(tmp_path / "thumb_ok.jpg")).shape == (48, 48, 3)
    assert truncation(nested[: len(nested) - 200]) is not None


def test_folder_training_data_with_a_truncated_image_is_refused_or_skipped(tmp_path):
    from tasks.imagenet import read_folder
    for split in ("train",):
        d = tmp_path / split / "cls_a"
        d.mkdir(parents=True)
        (d / "a.jpg").write_bytes(_jpeg_bytes(0))
        (d / "b.jpg").write_bytes(_jpeg_bytes(1)[:300])
    with pytest.raises(DataError, match=r"b\.jpg: truncated JPEG.*data\.skip_bad"):
        list(read_folder(str(tmp_path), "train"))
    kept = list(read_folder(str(tmp_path), "train", skip_bad=True))
    assert [ex["file_name"] for ex in kept] == [os.path.join("train", "cls_a", "a.jpg")]


# ------------------------------------------------------------------- the one error path
def test_a_user_error_inside_tf_data_is_one_line(capsys):
    import tensorflow as tf

    def gen():
        yield 1
        raise DataError("/data/x.png: segment ids [7] are in the JSON but not in the PNG")

    ds = tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec((), tf.int32))
    assert run_command(lambda: list(ds.as_numpy_iterator())) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /data/x.png: segment ids [7] are in the JSON but not in the PNG"]


def test_verbose_adds_the_traceback_and_storage_errors_are_one_line(capsys):
    def fail():
        raise ConfigError("givt.x=1: bad")

    assert run_command(fail, verbose=True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "error: givt.x=1: bad"

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")

    assert run_command(full) == 2
    assert capsys.readouterr().err.startswith(
        "error: /runs/a/metrics.jsonl: No space left on device")
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: full traceback
        run_command(lambda: 1 / 0)


def test_a_config_without_a_key_the_code_reads_is_one_line_naming_key_and_reader(capsys):
    """A task config written before a key existed: one line with the key and the line
    that reads it, not ml_collections' bare AttributeError; other errors stay bugs."""
    import ml_collections
    cfg = ml_collections.ConfigDict({"givt": {"input_noise": 0.0}})
    assert run_command(lambda: float(cfg.givt.label_smoothing)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: the config has no key 'label_smoothing', which "), err
    assert "test_reliability.py:" in err[0]
    assert "(assert run_command(lambda: float(cfg.givt.label_smoothing)) == 2)" in err[0]
    assert run_command(lambda: cfg["givt"]["posterior"]) == 2
    assert "no key 'posterior'" in capsys.readouterr().err
    # a near miss keeps ml_collections' hint
    assert run_command(lambda: cfg.givt.input_noises) == 2
    assert ("no key 'input_noises' (Did you mean \"input_noise\" instead of "
            "\"input_noises\"?)") in capsys.readouterr().err
    for bug in (lambda: object().label_smoothing,  # not a config lookup
                lambda: cfg.givt.copy(),  # no config key has a dict method's name
                lambda: cfg.givt.__fspath__):
        with pytest.raises(AttributeError):  # a bug, with its traceback
            run_command(bug)


@pytest.mark.parametrize("argv,message", [
    (["train", "--config", "configs/panoptic.py:size=tinyy"], "unknown size preset 'tinyy'"),
    (["train", "--config", "configs/depth.py"], "this config is for the depth task"),
    (["train", "--set", "vae.train.batch_size=0"], "vae.train.batch_size=0: must be >= 1"),
])
def test_config_mistakes_are_one_line(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert P.main([*argv, "--workdir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not run.exists()


# ---------------------------------------------------------------------- checkpoints
def _corrupt(step_dir: str) -> None:
    for root, _, files in os.walk(os.path.join(step_dir, "params")):
        for f in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(10)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
    n, run = 3, str(tmp_path / "run")
    stage = toy_stage(toy_model())
    cfg = _cfg(2 * n, ckpt_every=n)
    cfg.log_every, cfg.keep_ckpts = 1, 3
    train(cfg, run, "givt", stage)
    ckpts = os.path.join(run, "checkpoints", "givt")
    _corrupt(os.path.join(ckpts, str(2 * n)))
    cfg.total_steps = 3 * n
    capfd.readouterr()
    train(cfg, run, "givt", stage)
    err = capfd.readouterr().err  # file descriptor 2 too: orbax and TensorStore write there
    assert f"checkpoint step {2 * n} in {ckpts} is unreadable" in err
    # one warning line, not orbax's, TensorStore's and asyncio's tracebacks (~450 lines)
    assert "Traceback" not in err and "never retrieved" not in err, err[:2000]
    assert os.path.isdir(os.path.join(ckpts + ".unreadable", str(2 * n)))
    assert _steps(run) == list(range(1, 3 * n + 1))  # resumed from step n, each step once
    # Every step unreadable: one line saying which steps to delete.
    for s in os.listdir(ckpts):
        _corrupt(os.path.join(ckpts, s))
    cfg.total_steps = 4 * n
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*Delete"):
        train(cfg, run, "givt", stage)


def test_a_failed_save_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *a, **k):
        if step > 2:
            tmp = os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-1")
            os.makedirs(os.path.join(tmp, "params"))
            raise ValueError(f'RESOURCE_EXHAUSTED: Failed writing "{tmp}/params/d/x": No '
                             "space left on device [os_error_code='28']")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    run = str(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"could not save checkpoint step 4 .*No space "
                                              r"left on device.*resume from step 2"):
        train(_cfg(6, ckpt_every=2), run, "givt", toy_stage(toy_model()))
    assert sorted(os.listdir(os.path.join(run, "checkpoints", "givt"))) == ["2"]


def test_a_failed_asynchronous_write_names_its_own_step(tmp_path, monkeypatch):
    """Checkpoints are written in the background; when step 4's write fails (a full disk),
    the error surfaces at the next save (step 6): the line must name step 4."""
    import orbax.checkpoint as ocp

    real_save, real_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished
    saved: list[int] = []
    inside: list[bool] = []

    def save(self, step, *a, **k):
        saved.append(step)
        inside.append(True)
        try:
            return real_save(self, step, *a, **k)
        finally:
            inside.pop()

    def wait(self):  # step 4's background write fails after its save call returned
        real_wait(self)
        if not inside and saved and saved[-1] == 4:
            saved.append(-1)  # once
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
    with pytest.raises(CheckpointError, match=r"could not save checkpoint step 4 .*No space "
                                              r"left on device"):
        train(_cfg(8, ckpt_every=2), str(tmp_path / "run"), "givt", toy_stage(toy_model()))


def test_a_checkpoint_that_cannot_fit_is_refused_before_its_write_starts(
        tmp_path, monkeypatch):
    """A disk too full for the next checkpoint: one line naming the step, the space it needs
    and the space left, before orbax starts a write that would fail in its threads (each
    failed write printed hundreds of lines there: measured on a real 6 MiB tmpfs, see the
    #29 note); the steps saved before are kept and the run resumes from them."""
    from uvim_givt.training import checkpoint

    run = str(tmp_path / "run")
    train(_cfg(4, ckpt_every=2), run, "givt", toy_stage(toy_model()))  # steps 2, 4 saved
    need = []

    def free(directory):  # room for what is there, not for one more checkpoint
        need.append(directory)
        return 4096

    monkeypatch.setattr(checkpoint, "free_bytes", free)
    with pytest.raises(CheckpointError, match=r"could not save checkpoint step 6 in .*givt: "
                                              r"it needs about [\d.]+ MiB and 0\.0 MiB are "
                                              r"free\. Free space, then rerun to resume from "
                                              r"step 4"):
        train(_cfg(8, ckpt_every=2), run, "givt", toy_stage(toy_model()))
    assert need and sorted(os.listdir(os.path.join(run, "checkpoints", "givt"))) == ["2", "4"]
    monkeypatch.undo()
    train(_cfg(8, ckpt_every=2), run, "givt", toy_stage(toy_model()))  # space again: resumes
    assert sorted(os.listdir(os.path.join(run, "checkpoints", "givt")))[-1] == "8"


def test_orbax_reports_of_a_storage_failure_are_dropped_and_others_kept():
    """The background threads' tracebacks of a full disk are dropped (the one line says it);
    any other orbax record, and storage errors of other libraries, pass."""
    import logging

    from uvim_givt.training.checkpoint import _StorageFailureFilter

    def record(path, exc=None, msg="m"):
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("absl", logging.ERROR, path, 1, msg, None, info)

    f = _StorageFailureFilter()
    full = ValueError("RESOURCE_EXHAUSTED: Failed to write [os_error_code='28']")
    orbax = "/site-packages/orbax/checkpoint/_src/x.py"
    assert not f.filter(record(orbax, full))
    assert not f.filter(record(orbax, msg=f"Save failed: {full}"))
    assert f.filter(record(orbax, ValueError("shape mismatch")))
    assert f.filter(record("/site-packages/other/x.py", full))
    assert f.filter(record(orbax))


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_repeats_and_loses_no_step(tmp_path):
    """What a scheduler sends before preemption: the run finishes its step, saves, says so
    and exits 143; rerun, it goes on from that step, and its per-step losses equal an
    uninterrupted run's (no step repeated, none lost)."""
    import signal
    import subprocess
    import sys
    import time

    from tests import _preemptible_run as job
    run = str(tmp_path / "run")
    script = str(Path(__file__).with_name("_preemptible_run.py"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, script, run, "slow"], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = os.path.join(run, "metrics.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 10:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 143, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("givt: stopped by SIGTERM after step ") and "Rerun" in line
    stopped = int(line.split("after step ")[1].split()[0])
    assert 10 <= stopped < job.TOTAL
    assert sorted(os.listdir(os.path.join(run, "checkpoints", "givt"))) == [str(stopped)]
    assert _steps(run) == list(range(1, stopped + 1))
    done = subprocess.run([sys.executable, script, run], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _steps(run) == list(range(1, job.TOTAL + 1))
    whole = train(job.config(), str(tmp_path / "whole"), "givt", toy_stage(toy_model()))
    resumed = [json.loads(x)["loss"] for x in open(metrics)]
    np.testing.assert_allclose(resumed, [h["loss"] for h in whole.history], rtol=1e-5)


# ---------------------------------------------------------------- predict and evaluate
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.test_panoptic_task import TINY
    root = tmp_path_factory.mktemp("reliability")
    os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
    run = str(root / "run")
    assert P.main(["train", "--workdir", run, "--no-eval", *TINY]) == 0
    return run


def test_non_finite_parameters_are_refused_by_eval_and_predict(tiny_run, tmp_path, capsys):
    """A checkpoint of NaNs (right keys and shapes) used to predict empty segments without
    a word; eval and predict now stop with one line naming the step and a parameter."""
    import jax

    from uvim_givt.training import checkpoint as ckpt_lib
    run = str(tmp_path / "nan_run")
    shutil.copytree(tiny_run, run)
    params, step = ckpt_lib.load_params(run, "givt")
    nan = jax.tree_util.tree_map(lambda x: np.full(x.shape, np.nan, x.dtype), params)
    ckpt = ckpt_lib.StageCheckpoints(run, "givt")
    ckpt.save(step + 1, nan, {"unused": np.zeros(1, np.float32)}, {"step": step + 1})
    ckpt.wait()
    ckpt.close()
    images = _images(tmp_path / "images", ["a.jpg"])
    capsys.readouterr()
    for argv in (["eval", "--ckpt", run, "--max-eval", "2"],
                 ["predict", "--ckpt", run, "--images", images, "--out",
                  str(tmp_path / "out")]):
        assert P.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and f"step {step + 1}: parameter" in err[-1]
        assert "holds NaN or infinite values" in err[-1]
    assert not os.path.exists(tmp_path / "out" / "panoptic_pred.json")


def test_one_writer_per_prediction_folder_and_no_mixing(tiny_run, tmp_path, capsys):
    """A second predict into a folder in use is refused naming the holder; a folder with
    files in it is refused up front (so two commands never mix their outputs); a clean
    predict leaves no lock behind and says what it does first."""
    images = _images(tmp_path / "images", ["a.jpg"])
    out = tmp_path / "out"
    with rundir.locked(str(out)):
        assert P.main(["predict", "--ckpt", tiny_run, "--images", images,
                       "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} is in use by pid {os.getpid()}" in err[0]
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(
        f"predicting 1 image(s) of {images} with {tiny_run} (panoptic, step 3) into {out}")
    assert not (out / ".lock").exists()
    before = sorted(os.listdir(out))
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out", str(out)]) == 2
    assert "already holds 3 file(s)" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before


def test_inputs_sharing_a_stem_get_outputs_of_their_own(tiny_run, tmp_path):
    """a.jpg and a.png used to give one PNG and two JSON entries pointing at it."""
    folder = tmp_path / "images"
    _images(folder, ["a.jpg"])
    cv2.imwrite(str(folder / "a.png"), np.full((30, 40, 3), 90, np.uint8))
    out = tmp_path / "out"
    assert P.main(["predict", "--ckpt", tiny_run, "--images", str(folder),
                   "--out", str(out)]) == 0
    pred = json.loads((out / "panoptic_pred.json").read_text())
    entries = {a["file_name"]: a for a in pred["annotations"]}
    assert sorted(entries) == ["a_jpg.png", "a_png.png"]
    assert sorted(a["image_id"] for a in entries.values()) == ["a_jpg", "a_png"]
    assert sorted(os.listdir(out / "panoptic_pred")) == ["a_jpg.png", "a_png.png"]
    meta = tmp_path / "images.json"
    meta.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"}]}))
    with pytest.raises(UserError, match=r"a\.jpg and a\.png would both be image 7"):
        common.coco_image_ids(str(meta), ["a.jpg", "a.png"])


def test_predict_takes_sampling_settings_checked_like_eval(tiny_run, tmp_path, capsys):
    images = _images(tmp_path / "images", ["a.jpg"])
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out",
                   str(tmp_path / "hot"), "--set", "givt.sampling.temperature=0.5"]) == 0
    capsys.readouterr()
    for setting, words in (("givt.sampling.temperature=-1", "givt.sampling.temperature=-1"),
                           ("vae.model.width=8", "may change data.*, givt.sampling.* only")):
        assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out",
                       str(tmp_path / "bad"), "--set", setting]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_workdir_naming_a_file_and_an_empty_folder_dataset_are_one_line(tmp_path, capsys):
    from tests.test_panoptic_task import TINY
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert P.main(["train", "--workdir", str(afile), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {afile} is a file, not a directory: pass another folder"]
    root = tmp_path / "coco"
    (root / "annotations" / "panoptic_train2017").mkdir(parents=True)
    (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [
            {"id": 1, "name": "thing", "isthing": 1}]}))
    from tasks.panoptic_coco import read_coco_folder
    with pytest.raises(DataError, match=r"panoptic_train2017\.json lists no annotations"):
        read_coco_folder(str(root), "train")
    # ... and train says so before the run directory is written (the rerun with the right
    # data is then not refused as a different config)
    run = tmp_path / "run"
    assert P.main(["train", "--workdir", str(run), *TINY, "--data", f"folder:{root}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and str(root) in line and not run.exists()


def _images(folder, names, bad=()):
    os.makedirs(folder, exist_ok=True)
    for k, n in enumerate(names):
        data = _jpeg_bytes(k, 40)
        with open(os.path.join(folder, n), "wb") as f:
            f.write(data[:200] if n in bad else data)
    return str(folder)


def test_predict_skips_bad_images_and_keeps_what_was_done(tiny_run, tmp_path, capsys):
    names = ["000000000139.jpg", "000000000285.jpg", "zz_broken.jpg", "zz_last.jpg"]
    images = _images(tmp_path / "images", names, bad={"zz_broken.jpg"})
    out = tmp_path / "out"
    # Without --skip-bad: one line naming the file; the two images before it are saved.
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out", str(out),
                   "--batch-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "zz_broken.jpg: truncated JPEG" in err[-1]
    # a run trained on the synthetic data, applied to photos, says so first
    assert err[0].startswith(f"warning: {tiny_run} was trained on the embedded synthetic")
    pred = json.loads((out / "panoptic_pred.json").read_text())
    assert [a["image_id"] for a in pred["annotations"]] == [139, 285]  # COCO integer ids
    assert sorted(os.listdir(out / "panoptic_pred")) == ["000000000139.png",
                                                         "000000000285.png"]
    out2 = tmp_path / "out2"
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out", str(out2),
                   "--skip-bad"]) == 0
    pred = json.loads((out2 / "panoptic_pred.json").read_text())
    assert [a["file_name"] for a in pred["annotations"]] == [
        "000000000139.png", "000000000285.png", "zz_last.png"]
    assert pred["annotations"][2]["image_id"] == "zz_last"  # no number: the stem
    skipped = json.loads((out2 / "skipped.json").read_text())
    assert [s["file"] for s in skipped] == ["zz_broken.jpg"]
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err


def test_predict_maps_file_names_to_ids_through_images_json(tiny_run, tmp_path):
    images = _images(tmp_path / "images", ["a.jpg", "b.jpg"])
    meta = tmp_path / "images.json"
    meta.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"},
                                           {"id": 9, "file_name": "b.jpg"}]}))
    out = tmp_path / "out"
    assert P.main(["predict", "--ckpt", tiny_run, "--images", images, "--out", str(out),
                   "--images-json", str(meta)]) == 0
    pred = json.loads((out / "panoptic_pred.json").read_text())
    assert [a["image_id"] for a in pred["annotations"]] == [7, 9]
    meta.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"}]}))
    with pytest.raises(UserError, match=r"no entry for b\.jpg"):
        common.coco_image_ids(str(meta))("b.jpg")


def test_eval_on_a_read_only_run_prints_its_metrics(tiny_run, monkeypatch, capsys):
    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(rundir, "write_json", read_only)
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)
    assert P.main(["eval", "--ckpt", tiny_run, "--max-eval", "2"]) == 0
    captured = capsys.readouterr()
    assert '"PQ"' in captured.out  # the metrics, printed
    assert "could not save the sampled record" in captured.out + captured.err
    assert "could not write" in captured.err  # the overlays, one warning per folder


SHARED = Path(__file__).resolve().parents[2] / "shared/data/coco_panoptic_sample/sample_data"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (real COCO samples)")
def test_predict_output_scores_against_coco_ground_truth(tmp_path, capsys):
    """Train a few steps on the two real COCO samples (folder data, 133 categories), predict
    their images, and score the output with evals.panoptic against the COCO JSON: the
    integer image ids match, so both images are scored (none reported missing)."""
    from evals import panoptic as evals_panoptic
    from tests.test_panoptic_task import TINY
    coco = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        os.makedirs(coco / "annotations", exist_ok=True)
        shutil.copy(SHARED / "panoptic_examples.json",
                    coco / "annotations" / f"panoptic_{split}.json")
        shutil.copytree(SHARED / "panoptic_examples", coco / "annotations" / f"panoptic_{split}")
        shutil.copytree(SHARED / "input_images", coco / split)
    run = str(tmp_path / "run")
    assert P.main(["train", "--workdir", run, "--no-eval", "--data", f"folder:{coco}", *TINY,
                   "--set", "vae.model.label_channels.semantics=(0,134)",
                   "--set", "data.shuffle_buffer=4", "--set", "vae.train.batch_size=2",
                   "--set", "givt.train.batch_size=2"]) == 0
    out = tmp_path / "out"
    assert P.main(["predict", "--ckpt", run, "--images", str(SHARED / "input_images"),
                   "--out", str(out)]) == 0
    pred = json.loads((out / "panoptic_pred.json").read_text())
    assert sorted(a["image_id"] for a in pred["annotations"]) == [142238, 439180]
    capsys.readouterr()
    assert evals_panoptic.main([
        "--gt-json", str(SHARED / "panoptic_examples.json"),
        "--gt-dir", str(SHARED / "panoptic_examples"),
        "--pred-json", str(out / "panoptic_pred.json"), "--pred-dir",
        str(out / "panoptic_pred")]) == 0
    assert "2 images in" in capsys.readouterr().out


def test_fine_tuning_starts_from_a_run_and_a_converted_checkpoint(tiny_run, tmp_path, capsys):
    """Stage 1 from a run directory, stage 2 from a .npz (the converter's format), with
    the target embedding re-initialised; a 1e-12 learning rate keeps what was loaded."""
    from flax import traverse_util

    from tests.test_panoptic_task import TINY
    from uvim_givt.compat.big_vision import save_npz
    from uvim_givt.training.checkpoint import load_params
    givt, _ = load_params(tiny_run, "givt")
    npz = save_npz(str(tmp_path / "givt.npz"), givt)
    run = str(tmp_path / "finetuned")
    assert P.main(["train", "--workdir", run, "--no-eval", *TINY,
                   "--set", f"vae.init.path={tiny_run}", "--set", f"givt.init.path={npz}",
                   "--set", "givt.init.dont_load=('EmbedTargets/.*',)",
                   "--set", "vae.train.optim.lr=1e-12", "--set", "givt.train.optim.lr=1e-12",
                   ]) == 0
    out = capsys.readouterr().out
    assert f"vae: initialised from {tiny_run}" in out and f"givt: initialised from {npz}" in out
    for stage in ("vae", "givt"):
        before = traverse_util.flatten_dict(load_params(tiny_run, stage)[0], sep="/")
        after = traverse_util.flatten_dict(load_params(run, stage)[0], sep="/")
        for k, v in after.items():
            if k.startswith("EmbedTargets/"):
                assert not np.allclose(v, before[k], atol=1e-6), k  # freshly initialised
            else:
                np.testing.assert_allclose(v, before[k], atol=1e-6, err_msg=k)


def test_depth_in_millimetres_is_refused_naming_the_file(tmp_path):
    from tasks import depth as D
    from tests.test_depth_task import _write_frame
    rgb = np.zeros((3, 6, 8), np.uint8)
    _write_frame(str(tmp_path / "m.h5"), rgb, np.full((6, 8), 2.5, np.float32))
    assert float(D.read_h5_frame(str(tmp_path / "m.h5"))["depth"].max()) == 2.5
    _write_frame(str(tmp_path / "mm.h5"), rgb, np.full((6, 8), 2500.0, np.float32))
    with pytest.raises(DataError, match=r"mm\.h5: depth values up to 2500: .*millimetres"):
        D.read_h5_frame(str(tmp_path / "mm.h5"))


def test_eval_with_other_settings_writes_tagged_records(tiny_run, capsys):
    eval_dir = os.path.join(tiny_run, "eval")
    before = set(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else set()
    assert P.main(["eval", "--ckpt", tiny_run, "--max-eval", "2",
                   "--set", "givt.sampling.temperature=0.7"]) == 0
    new = sorted(set(os.listdir(os.path.join(tiny_run, "eval"))) - before)
    assert new and all("_eval_set-" in n for n in new), new
    rec = json.loads(open(os.path.join(tiny_run, "eval", new[0])).read())
    assert rec["extra"]["settings"] == ["givt.sampling.temperature=0.7"]
    capsys.readouterr()
    assert P.main(["eval", "--ckpt", tiny_run, "--set", "givt.model.emb_dim=8"]) == 2
    assert "eval may change data.*, givt.sampling.*, evals.* only" in capsys.readouterr().err


def test_stage_2_from_cached_codes_trains_as_from_live_codes(tiny_run, tmp_path, capsys):
    """givt.train.cached_codes: the training split's stage-1 posteriors computed once into
    the run directory; two steps from them give the losses and parameters of encoding every
    batch in the step (the same batches, posterior samples and input noise). A route that
    augments the labels at random is refused in one line."""
    from tests.test_panoptic_task import TINY
    from uvim_givt.training.checkpoint import load_params
    plain = [*TINY, "--set", "data.flip=False", "--set", "data.crop_area_min=1.0",
             "--set", "givt.train.total_steps=2", "--set", "givt.train.log_every=1"]
    runs = {}
    for name, extra in (("live", []), ("cached", ["--set", "givt.train.cached_codes=True"])):
        runs[name] = str(tmp_path / name)
        assert P.main(["train", "--workdir", runs[name], "--stage", "givt", "--vae-ckpt",
                       tiny_run, "--no-eval", *plain, *extra]) == 0
    caches = os.listdir(os.path.join(runs["cached"], "code_cache"))
    info = json.load(open(os.path.join(runs["cached"], "code_cache", caches[0], "info.json")))
    assert len(caches) == 1 and info["examples"] == 48
    assert not os.path.exists(os.path.join(runs["live"], "code_cache"))

    def losses(run):
        rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
        return [r["loss"] for r in rows if r["stage"] == "givt" and "loss" in r]
    assert len(losses(runs["live"])) == 2
    np.testing.assert_allclose(losses(runs["cached"]), losses(runs["live"]), rtol=1e-5)
    live, cached = load_params(runs["live"], "givt")[0], load_params(runs["cached"], "givt")[0]
    for a, b in zip(jax.tree_util.tree_leaves(live), jax.tree_util.tree_leaves(cached),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert P.main(["train", "--workdir", str(tmp_path / "flipped"), "--stage", "givt",
                   "--vae-ckpt", tiny_run, "--no-eval", *TINY, "--set", "data.flip=True",
                   "--set", "givt.train.cached_codes=True"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "augments the stage-1 input ('labels') at random" in err[0]
    assert not os.path.exists(tmp_path / "flipped")  # refused before anything is written
