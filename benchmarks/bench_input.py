"""Input pipeline throughput: examples/s per CPU core of each task's training preprocessing,
at paper resolution, on real-size inputs, against the rate one GPU would consume.

What is timed, per task, is the whole per-example work of a training batch: decoding the
stored files (as TFDS does), then ``task.preprocess(cfg, ex, "train", seed)`` of the
``paper`` config (random crop, flip, resize to the model input, label encoding), in a
tf.data pipeline whose private thread pool has ``--cores`` threads (1 by default: the rate
of one core) and one intra-op thread:

* panoptic: the two COCO val2017 samples of ../shared/data/coco_panoptic_sample (640x480
  JPEG + panoptic PNG + segments), repeated; 512 px; the label encoding in graph ops
  (``encode_panoptic_tf``, now) and, in the same run, in ``tf.numpy_function`` with the
  NumPy reference (``tests/panoptic_reference.py``: ``NumpyEncodedPanoptic``, before).
  Without the sample: synthetic
  640x480 frames (smooth noise JPEG, 30 block segments).
* depth: NYU-size frames, 480x640 RGB PNG (a COCO photo resized: real texture, the PNG
  decode cost depends on it) + float16 depth as raw bytes (TFDS nyu_depth_v2's features);
  512 px.
* imagenet: 500x375 JPEGs (ImageNet's most common size; quality 90); 256 px.

The required rate: a training step's FLOPs per example at the ``paper`` preset (XLA's cost
analysis of the lowered step at batch 1, layers unrolled; ``bench_train_step.build_step``),
for stage 1 and stage 2 of the task. One GPU at ``--mfu`` of ``--peak-flops`` (H100 SXM
dense bf16: 989 TFLOP/s) consumes

    examples/s per GPU = mfu * peak / (training FLOPs per example)

and a host with ``--cores-per-gpu`` cores per GPU must preprocess, per core,

    examples/s per core = examples/s per GPU / cores per GPU.

Default 12 cores per GPU: an 8-GPU host with 96 physical cores (AWS p5.48xlarge: 192 vCPUs;
a DGX H100 has 112). The target is the larger of the two stages' rates.

Per-core figures are given two ways: examples per wall second with ``--cores`` threads,
divided by ``--cores``, and examples per CPU second of this process (the CPU cost of an
example: what bounds a host whose cores all preprocess, and far less disturbed by other
jobs on a shared machine than wall time). ``meets`` compares the latter with the target.
Medians over ``--repeats``. With ``--cores`` > 1 on a quiet machine the numpy-encoding
pipeline stops scaling: ``tf.numpy_function`` holds the Python GIL.

    python benchmarks/bench_input.py                           # all tasks
    python benchmarks/bench_input.py --tasks panoptic --examples 32 --repeats 3
    python benchmarks/bench_input.py --cores 4                 # 4 threads: the GIL shows
    python benchmarks/bench_input.py --flops panoptic.givt=2.2e12  # skip the cost analysis

Prints the tables and writes them with the machine to ``--json`` (default
``benchmarks/results/bench_input.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# this checkout's code, and its test helpers (the panoptic NumPy reference; tests/ is not
# installed)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import _machine  # noqa: E402

from uvim_givt import errors  # noqa: E402
from uvim_givt.errors import UserError  # noqa: E402

TASKS = ("panoptic", "depth", "imagenet")
#: task -> (config file, {stage: bench_train_step stage name})
TASK_STAGES = {
    "panoptic": ("configs/panoptic.py", {"vae": "vit_vae", "givt": "encdec"}),
    "depth": ("configs/depth.py", {"vae": "vit_vae", "givt": "encdec"}),
    "imagenet": ("configs/imagenet.py", {"vae": "cnn_vae", "givt": "givt_causal"}),
}
H100_BF16_DENSE = 989e12
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
COLUMNS = ("task", "variant", "cores", "examples_per_s", "per_core_wall", "per_cpu_s",
           "required_per_core", "meets")


# ------------------------------------------------------------------------ required rate
def training_flops_per_example(task: str, stages: Sequence[str]) -> dict[str, float]:
    """{stage: FLOPs of one training step per example} at the task's ``paper`` preset, for
    ``stages`` ("vae", "givt"); a stage whose step fails to lower is left out, with a
    warning (the target then comes from the other)."""
    import bench_train_step as bts  # benchmarks/, on sys.path above
    import jax
    import jax.numpy as jnp
    import ml_collections

    from uvim_givt import config as config_lib

    config_file, names = TASK_STAGES[task]
    out = {}
    for stage in stages:
        dense = config_file if task != "imagenet" else "configs/panoptic.py"
        try:
            cfg = bts._benchmark_safe(bts.load_stage_config(names[stage], "paper", dense))
            scans = bts._scan_keys(cfg, stage)
            if scans:  # XLA counts a scanned layer once: count the unrolled step
                cfg = config_lib.apply_overrides(ml_collections.ConfigDict(cfg.to_dict()),
                                                 [f"{k}=False" for k in scans])
            step, init, frozen = bts.build_step(cfg, stage)
            shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
            lowered = jax.jit(step).lower(*shapes, bts.synthetic_batch(cfg, 1),
                                          jnp.asarray(0, jnp.int32), frozen)
        except Exception as e:  # noqa: BLE001 - a model bug must not hide the other rates
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"warning: {task} {stage} ({names[stage]}): the paper step did not lower "
                  f"({type(e).__name__}: {first}); pass --flops {task}.{stage}=N",
                  file=sys.stderr)
            continue
        out[stage] = float(bts.cost_of(lowered).get("flops", 0.0))
    return out


def required_rates(flops: dict[str, float], mfu: float, peak: float, cores_per_gpu: float
                   ) -> dict[str, Any]:
    """Examples/s per GPU and per core each stage consumes; the target is the largest."""
    per_gpu = {s: mfu * peak / f for s, f in flops.items() if f > 0}
    per_core = {s: r / cores_per_gpu for s, r in per_gpu.items()}
    return {"flops_per_example": flops, "per_gpu": per_gpu, "per_core": per_core,
            "target_per_core": max(per_core.values()) if per_core else None}


# ------------------------------------------------------------------------------- inputs
def _coco_sample() -> list[dict[str, Any]] | None:
    """The two COCO samples as stored (encoded bytes) with their segments, or None."""
    root = SAMPLE / "sample_data"
    if not (root / "panoptic_examples.json").is_file():
        return None
    doc = json.loads((root / "panoptic_examples.json").read_text())
    label_of = {c["id"]: i for i, c in enumerate(doc["categories"])}
    out = []
    for ann in doc["annotations"]:
        stem = Path(ann["file_name"]).stem
        segs = ann["segments_info"]
        out.append({
            "jpeg": (root / "input_images" / f"{stem}.jpg").read_bytes(),
            "png": (root / "panoptic_examples" / ann["file_name"]).read_bytes(),
            "id": np.array([s["id"] for s in segs], np.int64),
            "label": np.array([label_of[s["category_id"]] for s in segs], np.int64),
            "is_crowd": np.array([bool(s["iscrowd"]) for s in segs])})
    return out


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB photo of that size: a COCO sample resized, else smooth noise."""
    path = SAMPLE / "sample_data" / "input_images" / "000000439180.jpg"
    if path.is_file():
        bgr = cv2.imread(str(path))
        return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)[..., ::-1]
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _encode(ext: str, rgb: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), list(params))
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {ext} picture")
    return buf.tobytes()


