"""Leaderboard over fake run directories: tables, published rows, self-contained HTML.

The leaderboard knows no task: what a task's metrics mean comes from the records'
``metric_meta``, which :func:`metric_meta` below fills as the tasks declare it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from evals import leaderboard as L
from evals.leaderboard import report as report_module
from uvim_givt.rundir import write_eval_record

_PANOPTIC_DATA, _NYU, _IN256 = "COCO 2017 val", "NYU Depth v2 val", "ImageNet 256"


def _dense_references(data, metric, values, oracle="VAE stage 1 (oracle)"):
    """A dense task's published rows: its VAE's oracle, GIVT and UViM (these ``values``)."""
    models = ((oracle, "oracle"), ("GIVT stage 2", "sampled"),
              ("UViM (VQ-VAE, discrete)", "sampled"))
    return [{"model": model, "data": data, "metric": metric, "value": value,
             "prediction": prediction}
            for (model, prediction), value in zip(models, values, strict=True)]


# The tasks' declared metric metadata, as the evaluators write it into each record.
METRIC_META = {
    "panoptic": {
        "family": "panoptic",
        "order": ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"],
        "primary": "PQ", "higher_is_better": True, "units": {"PQ": "%", "SQ": "%", "RQ": "%"},
        "references": _dense_references(_PANOPTIC_DATA, "PQ", (71.0, 40.2, 45.8),
                                        oracle="VAE stage 1 (oracle: encode GT, decode)")},
    "depth": {
        "family": "depth",
        "order": ["RMSE", "AbsRel", "log10", "delta1", "delta2", "delta3"],
        "primary": "RMSE", "higher_is_better": False, "units": {"RMSE": "m"},
        "references": _dense_references(_NYU, "RMSE", (0.195, 0.474, 0.467))},
    "imagenet": {
        "family": "generation",
        "order": ["FID", "FID_recon", "IS", "IS_std", "class_accuracy"],
        "primary": "FID", "higher_is_better": False, "units": {},
        "references": [
            {"model": "GIVT-Causal 256px, t=0.95, DB-CFG 0.4", "data": _IN256,
             "metric": "FID", "value": 3.35, "prediction": "sampled"},
            {"model": "GIVT-MaskGIT 256px, t_C=35, DB-CFG 0.1", "data": _IN256,
             "metric": "FID", "value": 4.53, "prediction": "sampled"},
            {"model": "GIVT-MaskGIT 512px, t_C=140", "data": "ImageNet 512", "metric": "FID",
             "value": 4.86, "prediction": "sampled"},
        ]},
    "loss": {"family": "loss", "order": ["nll_per_token", "loss", "kl"], "primary": None,
             "higher_is_better": False, "units": {}, "references": []},
}


def metric_meta(task_or_kind):
    """The ``metric_meta`` a record of this task (or of held-out "loss" kind) carries."""
    return copy.deepcopy(METRIC_META[task_or_kind])


def kind_of(task):
    return METRIC_META[task]["family"]


def published_values(task, metric):
    """The published values of ``task``'s ``metric`` as the tables print them."""
    return {L.format_metric(r["value"]) for r in METRIC_META[task]["references"]
            if r["metric"] == metric}


def _make_run(root, name, task, stage, size, evals, losses, num_params=None, png=False,
              extra_files=None, with_meta=True):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(
        {"task": task, "size": size, "model": {"name": "givt"}, "train": {"total_steps": 300}}))
    with open(d / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            row = {"step": (i + 1) * 100, "loss": loss, "time": 30.0 * (i + 1)}
            f.write(json.dumps(row) + "\n")
    if num_params:
        (d / "run_info.json").write_text(json.dumps({"num_params": num_params}))
    for step, metrics in evals:
        meta = {"kind": kind_of(task), "metric_meta": metric_meta(task)} if with_meta else {}
        write_eval_record(str(d), {"task": task, "stage": stage, "split": "validation",
                                   "data": "embedded", "step": step, "metrics": metrics,
                                   **meta})
    if png:
        (d / "samples").mkdir()
        img = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / "samples" / "step300.png")
        depth = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 3)
        (d / "predictions").mkdir()
        Image.fromarray(depth).save(d / "predictions" / "frame0.png")  # 16-bit, mm
    for rel, text in (extra_files or {}).items():
        (d / rel).write_text(text)
    return d


@pytest.fixture()
def runs_root(tmp_path):
    root = tmp_path / "runs"
    _make_run(root, "depth_tiny", "depth", "givt", "tiny",
              [(100, {"RMSE": 0.91, "AbsRel": 0.3}), (300, {"RMSE": 0.6123, "AbsRel": 0.21,
                                                            "delta1": 0.55})],
              [2.0, 1.5, 1.2], num_params={"givt": 1_234_567, "vae": 2_000}, png=True)
    truncated_log = '{"step": 100, "loss": 1.0, "time": 30}\n{"ste'  # a run being written
    _make_run(root, "depth_vae", "depth", "vae", "tiny", [(200, {"RMSE": 0.3456})],
              [1.0, 0.5], extra_files={"metrics.jsonl": truncated_log})
    _make_run(root, "gen/digits", "imagenet", "givt", "tiny",
              [(300, {"FID": 12.5, "IS": 8.25, "class_accuracy": 0.97})], [3.0, 2.0, 1.0])
    _make_run(root, "pan_training", "panoptic", "vae", "tiny", [], [1.0, 0.8])  # no evals yet
    return root


