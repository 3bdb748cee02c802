"""A quiet console: TensorFlow's C++ log lines appear only with --verbose (uvim_givt.quiet)."""

from __future__ import annotations

import os
import subprocess
import sys

from uvim_givt import quiet

# Touches TensorFlow's C++ runtime twice: the import (absl/oneDNN/CPU-feature notices) and
# a tf.data warning after start-up (a cache read partially, twice).
_SCRIPT = """
import uvim_givt
import tensorflow as tf
ds = tf.data.Dataset.range(10).cache().take(3)
for _ in range(2):
    list(ds)
print("finished")
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "UVIM_GIVT_VERBOSE")}
    return subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True,
                          text=True, env=env, timeout=300, check=True)


def test_tensorflow_is_silent_unless_verbose():
    quiet_run = _run()
    assert quiet_run.stdout.splitlines() == ["finished"]
    assert quiet_run.stderr == ""
    loud = _run("--verbose")
    assert "oneDNN" in loud.stderr or "cpu_feature_guard" in loud.stderr
    assert "cache_dataset_ops" in loud.stderr


def test_filter_keeps_what_is_not_a_startup_notice():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n"
            "I0000 00:00:1796162.1 12 port.cc:153] oneDNN custom operations are on.\n"
            "W0000 00:00:1796162.2 12 cpu_feature_guard.cc:227] This binary is optimized\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            "TensorFlow with the appropriate compiler flags.\n"
            "E0000 00:00:1796162.3 12 loader.cc:9] could not load libfoo.so\n"
            "Traceback (most recent call last):\n")
    assert quiet.filter_noise(text) == ("E0000 00:00:1796162.3 12 loader.cc:9] could not load "
                                        "libfoo.so\nTraceback (most recent call last):\n")


def test_verbose_is_read_from_argv_and_environment(monkeypatch):
    monkeypatch.delenv("UVIM_GIVT_VERBOSE", raising=False)
    assert quiet.verbose_requested(["prog", "train", "--verbose"])
    assert not quiet.verbose_requested(["prog", "train"])
    monkeypatch.setenv("UVIM_GIVT_VERBOSE", "1")
    assert quiet.verbose_requested(["prog"])


def test_an_embedded_dataset_builds_with_two_lines_and_no_tfds_chatter(tmp_path, capfd,
                                                                       monkeypatch):
    """TFDS's nested progress bars (cursor codes in a notebook), its stdout messages and its
    absl warning about the folder it fills are replaced by a start and an end line; the
    builder's bars come back afterwards, and --verbose keeps TFDS's own output."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    from tasks.datasets.synthetic_panoptic import SyntheticPanoptic
    from uvim_givt.data import embedded

    monkeypatch.delenv("UVIM_GIVT_VERBOSE", raising=False)
    monkeypatch.setattr(sys, "argv", ["x"])
    tfds.display_progress_bar(True)
    builder = embedded.ensure_built(SyntheticPanoptic, data_dir=str(tmp_path),
                                    num_train=4, num_validation=2)
    out, err = capfd.readouterr()
    assert builder.info.splits["train"].num_examples == 4
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("Building embedded dataset synthetic_panoptic/")
    assert lines[1].startswith("built synthetic_panoptic/") and lines[1].endswith(
        "(train 4, validation 2 examples)")
    assert tqdm_utils._active  # the bars are TFDS's again
    embedded.ensure_built(SyntheticPanoptic, data_dir=str(tmp_path), num_train=4,
                          num_validation=2)
    assert capfd.readouterr() == ("", "")  # built: nothing to say
    monkeypatch.setattr(sys, "argv", ["x", "--verbose"])
    embedded.ensure_built(SyntheticPanoptic, data_dir=str(tmp_path), num_train=3,
                          num_validation=2)
    out, err = capfd.readouterr()
    assert "Generating splits" in err or "Downloading and preparing" in out + err
