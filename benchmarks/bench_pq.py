"""Panoptic quality: panopticapi's ``pq_compute`` against ``evals.pq.panoptic_quality``.

Generates COCO-like ground truth / prediction pairs (default 200 of 480x640, 10-30 segments,
COCO's 133 categories, stuff + things, some crowd, VOID bands) in a folder: ground-truth PNGs
written the way COCO's were (PIL), predictions the way this project writes them (OpenCV).
Then, in one run, alternating so that both see the same machine load:

- wall time of both evaluators on the same files (panopticapi with its process per core; ours
  with its default workers and with one), median of ``--repeats``; results checked equal to
  panopticapi's within 1e-9 (All/Things/Stuff and every class) on every repeat;
- CPU time of one core's work (panopticapi's per-image loop against ours with one worker),
  which other jobs on a shared machine distort far less than wall time;
- where each evaluator's time goes (``stages``): per image, the CPU time of each step on its
  own, median over the images.

Prints the tables and writes them with the machine to ``--json`` (default
``benchmarks/results/bench_pq.json``).

    python benchmarks/bench_pq.py [--num-images 200] [--repeats 5] [--data DIR] [--quick]
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from panopticapi.evaluation import pq_compute, pq_compute_single_core
    from panopticapi.utils import rgb2id
except ImportError:  # it pins numpy<2, so it is not a dependency of the suite
    sys.exit("bench_pq.py compares with the official panopticapi, which needs numpy<2: run it "
             "in an environment of its own: python3.11 -m venv .venv-pq && .venv-pq/bin/pip "
             "install -r tests/requirements-panopticapi.txt && .venv-pq/bin/pip install "
             "--no-deps -e . && .venv-pq/bin/python benchmarks/bench_pq.py")
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from evals import _pq_synth as synth  # noqa: E402
from evals import panoptic_io, pq  # noqa: E402
from uvim_givt import errors  # noqa: E402

COCO_CATEGORIES = (
    Path(__file__).resolve().parents[2]
    / "shared/data/coco_panoptic_sample/panoptic_coco_categories.json"
)
# The libraries either evaluator's speed depends on.
PACKAGES = ("numpy", "opencv-python-headless", "pillow", "pyspng", "deflate", "panopticapi-lite")


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
    """Writes root/{gt,pred}.json and root/{gt,pred}/*.png, unless a previous call with the same
    arguments already did (``--data`` reuses them: generating is slower than evaluating)."""
    stamp = {"num_images": num_images, "height": height, "width": width, "seed": seed}
    stamp_file = os.path.join(root, "bench_pq_data.json")
    if os.path.isfile(stamp_file):
        with open(stamp_file) as f:
            previous = json.load(f)
        if previous["args"] == stamp:
            return previous["info"]
    categories, source = _categories()
    for sub in ("gt", "pred"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    jobs = [(seed, i + 1, height, width, root, categories) for i in range(num_images)]
    with multiprocessing.get_context("fork").Pool() as pool:
        pairs = pool.map(_make_image, jobs, chunksize=4)
    gt_anns, pred_anns = zip(*pairs, strict=True)
    synth.write_json(os.path.join(root, "gt.json"), gt_anns, categories)
    synth.write_json(os.path.join(root, "pred.json"), pred_anns, categories)
    segs = [len(a["segments_info"]) for a in gt_anns]
    info = {
        "categories": source,
        "gt_segments_min": min(segs),
        "gt_segments_max": max(segs),
        "gt_segments_mean": float(np.mean(segs)),
        "crowd": sum(s["iscrowd"] for a in gt_anns for s in a["segments_info"]),
    }
    with open(stamp_file, "w") as f:
        json.dump({"args": stamp, "info": info}, f)
    return info


def max_diff(ref: dict[str, Any], ours: dict[str, Any]) -> float:
    """Largest |difference| of PQ/SQ/RQ over All/Things/Stuff and every class; the class
    counts must match exactly."""
    diff = 0.0
    for group in ("All", "Things", "Stuff"):
        if ref[group]["n"] != ours[group]["n"]:
            raise AssertionError(f"{group}: n {ours[group]['n']} != panopticapi's {ref[group]}")
        diff = max(diff, *(abs(ref[group][k] - ours[group][k]) for k in ("pq", "sq", "rq")))
    if set(ref["per_class"]) != set(ours["per_class"]):
        raise AssertionError("the classes differ from panopticapi's")
    for cid, r in ref["per_class"].items():
        diff = max(diff, *(abs(r[k] - ours["per_class"][cid][k]) for k in ("pq", "sq", "rq")))
    return diff


def _cpu_median(fn: Callable[[int], Any], count: int) -> float:
    """Median over images of the CPU seconds of ``fn(image index)``."""
    times = []
    for i in range(count):
        t = time.process_time()
        fn(i)
        times.append(time.process_time() - t)
    return statistics.median(times)


def stages(root: str, count: int) -> list[dict[str, Any]]:
    """Where the time goes, per image (median CPU ms over ``count`` images, each step alone)."""
    with open(os.path.join(root, "gt.json")) as f:
        gt_doc = json.load(f)
    with open(os.path.join(root, "pred.json")) as f:
        pred_doc = json.load(f)
    anns = list(zip(gt_doc["annotations"], pred_doc["annotations"], strict=True))[:count]
    cat_index = {c["id"]: i for i, c in enumerate(gt_doc["categories"])}
    gt_png = [os.path.join(root, "gt", g["file_name"]) for g, _ in anns]
    pred_png = [os.path.join(root, "pred", p["file_name"]) for _, p in anns]
    gt_runs = [panoptic_io.read_id_runs(p) for p in gt_png]
    pred_runs = [panoptic_io.read_id_runs(p) for p in pred_png]
    gt_ids = [r.dense() for r in gt_runs]
    pred_ids = [r.dense() for r in pred_runs]

    def joint_unique(i: int) -> Any:
        key = gt_ids[i].astype(np.uint64) * panoptic_io.OFFSET + pred_ids[i].astype(np.uint64)
        return np.unique(key, return_counts=True)

    steps: list[tuple[str, str, Callable[[int], Any]]] = [
        ("panopticapi", "decode gt PNG (PIL) + rgb2id",
         lambda i: rgb2id(np.array(Image.open(gt_png[i]), dtype=np.uint32))),
        ("panopticapi", "decode pred PNG (PIL) + rgb2id",
         lambda i: rgb2id(np.array(Image.open(pred_png[i]), dtype=np.uint32))),
        ("panopticapi", "np.unique of the pred map",
         lambda i: np.unique(pred_ids[i], return_counts=True)),
        ("panopticapi", "np.unique of gt * 2^24 + pred", joint_unique),
        ("ours", "read gt PNG as runs (libspng)", lambda i: panoptic_io.read_id_runs(gt_png[i])),
        ("ours", "read pred PNG as runs (libdeflate, sparse Sub)",
         lambda i: panoptic_io.read_id_runs(pred_png[i])),
        ("ours", "joint runs + intersections + matching",
         lambda i: pq._image_stats(gt_runs[i], anns[i][0]["segments_info"], pred_runs[i],
                                   anns[i][1]["segments_info"], cat_index, pq._Names(str(i)))),
    ]  # fmt: skip
    return [
        {"evaluator": who, "step": what, "cpu_ms_per_image": 1000 * _cpu_median(fn, len(anns))}
        for who, what, fn in steps
    ]


def measure(args: Any, root: str) -> dict[str, Any]:
    """The timed comparison on the files in ``root``."""
    gt_json, gt_dir, pred_json, pred_dir = (
        os.path.join(root, x) for x in ("gt.json", "gt", "pred.json", "pred")
    )
    with open(gt_json) as f:
        gt_doc = json.load(f)
    with open(pred_json) as f:
        pairs = list(zip(gt_doc["annotations"], json.load(f)["annotations"], strict=True))
    cats = {c["id"]: c for c in gt_doc["categories"]}
    ours_workers = args.workers or pq._default_workers()

    times: dict[str, list[float]] = {k: [] for k in ("ref", "ours", "one", "ref_cpu", "one_cpu")}
    diff = 0.0
    for _ in range(args.repeats):
        # Alternate, so that both see the same machine load.
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # pq_compute prints progress
            ref = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
        times["ref"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ours = pq.panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=args.workers)
        times["ours"].append(time.perf_counter() - t)
        t = time.perf_counter()
        one = pq.panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=1)
        times["one"].append(time.perf_counter() - t)
        diff = max(diff, max_diff(ref, ours), max_diff(ref, one))
        if diff > 1e-9:
            raise AssertionError(f"results differ from panopticapi's by {diff}")
        # CPU time of one core's work, which other jobs on the machine barely change.
        t = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            pq_compute_single_core(0, pairs, gt_dir, pred_dir, cats)
        times["ref_cpu"].append(time.process_time() - t)
        t = time.process_time()
        pq.panoptic_quality(gt_json, gt_dir, pred_json, pred_dir, workers=1)
        times["one_cpu"].append(time.process_time() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(pairs)
    pool = "processes" if pq._can_fork() else "threads"
    rows = [
        {"evaluator": "panopticapi pq_compute",
         "workers": f"{multiprocessing.cpu_count()} processes",
         "median_s": med["ref"], "ms_per_image": 1000 * med["ref"] / n, "speedup": 1.0},
        {"evaluator": "ours panoptic_quality", "workers": f"{ours_workers} {pool}",
         "median_s": med["ours"], "ms_per_image": 1000 * med["ours"] / n,
         "speedup": med["ref"] / med["ours"]},
        {"evaluator": "ours panoptic_quality", "workers": "1",
         "median_s": med["one"], "ms_per_image": 1000 * med["one"] / n,
         "speedup": med["ref"] / med["one"]},
    ]  # fmt: skip
    cpu_rows = [
        {"evaluator": "panopticapi pq_compute_single_core",
         "cpu_ms_per_image": 1000 * med["ref_cpu"] / n, "speedup": 1.0},
        {"evaluator": "ours panoptic_quality(workers=1)",
         "cpu_ms_per_image": 1000 * med["one_cpu"] / n,
         "speedup": med["ref_cpu"] / med["one_cpu"]},
    ]  # fmt: skip
    return {
        "wall": rows,
        "cpu_one_core": cpu_rows,
        "times_s": times,
        "max_abs_diff": diff,
        "pq_all": ours["All"],
        "load_average": os.getloadavg()[0],
    }


def parse_args(argv: Sequence[str] | None) -> Any:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=errors.positive_int, default=200)
    p.add_argument("--repeats", type=errors.positive_int, default=5)
    p.add_argument("--workers", type=errors.positive_int, default=None,
                   help="ours (default: usable CPUs, at most 8)")  # fmt: skip
    p.add_argument("--height", type=errors.positive_int, default=480)
    p.add_argument("--width", type=errors.positive_int, default=640)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="folder to generate the data into, or reuse it from"
                   " (default: a temporary folder)")  # fmt: skip
    p.add_argument("--stage-images", type=errors.positive_int, default=40,
                   help="images the per-step breakdown is measured on")  # fmt: skip
    p.add_argument("--json", "--out", dest="json", default=_machine.default_json_path(__file__),
                   help="where to write the tables (default benchmarks/results/bench_pq.json)")
    p.add_argument("--quick", action="store_true",
                   help="8 images of 96x128, one repeat: checks that the script works")
    args = p.parse_args(argv)
    if args.quick:
        args.num_images, args.height, args.width, args.repeats = 8, 96, 128, 1
        args.stage_images = min(args.stage_images, 8)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return errors.run_command(lambda: run(args))


def run(args: Any) -> int:
    with contextlib.ExitStack() as stack:
        root = args.data or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_pq_"))
        t0 = time.perf_counter()
        info = generate(root, args.num_images, args.height, args.width, args.seed)
        print(
            f"data: {args.num_images} pairs of {args.height}x{args.width}, categories:"
            f" {info['categories']}, gt segments/image {info['gt_segments_min']}-"
            f"{info['gt_segments_max']} (mean {info['gt_segments_mean']:.1f}),"
            f" {info['crowd']} crowd; ready in {time.perf_counter() - t0:.1f} s"
        )
        result = measure(args, root)
        breakdown = stages(root, min(args.stage_images, args.num_images))
    # The machine last: describing it imports JAX, whose threads would make the PQ evaluator
    # fall back from forked workers to threads.
    machine = _machine.describe_machine()
    machine["versions"].update({p: _version(p) for p in PACKAGES})
    print(_machine.machine_line(machine))
    print(f"load average {result['load_average']:.1f}; results equal panopticapi's (max |diff|"
          f" {result['max_abs_diff']:.1e}); PQ {100 * result['pq_all']['pq']:.2f}")
    _machine.print_table(result["wall"], title=f"\nwall time, median of {args.repeats}:")
    _machine.print_table(result["cpu_one_core"], title="\nCPU time of one core's work:")
    _machine.print_table(breakdown, title="\nwhere the time goes (CPU ms per image, median):")
    table = {"args": vars(args), "data": info, **result, "stages": breakdown}
    print("\nwrote", _machine.write_json(args.json, table, machine))
    return 0


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