def _tables(md):
    """task -> list of row cell lists, parsed from the markdown."""
    out, task = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            task = line[3:].strip()
        elif line.startswith("|") and task and not re.match(r"^\|[-:|]+\|$", line):
            out.setdefault(task, []).append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_markdown_tables(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert L.main(["--root", str(runs_root), "--out", str(out)]) == 0
    md = (out / "leaderboard.md").read_text()
    tables = _tables(md)
    header, *rows = tables["depth"]
    assert header[:7] == list(L.BASE_COLUMNS)
    assert header[7:] == ["RMSE", "AbsRel", "delta1"]  # the order the records declare
    col = {c: i for i, c in enumerate(header)}
    # ranked by RMSE (best first), published rows last and marked
    assert [r[0] for r in rows[:2]] == ["depth_vae", "depth_tiny"]
    tiny = rows[1]
    assert tiny[col["stage"]] == "givt" and tiny[col["RMSE"]] == "0.6123"
    assert tiny[col["delta1"]] == "0.55" and tiny[col["parameters"]] == "1.23M"
    assert tiny[col["steps"]] == "300" and tiny[col["training time"]] == "1m30s"
    assert tiny[col["model size"]] == "givt/tiny" and tiny[col["data"]] == "embedded validation"
    assert rows[0][col["steps"]] == "200/300" and rows[0][col["training time"]] == "30.0s"
    published = rows[2:]
    assert len(published) == 3 and all(r[0] == L.PUBLISHED_LABEL for r in published)
    assert {r[col["RMSE"]] for r in published} == published_values("depth", "RMSE")
    assert [r[1] for r in published] == [r["model"] for r in METRIC_META["depth"]["references"]]
    gen = tables["imagenet"]
    assert gen[0][7:] == ["FID", "IS", "class_accuracy"]
    assert gen[1][0] == "gen/digits" and "12.5" in gen[1] and "0.97" in gen[1]
    assert {r[gen[0].index("FID")] for r in gen[2:]} == published_values("imagenet", "FID")
    # the tasks are the runs' own, by name: a task with a training log but no record yet
    # has an empty table (no published rows: nothing declared them)
    assert list(tables) == ["depth", "imagenet", "panoptic"]
    assert tables["panoptic"] == [list(L.BASE_COLUMNS)]
    assert "No evaluated runs yet" in md
    # the truncated metrics.jsonl line is reported, not silently dropped
    assert "1 unreadable line(s)" in md
    # plots and thumbnails the markdown links to exist
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    for name in ("depth_training", "depth_RMSE", "imagenet_training", "imagenet_FID",
                 "panoptic_training"):
        assert (out / "plots" / f"{name}.png").is_file(), name
    assert not (out / "plots" / "panoptic_PQ.png").exists()  # no run scored PQ
    assert "wrote" in capsys.readouterr().out


def test_html_is_self_contained(runs_root, tmp_path):
    out = tmp_path / "report"
    assert L.main([str(runs_root / "depth_tiny"), str(runs_root / "gen"), "--out", str(out),
                   "--format", "html"]) == 0
    assert not (out / "leaderboard.md").exists()
    page = (out / "leaderboard.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'href="(?!#)', page) and "<link" not in page and "<script" not in page
    assert len(srcs) >= 4  # two plots + the two thumbnails of depth_tiny
    n_published = sum(len(METRIC_META[t]["references"]) for t in ("depth", "imagenet"))
    assert page.count('class="published"') == n_published and L.PUBLISHED_LABEL in page
    assert "0.6123" in page and "gen/digits" not in page and "digits" in page
    assert "depth_vae" not in page  # only the named runs


def test_md_stdout_aligned(runs_root, tmp_path, capsys):
    out = tmp_path / "r"
    assert L.main([str(runs_root / "depth_tiny"), "--out", str(out), "--format", "md"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Leaderboard")
    assert "![" not in printed  # no image links in a terminal
    table = [ln for ln in printed.splitlines() if ln.startswith("|")]
    block = []
    for ln in table:  # every table's lines have one width: aligned columns
        if block and len(ln) != len(block[0]) and ln.startswith("| run "):
            block = []
        block.append(ln)
        assert len(ln) == len(block[0])
    assert any(L.PUBLISHED_LABEL in ln for ln in table)
    assert (out / "leaderboard.md").is_file() and not (out / "leaderboard.html").exists()


def test_tolerates_missing_files_and_reports_errors(tmp_path, capsys):
    bare = tmp_path / "bare"
    (bare / "eval").mkdir(parents=True)
    write_eval_record(str(bare), {"task": "panoptic", "stage": "vae", "split": "validation",
                                  "data": "embedded", "step": 5, "metrics": {"PQ": 12.0}})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert L.main([str(bare), str(bad), "--out", str(tmp_path / "o"), "--format", "md"]) == 0
    printed = capsys.readouterr()
    pan = _tables(printed.out)["panoptic"]
    assert pan[1][0] == "bare" and "12.0" in pan[1]
    assert "config.json" in printed.err
    assert re.search(r"skipped \S*bad: no eval records and no training log", printed.err)
    assert "## Skipped folders" in printed.out
    assert L.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_formatting_helpers():
    assert L.format_count(1_500) == "1.5k" and L.format_count(2_000_000_000) == "2B"
    assert L.format_duration(3725) == "1h02m" and L.format_duration(65) == "1m05s"
    assert L.format_metric(71.0) == "71.0" and L.format_metric(0.12345) == "0.1235"
    assert L.format_metric(None) == ""


# ----------------------------------------------------------------------------- two-stage runs


def _two_stage_run(root, name, task="depth", seed=0, givt_nll_shift=0.0):
    """A run as the trainer writes it: stage-tagged metrics.jsonl rows (VAE loss ~1, GIVT
    NLL ~10, interleaved as a resumed run can leave them), periodic and final eval records
    with counters, held-out losses and a baseline."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(
        {"task": task, "size": "tiny", "vae": {"train": {"total_steps": 40}},
         "givt": {"train": {"total_steps": 60}}}))
    rng = np.random.default_rng(seed)
    rows = [{"stage": "vae", "step": s, "loss": 1.0 + 1.0 / s + rng.uniform(0, 0.01),
             "lr": 1e-3, "steps_per_s": 3.0, "time": s} for s in range(10, 41, 10)]
    rows += [{"stage": "givt", "step": s, "loss": 10.0 + 5.0 / s + givt_nll_shift,
              "grad_norm": 0.3, "time": 40 + s} for s in range(10, 61, 10)]
    order = [rows[i] for i in (0, 4, 1, 5, 2, 6, 3, 7, 8, 9)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in order))
    metric = METRIC_META[task]["primary"]
    for stage, ev, steps in (("vae", "oracle", (20, 40)), ("givt", "sampled", (30, 60))):
        for step in steps:
            common = {"task": task, "stage": stage, "split": "validation", "data": "embedded",
                      "step": step, "num_examples": 8,
                      "extra": {"periodic": step != steps[-1]}}
            write_eval_record(str(d), {**common, "evaluator": ev, "kind": kind_of(task),
                                       "metric_meta": metric_meta(task), "prediction": ev,
                                       "metrics": {metric: step / 100 + seed, "num_images": 8,
                                                   "num_images_without_valid_pixels": 0}})
            key = "loss" if stage == "vae" else "nll_per_token"
            write_eval_record(str(d), {**common, "evaluator": f"{stage}_loss", "kind": "loss",
                                       "metric_meta": metric_meta("loss"), "prediction": "oracle",
                                       "metrics": {key: 2.0 + givt_nll_shift * (stage == "givt"),
                                                   "kl": 3.0}})
    write_eval_record(str(d), {"task": task, "stage": "baseline", "evaluator": "baseline",
                               "kind": kind_of(task), "metric_meta": metric_meta(task),
                               "prediction": "baseline", "split": "validation",
                               "data": "embedded", "step": 0,
                               "metrics": {metric: 5.0, "num_images": 8}})
    return d


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_training_curves_one_series_per_run_and_stage(tmp_path):
    for i, name in enumerate(("a", "b")):
        _two_stage_run(tmp_path, name, seed=i)
    warnings: list[str] = []
    runs = L.gather_runs([], [str(tmp_path)], warnings)
    curves = {c.stage: c for c in L.training_curves(runs, "depth")}
    assert list(curves) == ["vae", "givt"]  # no baseline column: it does not train
    for run in runs:  # brute force from the file: each stage's rows, in step order
        rows = _jsonl(f"{run.path}/metrics.jsonl")
        for stage, c in curves.items():
            want = sorted((r["step"], r["loss"]) for r in rows if r["stage"] == stage)
            assert c.train_loss[run.name] == want
            assert c.heldout_loss[run.name] == [(s, 2.0) for s in ((20, 40) if stage == "vae"
                                                                   else (30, 60))]
    assert curves["vae"].metric == curves["givt"].metric == "RMSE"
    assert curves["vae"].evals[("a", "oracle")] == [(20, 0.2), (40, 0.4)]
    assert curves["givt"].evals[("b", "sampled")] == [(30, 1.3), (60, 1.6)]
    fig = L.figure_training(runs, "depth")
    axes = fig.axes[:6]  # rows: loss, learning rate and gradient norm, eval (then the twins)
    titles = [ax.get_title() for ax in axes]
    assert titles == ["stage 1 (VAE): loss", "stage 2 (GIVT): loss",
                      "stage 1 (VAE): learning rate (solid), gradient norm (dotted)",
                      "stage 2 (GIVT): learning rate (solid), gradient norm (dotted)",
                      "stage 1 (VAE): RMSE (eval)", "stage 2 (GIVT): RMSE (eval)"]
    assert not any("num_" in t for t in titles)
    assert axes[1].get_ylabel() == "NLL per code (nats)"  # units on the loss axes
    assert axes[4].get_ylabel() == "RMSE (m), lower is better"
    # every drawn loss line stays within one stage's scale (no VAE/GIVT zig-zag)
    for ax, lo, hi in ((axes[0], 0.5, 3.0), (axes[1], 1.5, 20.0)):
        lines = ax.get_lines()
        assert len(lines) == 4  # two runs x (training, held-out)
        for line in lines:
            x, y = line.get_xdata(), line.get_ydata()
            assert np.all(np.diff(x) > 0) and np.all((y > lo) & (y < hi))
    assert axes[0].get_yscale() == "linear"
    assert axes[4].get_xlabel() == "training step of this stage"
    # the learning rate (stage 1 logs it) and gradient norm (stage 2) are drawn
    lr_lines = {tuple(line.get_ydata()) for line in axes[2].get_lines()}
    assert lr_lines == {(1e-3,) * 4}
    twins = fig.axes[6:]
    assert [len(t.get_lines()) for t in twins] == [0, 2]
    assert {tuple(line.get_ydata()) for line in twins[1].get_lines()} == {(0.3,) * 6}
    # two evaluations per series: labelled points, with the images each scored
    notes = sorted(t.get_text() for t in axes[4].texts)
    assert notes == ["0.2 (n=8)", "0.4 (n=8)", "1.2 (n=8)", "1.4 (n=8)"]
    assert all(line.get_linewidth() == 0 for line in axes[4].get_lines())
    assert axes[4].get_ylim()[0] == 0


def test_training_figure_draws_the_loss_parts_and_says_why_the_losses_differ(tmp_path):
    d = _two_stage_run(tmp_path, "r")
    cfg = json.loads((d / "config.json").read_text())
    cfg["givt"]["input_noise"] = 0.5
    (d / "config.json").write_text(json.dumps(cfg))
    rows = _jsonl(d / "metrics.jsonl")
    for r in rows:  # stage 1 logs its parts; stage 2's loss is its NLL per token
        r.update({"xent": r["loss"] * 0.9, "kl": 300.0} if r["stage"] == "vae"
                 else {"nll_per_token": r["loss"], "nll_per_dim": r["loss"] / 16})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = L.gather_runs([str(d)], [], [])
    curves = {c.stage: c for c in L.training_curves(runs, "depth")}
    assert sorted(p for _, p in curves["vae"].parts) == ["kl", "xent"]
    assert [p for _, p in curves["givt"].parts] == ["nll_per_dim"]  # not the loss again
    assert curves["vae"].loss_label == "cross-entropy per pixel + beta x KL (nats)"
    assert curves["givt"].notes and "givt.input_noise=0.5" in curves["givt"].notes[0]
    assert curves["vae"].notes == []
    fig = L.figure_training(runs, "depth")
    titles = [ax.get_title() for ax in fig.axes]
    assert "stage 1 (VAE): loss parts (training)" in titles
    parts_ax = fig.axes[titles.index("stage 1 (VAE): loss parts (training)")]
    assert parts_ax.get_yscale() == "log"  # KL 300 and cross-entropy ~1: decades apart
    assert any("input_noise" in t.get_text() for t in fig.axes[1].texts)


def test_a_label_smoothed_stage_2_draws_its_nll_and_says_what_it_trained_on(tmp_path):
    """Trained on a label-smoothed cross-entropy (logged as the loss and xent_smoothed),
    stage 2's training curve is its plain NLL, the unit of the held-out curve and axis."""
    d = _two_stage_run(tmp_path, "r")
    cfg = json.loads((d / "config.json").read_text())
    cfg["givt"]["label_smoothing"] = 0.1
    (d / "config.json").write_text(json.dumps(cfg))
    rows = _jsonl(d / "metrics.jsonl")
    for r in rows:
        if r["stage"] == "givt":
            r.update(nll_per_token=r["loss"], xent_smoothed=r["loss"] + 2.0)
            r["loss"] += 2.0
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = L.gather_runs([str(d)], [], [])
    curves = {c.stage: c for c in L.training_curves(runs, "depth")}
    nll = [(int(r["step"]), r["nll_per_token"]) for r in rows if r["stage"] == "givt"]
    assert curves["givt"].train_loss["r"] == sorted(nll)
    assert [p for _, p in curves["givt"].parts] == ["xent_smoothed"]
    assert curves["givt"].loss_label == "NLL per code (nats)"
    assert any("givt.label_smoothing=0.1" in n for n in curves["givt"].notes)
    vae = [(int(r["step"]), r["loss"]) for r in rows if r["stage"] == "vae"]
    assert curves["vae"].train_loss["r"] == sorted(vae) and curves["vae"].notes == []


def test_log_loss_scale(tmp_path, monkeypatch):
    _two_stage_run(tmp_path, "pos")
    runs = L.gather_runs([str(tmp_path / "pos")], [], [])
    axes = L.figure_training(runs, "depth", log_loss=True).axes
    assert axes[0].get_yscale() == axes[1].get_yscale() == "log"
    # a GIVT NLL below zero (continuous densities) cannot go on a log axis: said so
    _two_stage_run(tmp_path, "neg", givt_nll_shift=-20.0)
    runs = L.gather_runs([str(tmp_path / "neg")], [], [])
    axes = L.figure_training(runs, "depth", log_loss=True).axes
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert "linear" in axes[1].get_title()
    seen = []  # the flag reaches the plots
    monkeypatch.setattr(report_module, "plot_task",
                        lambda runs, task, log_loss: seen.append(log_loss) or [])
    assert L.main([str(tmp_path / "pos"), "--out", str(tmp_path / "o"), "--log-loss"]) == 0
    assert seen and all(seen)


def test_counters_are_not_metrics(tmp_path, capsys, monkeypatch):
    _two_stage_run(tmp_path, "run", task="panoptic")
    monkeypatch.setattr(report_module, "plot_task", lambda *a, **k: [])  # the tables only
    assert L.main([str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--format", "md"]) == 0
    header, *rows = _tables(capsys.readouterr().out)["panoptic"]
    assert "PQ" in header and not [c for c in header if "num_" in c or c == "time"]
    data = {r[1]: r[header.index("data")] for r in rows}
    assert data["vae [oracle]"] == "embedded validation (8 images)"
    assert all(L.is_counter(n) for n in ("num_images", "eval/oracle/num_images", "time",
                                         "steps_per_s", "pixel_count"))
    assert not any(L.is_counter(n) for n in ("PQ", "RMSE", "gap/FID", "nll_per_token"))


def test_headline_chart_against_records_and_published(tmp_path):
    for i, name in enumerate(("a", "b")):
        _two_stage_run(tmp_path, name, seed=i)
    runs = L.gather_runs([], [str(tmp_path)], [])
    want = []  # the final (non-periodic) RMSE record of each run and stage, read back
    for run in sorted(runs, key=lambda r: r.name):
        recs = [json.load(open(p)) for p in sorted((tmp_path / run.name / "eval").iterdir())]
        finals = [r for r in recs
                  if "RMSE" in r["metrics"] and not r.get("extra", {}).get("periodic")]
        order = {"vae": 0, "givt": 1, "baseline": 2}
        want += [r["metrics"]["RMSE"] for r in sorted(finals, key=lambda r: order[r["stage"]])]
    fig = L.figure_headline(runs, "depth")
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx(want)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[:3] == ["a\nvae [oracle]\nn=8", "a\ngivt [sampled]\nn=8", "a\nbaseline\nn=8"]
    # the oracle is a diagnostic: hatched; the sampled prediction is the result
    assert [p.get_hatch() or "" for p in ax.patches[:2]] == ["//", ""]
    # runs on the embedded data: the papers' NYU values are not drawn across their bars
    assert ax.get_lines() == []
    assert "on NYU Depth v2 val not drawn" in fig.legends[0].get_title().get_text()
    for run in runs:  # the same runs scored on NYU: now the lines are drawn beside them
        for rec in run.records:
            rec["dataset"] = _NYU
    fig = L.figure_headline(runs, "depth")
    ax = fig.axes[0]
    published = {r["value"] for r in METRIC_META["depth"]["references"]
                 if r["metric"] == "RMSE"}
    lines = ax.get_lines()
    assert {float(line.get_ydata()[0]) for line in lines} == published
    assert all(len(set(line.get_ydata())) == 1 for line in lines)  # horizontal
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sum("NYU Depth v2 val" in t for t in legend) == 3
    assert "lower is better" in ax.get_ylabel()
    assert L.figure_headline(runs, "panoptic") is None  # nothing scored PQ


# ----------------------------------------------------------------------------- finding runs


def test_symlinked_runs_are_found_and_skips_reported(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    for i, name in enumerate(("panoptic_run", "depth_run", "gen_run")):
        _two_stage_run(store, name, task=("panoptic", "depth", "imagenet")[i], seed=i)
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    linked.mkdir()
    for name in ("panoptic_run", "depth_run", "gen_run"):
        (linked / name).symlink_to(store / name, target_is_directory=True)
    shutil.copytree(store, copied)
    (linked / "up").symlink_to(tmp_path, target_is_directory=True)  # a loop via the parent
    (linked / "self").symlink_to(".", target_is_directory=True)
    (linked / "again").symlink_to(store / "depth_run", target_is_directory=True)
    (linked / "gone").symlink_to(tmp_path / "nowhere")
    (linked / "empty" / "deeper").mkdir(parents=True)
    (linked / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # as root, permissions do not stop reading: fake a denial
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[tuple[str, str]] = []
    found = L.find_run_dirs(str(linked), skipped)
    assert sorted(os.path.basename(d) for d in found) == ["again", "gen_run", "panoptic_run"]
    why = {os.path.relpath(p, linked): w for p, w in skipped}
    assert why["up"].startswith("a symlink loop") and why["self"].startswith("a symlink loop")
    assert why["depth_run"].startswith("the same folder as") and "again" in why["depth_run"]
    assert why["gone"].startswith("a broken symlink")
    assert why["empty"].startswith("no run files") and "empty/deeper" not in why
    assert why["locked"].startswith("unreadable (Permission denied")
    assert len(skipped) == 6

    out = tmp_path / "report"
    monkeypatch.setattr(report_module, "plot_task", lambda *a, **k: [])  # plots are tested above
    assert L.main(["--root", str(linked), "--out", str(out), "--format", "md"]) == 0
    printed = capsys.readouterr()
    assert "3 run(s), 6 folder(s) skipped" in printed.err
    for name in ("up", "self", "gone", "empty", "locked"):
        assert f"skipped {linked / name}:" in printed.err
    md = (out / "leaderboard.md").read_text()
    assert "## Skipped folders" in md and f"`{linked / 'gone'}`: a broken symlink" in md
    # the same tables as over copies of the runs (names aside)
    assert L.main(["--root", str(copied), "--out", str(tmp_path / "r2"), "--format", "md"]) == 0
    copies = _tables(capsys.readouterr().out)
    for task, table in _tables(md).items():
        assert [r[1:] for r in table] == [r[1:] for r in copies[task]], task


# ----------------------------------------------------------------------------- metric_meta


def _record(run_dir, task, kind, stage, step, metrics, meta=None, time=None, evaluator=None,
            dataset=None):
    rec = {"task": task, "stage": stage, "split": "validation", "data": "embedded",
           "step": step, "metrics": metrics, "kind": kind}
    if dataset:
        rec["dataset"] = dataset
    if evaluator:
        rec["evaluator"] = evaluator
    if meta is not None:
        rec["metric_meta"] = meta
    if time is not None:
        rec["time"] = time
    return write_eval_record(str(run_dir), rec)


def test_unknown_task_takes_its_headline_from_its_records(tmp_path):
    """A task the leaderboard has never heard of: order, ranking, units, direction and
    published values all come from the newest record carrying metric_meta."""
    toy_meta = {"family": "toy", "order": ["acc", "err"], "primary": "acc",
                "higher_is_better": True, "units": {"acc": "%"},
                "references": [{"model": "toy paper", "data": "toy set", "metric": "acc",
                                "value": 91.5, "prediction": "sampled"}]}
    stale = {**toy_meta, "order": ["err", "acc"], "primary": "err", "higher_is_better": False,
             "references": []}
    values = {"r1": 60.0, "r2": 80.0, "r3": 70.0}
    for name, acc in values.items():
        d = tmp_path / "runs" / name
        (d / "eval").mkdir(parents=True)
        _record(d, "toy", "toy", "givt", 10, {"err": 100.0 - acc, "zeta": 1.0, "acc": acc},
                meta=toy_meta, time="2030-01-02T00:00:00Z", evaluator="sampled",
                dataset="toy set")
    # an older record (of an earlier declaration) is not the one that counts
    _record(tmp_path / "runs" / "r1", "toy", "toy", "vae", 5, {"err": 1.0}, meta=stale,
            time="2020-01-01T00:00:00Z")
    runs = L.gather_runs([], [str(tmp_path / "runs")], [])
    meta = L.task_meta(r for run in runs for r in run.records)
    assert meta.primary == "acc" and meta.higher_is_better

    table = L.build_table("toy", runs)
    assert table.columns[len(L.BASE_COLUMNS):] == ["acc", "err", "zeta"]
    ranked = sorted(values, key=values.get, reverse=True)  # higher is better
    toy_rows = [r for r in table.rows if r[1] == "givt [sampled]"]
    assert [r[0] for r in toy_rows] == ranked
    assert [r[len(L.BASE_COLUMNS)] for r in toy_rows] == [
        L.format_metric(values[n]) for n in ranked]
    assert table.rows[-1][:2] == ["r1", "vae"]  # no acc: ranked last
    assert table.published == [[L.PUBLISHED_LABEL, "toy paper", "paper", "", "toy set", "",
                                "", "91.5", "", ""]]

    fig = L.figure_headline(runs, "toy")
    ax = fig.axes[0]
    by_name = sorted(values)
    assert [p.get_height() for p in ax.patches] == pytest.approx([values[n] for n in by_name])
    assert [float(line.get_ydata()[0]) for line in ax.get_lines()] == [91.5]
    assert ax.get_ylabel() == "acc (%), higher is better"
    curves = L.training_curves(runs, "toy")
    assert [(c.stage, c.metric) for c in curves] == [("vae", "err"), ("givt", "acc")]
    assert [stem for stem, _, _ in L.plot_task(runs, "toy")] == ["toy_training", "toy_acc"]


def test_record_without_metric_meta_still_shows(tmp_path, capsys):
    """Older records (no metric_meta): alphabetical metrics, rows unranked, no published
    rows and no headline chart; next to a newer run, the newer run's metadata counts."""
    old = {"a_old": 0.9, "b_old": 0.3}  # run name -> RMSE; "a" first though worse
    for name, rmse in old.items():
        d = tmp_path / "old" / name
        (d / "eval").mkdir(parents=True)
        _record(d, "depth", "depth", "givt", 7, {"RMSE": rmse, "AbsRel": rmse / 3,
                                                 "delta1": 1 - rmse})
    assert L.main(["--root", str(tmp_path / "old"), "--out", str(tmp_path / "o1"),
                   "--format", "md"]) == 0
    header, *rows = _tables(capsys.readouterr().out)["depth"]
    assert header[7:] == ["AbsRel", "RMSE", "delta1"]  # sorted by name
    assert [r[0] for r in rows] == sorted(old)  # not ranked: no primary metric declared
    assert [r[header.index("RMSE")] for r in rows] == [L.format_metric(old[n]) for n in
                                                       sorted(old)]
    assert not (tmp_path / "o1" / "plots" / "depth_RMSE.png").exists()
    assert (tmp_path / "o1" / "plots" / "depth_training.png").exists()

    # a newer run whose records carry the metadata: the old rows stay, now ranked
    new = tmp_path / "old" / "c_new"
    (new / "eval").mkdir(parents=True)
    _record(new, "depth", "depth", "givt", 9, {"RMSE": 0.5}, meta=metric_meta("depth"))
    assert L.main(["--root", str(tmp_path / "old"), "--out", str(tmp_path / "o2"),
                   "--format", "md"]) == 0
    header, *rows = _tables(capsys.readouterr().out)["depth"]
    assert header[7:10] == ["RMSE", "AbsRel", "delta1"]
    everyone = {**old, "c_new": 0.5}
    ours = [r for r in rows if r[0] != L.PUBLISHED_LABEL]
    assert [r[0] for r in ours] == sorted(everyone, key=everyone.get)  # lower is better
    assert {r[header.index("RMSE")] for r in rows if r[0] == L.PUBLISHED_LABEL} == \
        published_values("depth", "RMSE")


def test_unreadable_eval_record_keeps_the_rest_of_the_run(tmp_path, capsys):
    d = tmp_path / "run"
    (d / "eval").mkdir(parents=True)
    good = _record(d, "depth", "depth", "givt", 30, {"RMSE": 0.42, "AbsRel": 0.1},
                   meta=metric_meta("depth"), evaluator="sampled")
    _record(d, "depth", "depth", "vae", 20, {"RMSE": 0.25}, meta=metric_meta("depth"),
            evaluator="oracle")
    bad = d / "eval" / "zz_half_written.json"
    bad.write_text('{"task": "depth", "stage": "givt", "metr')
    not_a_record = d / "eval" / "other.json"
    not_a_record.write_text('{"task": "depth"}')
    warnings: list[str] = []
    (run,) = L.gather_runs([str(d)], [], warnings)
    assert sorted(run.unreadable_records) == sorted([str(bad), str(not_a_record)])
    assert len(run.records) == 2 and good in {r["_path"] for r in run.records}
    assert len(warnings) == 2 and all("the run's other records are shown" in w
                                      for w in warnings)

    assert L.main([str(d), "--out", str(tmp_path / "o"), "--format", "md"]) == 0
    printed = capsys.readouterr()
    header, *rows = _tables(printed.out)["depth"]
    ours = {r[1]: r[header.index("RMSE")] for r in rows if r[0] == "run"}
    want = {}
    for p in (d / "eval").iterdir():  # every readable record, read back from its file
        if p not in (bad, not_a_record):
            rec = json.loads(p.read_text())
            want[f"{rec['stage']} [{rec['evaluator']}]"] = L.format_metric(
                rec["metrics"]["RMSE"])
    assert ours == want and len(ours) == 2
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    warnings_section = md.split("## Warnings", 1)[1]
    assert bad.name in warnings_section and not_a_record.name in warnings_section
    assert f"eval record {bad} skipped: unreadable" in printed.err
    assert "## Skipped folders" not in md  # the run itself is read, not skipped


def test_research_records_are_curves_not_table_rows(tmp_path):
    """Exposure-bias and uncertainty records stay out of the tables and the training
    curves; the exposure records become one figure (metric against the share of true
    codes given, NLL per position) and the uncertainty metrics a list."""
    meta = metric_meta("panoptic")
    d = tmp_path / "runs" / "r"
    (d / "eval").mkdir(parents=True)
    _record(d, "panoptic", "panoptic", "givt", 10, {"PQ": 30.0}, meta=meta,
            evaluator="sampled")
    rec = {"task": "panoptic", "stage": "givt", "split": "validation", "data": "embedded",
           "step": 10, "kind": "panoptic", "prediction": "completed", "evaluator": "exposure",
           "metric_meta": meta, "num_examples": 8,
           "metrics": {"keep_0/PQ": 30.0, "keep_0.5/PQ": 45.0, "keep_1/PQ": 70.0,
                       "num_images": 8.0, "nll_per_token": 3.0},
           "extra": {"keep": [0.0, 0.5, 1.0], "nll_per_position": [4.0, 3.0, 2.0]}}
    write_eval_record(str(d), rec)
    write_eval_record(str(d), {**rec, "prediction": "uncertainty", "evaluator": "uncertainty",
                               "metrics": {"semantics/ECE": 0.125, "num_images": 8.0},
                               "extra": {"draws": 8}})
    runs = L.gather_runs([], [str(tmp_path / "runs")], [])
    table = L.build_table("panoptic", runs)
    assert [r[1] for r in table.rows] == ["givt [sampled]"]
    assert not any(c.startswith("keep_") or "ECE" in c for c in table.columns)
    curves = L.training_curves(runs, "panoptic")
    assert [label for c in curves for _, label in c.evals] == ["sampled"]
    stems = [stem for stem, _, _ in L.plot_task(runs, "panoptic")]
    assert "panoptic_exposure" in stems
    from evals.leaderboard.research import figure_exposure, uncertainty_lines
    left, right = figure_exposure(runs, "panoptic").axes
    line = left.get_lines()[0]
    assert list(line.get_xdata()) == [0.0, 0.5, 1.0]
    assert list(line.get_ydata()) == [30.0, 45.0, 70.0]
    assert list(right.get_lines()[0].get_ydata()) == [4.0, 3.0, 2.0]
    assert uncertainty_lines(runs, "panoptic") == [
        "- **r** (step 10, 8 images, 8 draws): semantics/ECE 0.125"]


def test_thumbnails_follow_the_records_by_priority_not_file_times(tmp_path):
    """The pictures the records name, the sampled predictions first and the research ones
    (uncertainty) last, whatever the files' times (a copy changes them); without records
    naming pictures, the same priority by file name."""
    from evals.leaderboard import runs as runs_module
    d = tmp_path / "run"
    (d / "predictions").mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    names = ["uncertainty_000", "oracle_000", "sampled_000", "sampled_001"]
    for k, name in enumerate(names):  # the uncertainty picture written last: newest
        Image.fromarray(img).save(d / "predictions" / f"{name}.png")
        os.utime(d / "predictions" / f"{name}.png", (1000 + k, 1000 + (3 - k) * 10))
    records = [{"prediction": p, "step": 3, "extra": {"pngs": [f"predictions/{p}_000.png"]}}
               for p in ("uncertainty", "oracle", "sampled")]
    records[2]["extra"]["pngs"].append("predictions/sampled_001.png")
    want = [str(d / "predictions" / f"{n}.png") for n in
            ("sampled_000", "sampled_001", "oracle_000", "uncertainty_000")]
    assert runs_module._find_images(str(d), records) == want
    assert runs_module._find_images(str(d), []) == want  # by name when no record says


def _compare_row(run, tokens, sampled, bits, seconds):
    return {"run": run, "tokens": tokens, "metric": "PQ", "sampled": sampled,
            "teacher_forced": None, "oracle": 81.22, "code_bits": bits,
            "nll_per_image": 1013.1, "sample_s_per_image": seconds, "params_stage1": 234_832,
            "params_stage2": None, "num_images": 200, "data": "embedded"}


def test_token_kind_comparisons_are_shown_in_their_tasks_sections(runs_root, tmp_path):
    """evals.compare's compare.json under the root (or named by --compare) becomes a table
    in the task's section with the command's own cells; its folder is not a skipped one; a
    broken file is a warning naming it; a task with a comparison only gets a section."""
    cmp_dir = runs_root / "compare" / "depth_tiny_compared"
    cmp_dir.mkdir(parents=True)
    rows = [_compare_row("runs/compare/depth_tiny_continuous", "continuous (vit VAE + GIVT, ar)",
                         41.84, 16384.0, 0.0054),
            _compare_row("runs/compare/depth_tiny_vq", "discrete (VQ-VAE + VTT)", 29.5, 448.0,
                         0.0073)]
    (cmp_dir / "compare.json").write_text(json.dumps(
        {"task": "depth", "rows": rows, "batch": 8, "repeats": 3}))
    broken = runs_root / "compare" / "broken_compared"
    broken.mkdir()
    (broken / "compare.json").write_text(json.dumps({"rows": []}))  # no task
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "compare.json").write_text(json.dumps(
        {"task": "colorization", "rows": rows[:1], "batch": 4, "repeats": 5}))
    out = tmp_path / "report"
    assert L.main(["--root", str(runs_root), "--out", str(out),
                   "--compare", str(elsewhere)]) == 0
    md = (out / "leaderboard.md").read_text()
    depth = md.split("## depth")[1].split("\n## ")[0]
    assert "Token kinds compared" in depth and "batch 8, median of 3" in depth
    tables = _tables(md)
    header = tables["depth"][-3]
    assert header[:3] == ["run", "tokens", "metric"] and "code bits / image" in header
    cont, vq = tables["depth"][-2:]
    col = {c: i for i, c in enumerate(header)}
    assert cont[0] == "depth_tiny_continuous" and vq[0] == "depth_tiny_vq"
    assert cont[col["stage 2 samples"]] == "41.84" and vq[col["stage 2 samples"]] == "29.50"
    assert cont[col["code bits / image"]] == "16,384" and vq[col["code bits / image"]] == "448"
    assert cont[col["sampling s / image"]] == "0.0054"
    assert cont[col["params stage 1"]] == "234,832" and cont[col["teacher-forced"]] == "-"
    assert "colorization" in tables and tables["colorization"][1][0] == "depth_tiny_continuous"
    assert "batch 4, median of 5" in md
    assert "compare/depth_tiny_compared" not in md.split("## Skipped folders")[-1]
    assert re.search(r"unreadable comparison \S*broken_compared\S*compare\.json.*no key "
                     r"'task'", md)
    page = (out / "leaderboard.html").read_text()
    assert "Token kinds compared" in page and "<td>discrete (VQ-VAE + VTT)</td>" in page
