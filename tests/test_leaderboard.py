"""Leaderboard over fake run directories: tables, published rows, self-contained HTML."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from evals import leaderboard as L
from uvim_givt.rundir import write_eval_record


def _make_run(root, name, task, stage, size, evals, losses, num_params=None, png=False,
              extra_files=None):
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
        write_eval_record(str(d), {"task": task, "stage": stage, "split": "validation",
                                   "data": "embedded", "step": step, "metrics": metrics})
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
    assert header[7:] == ["RMSE", "AbsRel", "delta1"]
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
    assert {r[col["RMSE"]] for r in published} == {"0.195", "0.474", "0.467"}
    gen = tables["imagenet"]
    assert gen[1][0] == "gen/digits" and "12.5" in gen[1] and "0.97" in gen[1]
    assert {r[gen[0].index("FID")] for r in gen[2:]} == {"3.35", "4.53", "4.86"}
    pan = tables["panoptic"]
    assert {r[pan[0].index("PQ")] for r in pan[1:]} == {"71.0", "40.2", "45.8"}
    assert "No evaluated runs yet" in md
    # the truncated metrics.jsonl line is reported, not silently dropped
    assert "1 unreadable line(s)" in md
    # plots and thumbnails the markdown links to exist
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    assert (out / "plots" / "depth.png").is_file()
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
    assert page.count('class="published"') == 9 and L.PUBLISHED_LABEL in page
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
    assert "config.json" in printed.err and "without eval records: bad" in printed.err
    assert L.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_formatting_helpers():
    assert L.format_count(1_500) == "1.5k" and L.format_count(2_000_000_000) == "2B"
    assert L.format_duration(3725) == "1h02m" and L.format_duration(65) == "1m05s"
    assert L.format_metric(71.0) == "71.0" and L.format_metric(0.12345) == "0.1235"
    assert L.format_metric(None) == ""