def _synthetic_panoptic(n: int = 2) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ids = rng.choice(np.arange(1, 31), (480 // 40, 640 // 40)) * 1000 + 7
        ids = np.kron(ids, np.ones((40, 40), np.int64))
        listed = np.unique(ids)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        out.append({"jpeg": _encode(".jpg", _photo(480, 640, i), cv2.IMWRITE_JPEG_QUALITY, 90),
                    "png": _encode(".png", rgb), "id": listed.astype(np.int64),
                    "label": rng.integers(0, 133, len(listed)).astype(np.int64),
                    "is_crowd": rng.random(len(listed)) < 0.1})
    return out


# ---------------------------------------------------------------------------- pipelines
def _stored_dataset(task: str) -> tuple[Any, str]:
    """(tf.data.Dataset of stored examples, cycled endlessly; what they are)."""
    import tensorflow as tf

    if task == "panoptic":
        examples = _coco_sample()
        what = "COCO val2017 samples (640x480 JPEG + PNG), repeated"
        if examples is None:
            examples, what = _synthetic_panoptic(), "synthetic 640x480 JPEG + PNG"
        gens = [tf.data.Dataset.from_tensors(
            {"jpeg": e["jpeg"], "png": e["png"],
             "panoptic_objects": {"id": e["id"], "label": e["label"],
                                  "is_crowd": e["is_crowd"]}}) for e in examples]
        ds = gens[0]
        for g in gens[1:]:
            ds = ds.concatenate(g)
        return ds.repeat(), what
    if task == "depth":
        rgb = _encode(".png", _photo(480, 640))
        yy, xx = np.mgrid[0:480, 0:640]
        depth = (1.0 + 4.0 * yy / 480 + np.sin(xx / 50.0)).astype(np.float16)
        depth[:10] = 0.0  # invalid rows, as NYU's borders
        return tf.data.Dataset.from_tensors({"png": rgb, "depth": depth.tobytes()}).repeat(), \
            "480x640 PNG frames (a COCO photo resized) + float16 depth bytes"
    jpeg = _encode(".jpg", _photo(375, 500), cv2.IMWRITE_JPEG_QUALITY, 90)
    return tf.data.Dataset.from_tensors({"jpeg": jpeg, "label": np.int64(3)}).repeat(), \
        "500x375 JPEGs (quality 90)"


def _decode(task: str) -> Callable[[dict], dict]:
    """Stored example -> what ``catalog.load`` yields (TFDS's decoding)."""
    import tensorflow as tf

    def panoptic(ex):
        return {"image": tf.io.decode_jpeg(ex["jpeg"], channels=3),
                "panoptic_image": tf.io.decode_png(ex["png"], channels=3),
                "panoptic_objects": ex["panoptic_objects"]}

    def depth(ex):
        d = tf.reshape(tf.io.decode_raw(ex["depth"], tf.float16), [480, 640])
        return {"image": tf.io.decode_png(ex["png"], channels=3), "depth": d}

    def imagenet(ex):
        return {"image": tf.io.decode_jpeg(ex["jpeg"], channels=3), "label": ex["label"]}

    return {"panoptic": panoptic, "depth": depth, "imagenet": imagenet}[task]


def _task(task: str) -> Any:
    import importlib
    return importlib.import_module(f"tasks.{task}").TASK


def pipeline(task: str, cores: int, numpy_encoding: bool = False) -> tuple[Any, str]:
    """(an endless dataset of preprocessed training examples on ``cores`` threads, what
    the inputs are)."""
    import tensorflow as tf

    from uvim_givt.config import load_config

    cfg = load_config(f"{TASK_STAGES[task][0]}:size=paper")
    if numpy_encoding:  # the panoptic labels encoded by the NumPy reference, as before
        from tests.panoptic_reference import NumpyEncodedPanoptic
        t = NumpyEncodedPanoptic()
    else:
        t = _task(task)
    decode = _decode(task)

    def prep(i, ex):
        return t.preprocess(cfg, decode(ex), "train", seed=tf.stack([tf.constant(0, tf.int64),
                                                                     i]))

    ds, what = _stored_dataset(task)
    ds = ds.enumerate().map(prep, num_parallel_calls=cores, deterministic=False)
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = cores
    opts.threading.max_intra_op_parallelism = 1
    opts.autotune.enabled = False  # exactly ``cores`` threads, no tuning in the timings
    return ds.prefetch(cores).with_options(opts), what


def measure(ds: Any, examples: int, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of ``examples`` elements of ``ds`` (after a warm-up)."""
    it = iter(ds)
    for _ in range(min(examples, 4)):  # traces and first-call costs
        next(it)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(examples):
            next(it)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
            "walls_s": wall, "cpus_s": cpu}


def encoding_only(repeats: int) -> list[dict[str, Any]]:
    """The panoptic label encoding alone at 512 px on the COCO samples: numpy reference
    against the graph ops, ms per example (wall and CPU, one intra-op thread)."""
    import tensorflow as tf

    from tasks import panoptic_encoding as E
    from tasks.panoptic_coco import categories_for
    from tests import panoptic_reference as R
    from uvim_givt.data.images import resize_nearest

    examples = _coco_sample() or _synthetic_panoptic()
    cats = categories_for("tfds:coco/2017_panoptic")
    isthing = np.array([c["isthing"] == 1 for c in cats])
    graph = {
        "published": tf.function(lambda i, o, lab, c: E.encode_panoptic_tf(i, o, lab, 100, 133)),
        "things": tf.function(lambda i, o, lab, c: E.encode_things_tf(i, o, lab, c, isthing,
                                                                      100)),
    }
    reference = {
        "published": lambda i, o, lab, c: R.encode_panoptic(i, o, lab, 100, 133),
        "things": lambda i, o, lab, c: R.encode_things(i, o, lab, c, isthing, 100),
    }
    rows = []
    for name in ("published", "things"):
        times: dict[str, list[float]] = {"numpy": [], "graph": [], "numpy_cpu": [],
                                         "graph_cpu": []}
        for e in examples:
            png = cv2.imdecode(np.frombuffer(e["png"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            ids = png[..., 0].astype(np.int32) + 256 * png[..., 1] + 65536 * png[..., 2]
            ids = resize_nearest(ids, (512, 512))
            args = (ids, e["id"], e["label"], e["is_crowd"])
            want = reference[name](*args)
            if not np.array_equal(graph[name](*args).numpy(), want):
                raise AssertionError(f"{name}: the graph encoding differs from numpy's")
            for kind, fn in (("numpy", lambda f=reference[name], a=args: f(*a)),
                             ("graph", lambda f=graph[name], a=args: f(*a).numpy())):
                for _ in range(repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(5):
                        fn()
                    times[kind].append((time.perf_counter() - t0) / 5)
                    times[kind + "_cpu"].append((time.process_time() - c0) / 5)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"encoding": name, "numpy_ms": med["numpy"], "graph_ms": med["graph"],
                     "speedup_wall": med["numpy"] / med["graph"],
                     "numpy_cpu_ms": med["numpy_cpu"], "graph_cpu_ms": med["graph_cpu"],
                     "speedup_cpu": med["numpy_cpu"] / med["graph_cpu"]})
    return rows


# ---------------------------------------------------------------------------------- CLI
def _flops_override(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    task, _, stage = key.partition(".")
    if not sep or task not in TASKS or stage not in ("vae", "givt"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected TASK.STAGE=FLOPS, TASK one of "
                                         f"{TASKS}, STAGE vae or givt")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--cores", type=errors.positive_int, default=1,
                   help="tf.data threads (1: the rate of one core)")
    p.add_argument("--examples", type=errors.positive_int, default=48,
                   help="examples per timed repeat")
    p.add_argument("--repeats", type=errors.positive_int, default=3)
    p.add_argument("--mfu", type=errors.positive_float, default=0.5)
    p.add_argument("--peak-flops", type=errors.positive_float, default=H100_BF16_DENSE,
                   help="the GPU's dense bf16 peak (H100 SXM: 989e12)")
    p.add_argument("--cores-per-gpu", type=errors.positive_float, default=12.0,
                   help="CPU cores per GPU on the host (8 GPUs, 96 cores: 12)")
    p.add_argument("--flops", type=_flops_override, action="append", default=[],
                   help="TASK.STAGE=FLOPS per example, instead of the cost analysis")
    p.add_argument("--no-before", action="store_true",
                   help="skip the numpy-encoding (before) panoptic pipeline")
    p.add_argument("--json", default=_machine.default_json_path(__file__))
    errors.add_verbose_argument(p)
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad or not args.tasks:
        raise UserError(f"--tasks {','.join(bad) or '(empty)'}: choose from {', '.join(TASKS)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    # One thread per op everywhere (the encoding-only timings too): CPU seconds then count
    # work, not a thread pool's spinning, and a pipeline thread is one core.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    overrides = dict(args.flops)
    required = {}
    for task in args.tasks:
        flops = {s: overrides[f"{task}.{s}"] for s in TASK_STAGES[task][1]
                 if f"{task}.{s}" in overrides}
        missing = [s for s in TASK_STAGES[task][1] if s not in flops]
        if missing:
            t0 = time.perf_counter()
            flops.update(training_flops_per_example(task, missing))
            print(f"{task}: cost analysis of the paper steps in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        required[task] = required_rates(flops, args.mfu, args.peak_flops, args.cores_per_gpu)
    print(f"\nrequired rate = mfu * peak / (training FLOPs per example) / cores per GPU; "
          f"mfu {args.mfu:g}, peak {args.peak_flops:.4g} FLOP/s, {args.cores_per_gpu:g} cores "
          "per GPU")
    req_rows = [{"task": t, "stage": s, "train_flops_per_example": r["flops_per_example"][s],
                 "examples_per_s_per_gpu": r["per_gpu"][s],
                 "examples_per_s_per_core": r["per_core"][s]}
                for t, r in required.items() for s in r["per_gpu"]]
    _machine.print_table(req_rows)

    rows = []
    inputs = {}
    for task in args.tasks:
        variants = [("graph encoding" if task == "panoptic" else "", False)]
        if task == "panoptic" and not args.no_before:
            variants.append(("numpy encoding (before)", True))
        for name, numpy_encoding in variants:
            ds, inputs[task] = pipeline(task, args.cores, numpy_encoding)
            m = measure(ds, args.examples, args.repeats)
            target = required[task]["target_per_core"]
            per_core = args.examples / m["wall_s"] / args.cores
            per_cpu = args.examples / m["cpu_s"]
            rows.append({"task": task, "variant": name, "cores": args.cores,
                         "examples_per_s": args.examples / m["wall_s"],
                         "per_core_wall": per_core, "per_cpu_s": per_cpu,
                         "required_per_core": target,
                         "meets": None if target is None else bool(per_cpu >= target),
                         "examples": args.examples, **m})
            print(f"  {task} {name}: {per_core:.1f} examples/s per core (wall), "
                  f"{per_cpu:.1f} per CPU second", flush=True)
    print(f"\ntraining preprocessing at paper resolution, {args.cores} tf.data thread(s), "
          f"median of {args.repeats} x {args.examples} examples")
    _machine.print_table(rows, COLUMNS)
    for task, what in inputs.items():
        print(f"  {task}: {what}")

    enc_rows = []
    if "panoptic" in args.tasks:
        enc_rows = encoding_only(args.repeats)
        print("\npanoptic label encoding alone, 512 px, ms per example (numpy = before, "
              "graph = now)")
        _machine.print_table(enc_rows)
    path = _machine.write_json(args.json, {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "verbose")},
        "inputs": inputs, "required": required, "required_rows": req_rows, "rows": rows,
        "encoding": enc_rows}, machine)
    print(f"\nwrote {path}")
    return {"rows": rows, "required": required, "encoding": enc_rows}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return errors.run_command(lambda: run(args) and 0, getattr(args, "verbose", False))


if __name__ == "__main__":
    sys.exit(main())
