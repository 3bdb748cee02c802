"""Run-directory reliability: one writer per run, every logged step once across a resume,
no silent config-file fallback, bad settings refused before anything is written."""

from __future__ import annotations

import json
import os

import pytest

from tasks import panoptic as P
from tests.test_training import _cfg, _Crash, _crashing
from uvim_givt import config as config_lib
from uvim_givt import rundir
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.training.metrics import drop_rows_after
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
    ("givt.posterior=sampel", "givt.posterior='sampel': sample or mean"),
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
    ("data.decode=argmx", "data.decode='argmx': use one of"),
    ("data.max_depth=0.0", "data.max_depth=0.0: need 0 <= min < max"),
])
def test_a_task_checks_its_own_settings_before_writing(tmp_path, capsys, setting, message):
    from tasks import depth as D
    run = tmp_path / "run"
    assert D.main(["train", "--workdir", str(run), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()
