"""Panoptic quality: panopticapi's ``pq_compute`` against ``evals.pq.panoptic_quality``.

Generates COCO-like ground truth / prediction pairs (480x640, 10-30 segments, stuff + things,
some crowd, VOID bands) in a temporary folder: ground-truth PNGs written the way COCO's were
(PIL), predictions the way this project writes them (OpenCV). Then times both evaluators on the
same files (alternating, several repeats; medians), checks that they agree to 1e-9, and prints
the times and the speed-up, plus the CPU time of one core's work (panopticapi's per-image loop
against ours with one worker), which other jobs on a shared machine distort far less.

    python benchmarks/bench_pq.py [--num-images 200] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from panopticapi.evaluation import pq_compute, pq_compute_single_core

from evals import _pq_synth as synth
from evals.pq import panoptic_quality

COCO_CATEGORIES = (
    Path(__file__).resolve().parents[2]
    / "shared/data/coco_panoptic_sample/panoptic_coco_categories.json"
)


def _categories() -> tuple[list[dict[str, Any]], str]:
    if COCO_CATEGORIES.is_file():
        return json.loads(COCO_CATEGORIES.read_text()), "COCO's 133"
    return synth.synthetic_categories(), "133 synthetic (80 things, 53 stuff)"


def _make_image(job: tuple[int, int, int, int, str, list[dict[str, Any]]]) -> tuple[dict, dict]:
    """Generates and writes one pair; returns the two annotations."""
    seed, image_id, height, width, root, categories = job
    rng = np.random.default_rng([seed, image_id])
    gt, gt_segments = synth.make_ground_truth(rng, categories, height, width)
    pred, pred_segments = synth.perturb_prediction(rng, gt, gt_segments, categories)
    gt_ann = synth.annotation(image_id, gt_segments)
    pred_ann = synth.annotation(image_id, pred_segments)
    synth.save_png(os.path.join(root, "gt", gt_ann["file_name"]), gt, writer="pil")
    synth.save_png(os.path.join(root, "pred", pred_ann["file_name"]), pred, writer="cv2")
    return gt_ann, pred_ann


def generate(root: str, num_images: int, height: int, width: int, seed: int) -> dict[str, Any]:
    categories, source = _categories()
    for sub in ("gt", "pred"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    jobs = [(seed, i + 1, height, width, root, categories) for i in range(num_images)]
    with multiprocessing.Pool() as pool:
        pairs = pool.map(_make_image, jobs, chunksize=4)
    gt_anns, pred_anns = zip(*pairs, strict=True)
    synth.write_json(os.path.join(root, "gt.json"), gt_anns, categories)
    synth.write_json(os.path.join(root, "pred.json"), pred_anns, categories)
    segs = [len(a["segments_info"]) for a in gt_anns]
    crowd = sum(s["iscrowd"] for a in gt_anns for s in a["segments_info"])
    return {"categories": source, "segments": segs, "crowd": crowd}


def _max_diff(ref: dict[str, Any], ours: dict[str, Any]) -> float:
    diff = 0.0
    for group in ("All", "Things", "Stuff"):
        assert ref[group]["n"] == ours[group]["n"], (group, ref[group], ours[group])
        diff = max(diff, *(abs(ref[group][k] - ours[group][k]) for k in ("pq", "sq", "rq")))
    assert set(ref["per_class"]) == set(ours["per_class"])
    for cid, r in ref["per_class"].items():
        diff = max(diff, *(abs(r[k] - ours["per_class"][cid][k]) for k in ("pq", "sq", "rq")))
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="ours (default: CPUs, at most 8)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_pq_") as root:
        t0 = time.perf_counter()
        info = generate(root, args.num_images, args.height, args.width, args.seed)
        segs = info["segments"]
        print(
            f"data: {args.num_images} pairs of {args.height}x{args.width}, categories:"
            f" {info['categories']}, gt segments/image {min(segs)}-{max(segs)} (mean"
            f" {np.mean(segs):.1f}), {info['crowd']} crowd; generated in"
            f" {time.perf_counter() - t0:.1f} s"
        )
        files = [os.path.join(root, x) for x in ("gt.json", "gt", "pred.json", "pred")]
        gt_json, gt_dir, pred_json, pred_dir = files

        with open(gt_json) as f:
            gt_doc = json.load(f)
        with open(pred_json) as f:
            pairs = list(zip(gt_doc["annotations"], json.load(f)["annotations"], strict=True))
        cats = {c["id"]: c for c in gt_doc["categories"]}

        ref_times, our_times, one_times, ref_cpu, one_cpu = [], [], [], [], []
        for _ in range(args.repeats):
            # Alternate, so that both see the same machine load.
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # pq_compute prints progress
                ref = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
            ref_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=args.workers)
            our_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            one = panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=1)
            one_times.append(time.perf_counter() - t)
            diff = max(_max_diff(ref, ours), _max_diff(ref, one))
            assert diff <= 1e-9, f"results differ from panopticapi by {diff}"
            # CPU time of one core's work, which other jobs on the machine barely change.
            t = time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                pq_compute_single_core(0, pairs, gt_dir, pred_dir, cats)
            ref_cpu.append(time.process_time() - t)
            t = time.process_time()
            panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=1)
            one_cpu.append(time.process_time() - t)

    ref_t, our_t, one_t = (statistics.median(x) for x in (ref_times, our_times, one_times))
    n = args.num_images
    workers = args.workers or "default"
    print(f"results equal panopticapi's (max |diff| {diff:.1e} over All/Things/Stuff/per-class)")
    print(
        f"PQ {100 * ours['All']['pq']:.2f}  SQ {100 * ours['All']['sq']:.2f}"
        f"  RQ {100 * ours['All']['rq']:.2f}  (n={ours['All']['n']})"
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':32s}{'median s':>10s}{'ms/image':>10s}")
    print(f"{'panopticapi pq_compute':32s}{ref_t:10.3f}{1000 * ref_t / n:10.2f}")
    print(f"{f'ours (workers={workers})':32s}{our_t:10.3f}{1000 * our_t / n:10.2f}")
    print(f"{'ours (workers=1)':32s}{one_t:10.3f}{1000 * one_t / n:10.2f}")
    print(f"speed-up: {ref_t / our_t:.1f}x (workers={workers}), {ref_t / one_t:.1f}x (workers=1)")
    ref_c, one_c = statistics.median(ref_cpu), statistics.median(one_cpu)
    print(
        f"CPU time on one core: panopticapi {1000 * ref_c / n:.2f} ms/image, ours"
        f" {1000 * one_c / n:.2f} ms/image: {ref_c / one_c:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
