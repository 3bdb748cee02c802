"""Multi-host training verified with real processes joined by ``jax.distributed``.

Two processes on this machine (coordinator on localhost, gloo CPU collectives, one CPU
device each, FSDP on so that checkpoints hold shards written by both) each read their share
of the data through the real pipeline and train through the real loop
(``tests/_multihost_worker.py``). Checked against a one-process run of the same global
batch: the rows each process reads, the losses, the saved parameters, and resuming a run
checkpointed with two processes on one, and the reverse.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from uvim_givt.data import pipeline
from uvim_givt.errors import ConfigError, DataError
from uvim_givt.training import sharding
from uvim_givt.training.checkpoint import load_params

WORKER = os.path.join(os.path.dirname(__file__), "_multihost_worker.py")
TOTAL, HALF = 6, 3  # steps of a straight run; checkpoints every HALF steps
ROUND_TIMEOUT_S = 420  # a hang (a process waiting on a dead peer) fails instead of blocking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(n_proc: int, proc: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "SLURM_", "TPU_")) and k != "XLA_FLAGS"}
    # of XLA_FLAGS only the suite's compile setting (tests/conftest.py), no device count
    opt = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if f.startswith("--xla_backend_optimization_level")]
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=" ".join(opt))
    if n_proc > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n_proc),
                   JAX_PROCESS_ID=str(proc))
    return env


def _run_round(jobs: list[tuple[str, int]], scratch: str) -> dict[str, list[dict]]:
    """Runs every (run_dir, n_proc) job at once; returns each job's per-process reports.
    Any process failing or the round outlasting its limit kills them all and fails."""
    procs = []
    for run_dir, n_proc in jobs:
        port = _free_port()
        for p in range(n_proc):
            out = os.path.join(scratch, f"{os.path.basename(run_dir)}.{p}.json")
            log = open(os.path.join(scratch, f"{os.path.basename(run_dir)}.{p}.log"), "w")
            cmd = [sys.executable, WORKER, run_dir, out, str(TOTAL), str(HALF)]
            procs.append((run_dir, out, log, subprocess.Popen(
                cmd, env=_env(n_proc, p, port), stdout=log, stderr=subprocess.STDOUT)))
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    failed = None
    while failed is None and any(pr.poll() is None for *_, pr in procs):
        failed = next((lg.name for *_, lg, pr in procs if pr.poll() not in (None, 0)), None)
        if time.monotonic() > deadline:
            failed = f"timeout after {ROUND_TIMEOUT_S} s"
        time.sleep(0.5)
    failed = failed or next((lg.name for *_, lg, pr in procs if pr.returncode != 0), None)
    for *_, log, pr in procs:
        if pr.poll() is None:
            pr.kill()
        pr.wait()
        log.close()
    if failed:
        tails = []
        for *_, log, _ in procs:
            with open(log.name) as f:
                tails.append(f"--- {log.name}\n" + "".join(f.readlines()[-15:]))
        pytest.fail(f"multi-process round failed ({failed}):\n" + "\n".join(tails))
    reports: dict[str, list[dict]] = {}
    for run_dir, out, _, _ in procs:
        with open(out) as f:
            reports.setdefault(os.path.basename(run_dir), []).append(json.load(f))
    return reports


def _cut_to_half(src: str, dst: str) -> None:
    """A copy of a finished run as it was at step HALF (a later start resumes there)."""
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", "givt", str(TOTAL)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    scratch = str(root / "reports")
    os.makedirs(scratch)
    d = {name: str(root / name) for name in ("one", "two", "two_then_one", "one_then_two")}
    reports = _run_round([(d["one"], 1), (d["two"], 2)], scratch)
    _cut_to_half(d["two"], d["two_then_one"])
    _cut_to_half(d["one"], d["one_then_two"])
    reports.update(_run_round([(d["two_then_one"], 1), (d["one_then_two"], 2)], scratch))
    return d, reports


def _losses(report: dict) -> dict[int, float]:
    return {int(k): v for k, v in report["losses"].items()}


@pytest.mark.slow
def test_each_process_reads_its_rows_of_the_one_process_batch(runs):
    _, rep = runs
    (one,), two = rep["one"], sorted(rep["two"], key=lambda r: r["process_index"])
    assert [r["process_count"] for r in two] == [2, 2] and one["process_count"] == 1
    assert [r["device_count"] for r in two] == [2, 2]
    for step in map(str, range(1, TOTAL + 1)):
        assert len(two[0]["ids"][step]) == len(two[1]["ids"][step]) == 4
        assert two[0]["ids"][step] + two[1]["ids"][step] == one["ids"][step], step


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    """Same losses at every step and the same saved parameters at both checkpoints."""
    d, rep = runs
    one = _losses(rep["one"][0])
    assert sorted(one) == list(range(1, TOTAL + 1))
    for r in rep["two"]:  # every process logs the same (global) loss
        two = _losses(r)
        np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)
    for step in (HALF, TOTAL):
        a, _ = load_params(d["one"], "givt", step)
        b, _ = load_params(d["two"], "givt", step)
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                                    atol=1e-6), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_then_one", "one_then_two"])
def test_resume_with_another_process_count(runs, name):
    """Checkpointed at step HALF with one layout, continued to TOTAL with the other: the
    same losses and final parameters as the straight one-process run."""
    d, rep = runs
    straight = _losses(rep["one"][0])
    for r in rep[name]:
        assert r["start"] == HALF
        resumed = _losses(r)
        assert sorted(resumed) == list(range(HALF + 1, TOTAL + 1))
        np.testing.assert_allclose([resumed[s] for s in sorted(resumed)],
                                   [straight[s] for s in sorted(resumed)], rtol=1e-5)
    a, _ = load_params(d["one"], "givt", TOTAL)
    b, _ = load_params(d[name], "givt", TOTAL)
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                                atol=1e-6), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two", "two_then_one", "one_then_two"])
def test_run_files_are_written_by_process_zero_only(runs, name):
    """metrics.jsonl holds every step once (a second writer would duplicate rows)."""
    d, _ = runs
    with open(os.path.join(d[name], "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(1, TOTAL + 1))


# ------------------------------------------------------------ the pipeline's row split
def _ids_dataset(n: int = 23) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({"id": np.arange(n, dtype=np.int64)})


def _prep(ex, seed):
    # The stateless seed's stream position comes back, to check it is the global one.
    return dict(ex, pos=seed[1])


def _take(n_proc: int, proc: int, batch: int, start: int, steps: int) -> list[dict]:
    it = pipeline.train_batches(_ids_dataset, _prep, batch, seed=5, start_step=start,
                                shuffle_buffer=8, process_index=proc, process_count=n_proc)
    return [next(it) for _ in range(steps)]


@pytest.mark.parametrize("n_proc", [2, 3])
@pytest.mark.parametrize("start", [0, 4])
def test_process_shares_concatenate_to_the_global_batch(n_proc, start):
    """Process p's rows are rows [p*B/P, (p+1)*B/P) of the one-process batch, example and
    augmentation seed alike, from a fresh start and from a resumed step."""
    batch, steps = 12, 5
    whole = _take(1, 0, batch, start, steps)
    shares = [_take(n_proc, p, batch, start, steps) for p in range(n_proc)]
    for s in range(steps):
        for key in ("id", "pos"):
            joined = np.concatenate([shares[p][s][key] for p in range(n_proc)])
            np.testing.assert_array_equal(joined, whole[s][key])
        np.testing.assert_array_equal(whole[s]["pos"],
                                      np.arange((start + s) * batch, (start + s + 1) * batch))


def test_batch_must_split_over_processes():
    with pytest.raises(DataError, match="batch size 10 does not split over 3 processes"):
        _take(3, 0, 10, 0, 1)


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID is not"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"}, "JAX_PROCESS_ID='x'"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "outside 0..1"),
])
def test_process_environment_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        sharding._explicit_process_env(env)


def test_process_environment_is_passed_to_initialize():
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert sharding._explicit_process_env(env) == {"num_processes": 4, "process_id": 3}
    assert sharding._explicit_process_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == {}
