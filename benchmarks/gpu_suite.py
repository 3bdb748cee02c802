"""The accelerator part of the benchmark suite: one command that fits one 10-minute call.

1. The UViM train steps of both stages: stage 2 (``encdec``: the dense task's
   encoder-decoder GIVT: ViT image encoder, causal decoder, GMM head, the frozen stage-1 ViT
   VAE encoder inside the step) and stage 1 (``vit_vae``: the ViT VAE over label maps, its
   layers scanned with remat at paper size as published, unrolled at base) in four
   variants, the bf16 ones first:

   * ``bf16_fused``: ``dtype=bfloat16``, ``jax.nn.dot_product_attention`` (cuDNN's fused
     kernel where XLA picks it);
   * ``bf16_fused_scan`` (stage 2 only): the same with stage 2's layers scanned (the
     preset unrolls them, as published);
   * ``bf16``: ``dtype=bfloat16``, the reference (einsum + softmax) attention;
   * ``fp32``: ``dtype=float32``, the reference attention;

   each at the ``base`` size, then at ``paper`` size (stage 2: ViT-L/16 encoder at 512 px,
   24 decoder layers; stage 1: width 768, 6 encoder and 12 decoder layers, 16 px patches of
   512 px maps). Step time, examples/s, model FLOPs per step (counted from the step's
   jaxpr, ``benchmarks/flops.py``: the same whatever XLA's autotuning picks), MFU against
   the device's nominal bf16 peak (``NOMINAL_BF16_PEAK``) and against a bf16 matmul
   measured in the same run, compile time.
2. Autoregressive sampling of the paper model (256 codes), beam 4 and fan 8, image encoder
   included: codes/s and images/s.

Order: the first variant's rows (base before paper), then the sampling row, then the other
variants' rows, so that a call cut short has measured the headline figures first.
Each row runs in a process of its own under ``--row-limit`` seconds (a compile that takes
too long costs one row, not the call; device memory is returned between rows), rows are
printed and the JSON rewritten as each finishes (a call cut short keeps what it measured),
and rows stop being started when ``--budget`` seconds are spent. Compiled programs go to a
persistent cache (``--cache-dir``), so a second call compiles nothing it compiled before
(``benchmarks/bench_compile_cache.py`` prints both compile times).

On the device machine::

    python benchmarks/gpu_suite.py --json $OUT/gpu_suite.json

``--smoke`` runs the same code on the tiny preset at batch 2 (a CPU does it in about 90
s). JSON: ``{"machine", "peak": {measured_bf16, measured_fp32,
nominal_bf16_flops_per_s}, "settings", "train": [bench_train_step rows + variant,
mfu_nominal, mfu_measured], "sampling": [bench_sampling rows + codes_per_s]}``; a row that
did not finish has ``skipped`` (why) instead of figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import bench_sampling  # noqa: E402
import bench_train_step  # noqa: E402

from uvim_givt import config as config_lib  # noqa: E402
from uvim_givt import errors  # noqa: E402

#: dense bf16 tensor-core peak (FLOP/s, no sparsity) by jax device_kind, from the vendors'
#: data sheets (SXM parts); a kind not listed is reported against the measured peak only
NOMINAL_BF16_PEAK = {
    "NVIDIA H200": 989.4e12,
    "NVIDIA H100 80GB HBM3": 989.4e12,
    "NVIDIA H100": 989.4e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}
#: variant -> overrides of both models (stage-2 GIVT and the frozen stage-1 VAE; a dotted
#: key, of that model alone), bf16 first. bf16_fused_scan: the UViM stage 2 with its layers
#: scanned (published: unrolled; the published trees load either way). On a CPU its paper
#: step compiled in 12.6 s against 52.7 s unrolled (benchmarks/README.md).
VARIANTS: dict[str, tuple[str, ...]] = {
    "bf16_fused": ("dtype=bfloat16", "attention=fused"),
    "bf16_fused_scan": ("dtype=bfloat16", "attention=fused", "givt.model.scan=True"),
    "bf16": ("dtype=bfloat16", "attention=reference"),
    "fp32": ("dtype=float32", "attention=reference"),
}
#: variants measured on some train steps only (bf16_fused_scan changes stage 2's model
#: alone: its vit_vae rows would repeat bf16_fused's)
VARIANT_STAGES = {"bf16_fused_scan": ("encdec",)}
SAMPLING_MODE = "uvim_beam4_fan8"  # bench_sampling's mode: paper beam 4, fan-out 8
#: the train steps measured (bench_train_step's stage names -> what they are), in order
TRAIN_STAGES = {"encdec": "stage 2 encdec", "vit_vae": "stage 1 vit_vae"}
TRAIN_COLUMNS = ("variant", "stage", "size", "batch", "step_s", "examples_per_s", "flops_per_step",
                 "achieved_flops_per_s", "mfu_nominal", "mfu_measured", "compile_s")
SAMPLING_COLUMNS = ("mode", "size", "batch", "seq_len", "sample_s", "codes_per_s",
                    "images_per_s", "compile_s")


def nominal_peak(device_kind: str) -> float | None:
    """The listed bf16 peak of a device kind (exact name, else the longest listed prefix)."""
    if device_kind in NOMINAL_BF16_PEAK:
        return NOMINAL_BF16_PEAK[device_kind]
    prefixes = [k for k in NOMINAL_BF16_PEAK if device_kind.startswith(k)]
    return NOMINAL_BF16_PEAK[max(prefixes, key=len)] if prefixes else None


def variant_overrides(cfg: Any, variant: str) -> tuple[list[str], list[str]]:
    """(overrides of ``variant`` that the config has, keys it lacks)."""
    have, missing = [], []
    keys = set(config_lib.all_keys(cfg))
    for item in VARIANTS[variant]:
        name = item.split("=")[0]
        # a dotted key is that key's alone; a bare one is both models'
        both = [f"{model}.{name}" for model in ("givt.model", "vae.model")]
        for key in [name] if "." in name else both:
            if key in keys:
                have.append(f"{key}={item.split('=', 1)[1]}")
            else:
                missing.append(key)
    return have, missing


def plan_rows(variants: Sequence[str], sizes: Sequence[str],
              stages: Sequence[str] = tuple(TRAIN_STAGES), sampling: bool = True
              ) -> list[tuple[str, ...]]:
    """The rows in the order they run: ("train", variant, size, stage) and ("sampling",).

    bf16 variants before fp32 (in the given order otherwise); the first of them (the
    headline) runs every size, smallest first, and every stage, then the sampling row, then
    the other variants likewise (on their :data:`VARIANT_STAGES` only)."""
    ordered = ([v for v in variants if v.startswith("bf16")]
               + [v for v in variants if not v.startswith("bf16")])
    rows: list[tuple[str, ...]] = []
    for i, variant in enumerate(ordered):
        own = VARIANT_STAGES.get(variant, stages)
        rows += [("train", variant, size, stage) for size in sizes for stage in stages
                 if stage in own]
        if i == 0 and sampling:
            rows.append(("sampling",))
    return rows


def use_compile_cache(cache_dir: str) -> None:
    """JAX's persistent compilation cache in ``cache_dir``, for every program (the default
    thresholds skip small or fast compiles, which are most of a smoke run)."""
    import jax

    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _width(column: str) -> int:
    """A column's width: its name's, a number's (10) or its longest name (variant, mode)."""
    names = {"variant": VARIANTS, "mode": (SAMPLING_MODE,)}.get(column, ())
    return max(len(column), 10, *map(len, names))


def _header(columns: Sequence[str]) -> str:
    return "  ".join(f"{c:>{_width(c)}}" for c in columns)


def _line(row: dict[str, Any], columns: Sequence[str]) -> str:
    """One row under :func:`_header` (rows are printed as they finish, so the widths are
    fixed in advance), or what stopped it."""
    if row.get("skipped"):
        name = " ".join(str(row[k]) for k in ("variant", "mode", "stage", "size") if k in row)
        return f"{name}: skipped ({row['skipped']})"
    return "  ".join(f"{_machine._cell(row.get(c)):>{_width(c)}}" for c in columns)


# ------------------------------------------------------------------------------ one row
def measure_train(variant: str, size: str, batch: int, repeats: int, dense_config: str,
                  extra: Sequence[str], measured_peak: float | None,
                  nominal: float | None, stage: str = "encdec", matmuls: bool = False
                  ) -> dict[str, Any]:
    """One train-step row, in this process."""
    cfg = bench_train_step.load_stage_config(stage, size, dense_config)
    overrides, missing = variant_overrides(cfg, variant)
    if missing:
        return {"variant": variant, "stage": stage, "size": size,
                "skipped": f"config lacks {missing}"}
    overrides += list(extra)
    config_lib.apply_overrides(cfg, overrides)
    row = bench_train_step.measure(stage, size, cfg, batch, repeats, overrides,
                                   matmuls=matmuls)
    row["variant"] = variant
    flops_s = row["achieved_flops_per_s"]
    row["mfu_nominal"] = flops_s / nominal if flops_s and nominal else None
    row["mfu_measured"] = flops_s / measured_peak if flops_s and measured_peak else None
    return row


def measure_sampling(size: str, batch: int, repeats: int, dense_config: str,
                     extra: Sequence[str]) -> dict[str, Any]:
    """The beam-4 fan-8 sampling row, in this process."""
    cfg = bench_sampling.load_mode_config(SAMPLING_MODE, size, dense_config)
    config_lib.apply_overrides(cfg, extra)
    row = bench_sampling.measure(SAMPLING_MODE, size, cfg, batch, repeats, extra)
    row["codes_per_s"] = row["tokens_per_s"]
    return row


def _run_child(job: dict[str, Any], limit: float, cache_dir: str) -> dict[str, Any]:
    """``job`` measured in a fresh process within ``limit`` seconds (its row, or why not)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "row.json")
        with open(spec, "w") as f:
            json.dump(job, f)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, out,
               "--cache-dir", cache_dir]
        try:
            proc = subprocess.run(cmd, timeout=limit, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        except subprocess.TimeoutExpired:
            return {"skipped": f"over the {limit:g} s row limit (--row-limit)"}
        if proc.returncode != 0 or not os.path.exists(out):
            tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
            return {"skipped": f"failed (exit {proc.returncode}): {tail}"}
        with open(out) as f:
            return json.load(f)


def child_main(spec: str, out: str) -> int:
    with open(spec) as f:
        job = json.load(f)
    kind = job.pop("kind")
    row = measure_train(**job) if kind == "train" else measure_sampling(**job)
    with open(out, "w") as f:
        json.dump(row, f, default=_machine._json_default)
    return 0


# ---------------------------------------------------------------------------------- CLI
def default_cache_dir() -> str:
    base = os.environ.get("UVIM_GIVT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "uvim_givt")
    return os.path.join(base, "jax_compilation_cache")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny preset, batch 2, 1 repeat, small matmuls (checks it runs)")
    p.add_argument("--variants", type=bench_train_step._csv(tuple(VARIANTS)),
                   default=list(VARIANTS), help=f"from {list(VARIANTS)} (default all)")
    p.add_argument("--stages", type=bench_train_step._csv(tuple(TRAIN_STAGES)),
                   default=list(TRAIN_STAGES), help=f"train steps, from {list(TRAIN_STAGES)} "
                   "(stage 2, stage 1; default both)")
    p.add_argument("--sizes", type=bench_train_step._csv(("tiny", "base", "paper")),
                   default=None, help="train-step sizes, run in this order (default "
                   "base,paper; tiny with --smoke)")
    p.add_argument("--batch", type=errors.positive_int, default=None,
                   help="train-step examples (default 16; 2 with --smoke)")
    p.add_argument("--sample-batch", type=errors.positive_int, default=None,
                   help="images sampled per call (default 8; 1 with --smoke)")
    p.add_argument("--repeats", type=errors.positive_int, default=None,
                   help="timed steps / sampling calls after warm-up (default 5; 1 with --smoke)")
    p.add_argument("--no-sampling", action="store_true", help="only the train steps")
    p.add_argument("--matmuls", action="store_true",
                   help="also time each distinct matmul of a train step alone (matmuls.py): "
                        "the step's matmul time and its costliest shapes (compiles per "
                        "distinct matmul: the row limit doubles)")
    p.add_argument("--row-limit", type=float, default=None, metavar="S",
                   help="seconds one row may take, compile included (default 180; 90 with "
                        "--smoke; twice that with --matmuls)")
    p.add_argument("--budget", type=float, default=540.0, metavar="S",
                   help="no row starts after this many seconds (default 540: one 10-minute "
                        "device call with room to copy the results back)")
    p.add_argument("--cache-dir", default=default_cache_dir(),
                   help="JAX's persistent compilation cache (default "
                        "$UVIM_GIVT_CACHE/jax_compilation_cache or ~/.cache/uvim_givt/...)")
    p.add_argument("--in-process", action="store_true",
                   help="measure every row in this process (no row limit; for debugging)")
    p.add_argument("--dense-config", default="configs/panoptic.py",
                   help="the UViM task's config (panoptic or depth)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="extra config override of every variant "
                   "(repeatable), e.g. vae.model.remat_policy=dots_saveable")
    _machine.add_output_arguments(p, __file__, markdown=False)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    smoke = bool(args.smoke)
    sizes = list(args.sizes or (["tiny"] if smoke else ["base", "paper"]))
    batch = args.batch or (2 if smoke else 16)
    sample_batch = args.sample_batch or (1 if smoke else 8)
    repeats = args.repeats or (1 if smoke else 5)
    # --matmuls compiles and times every distinct matmul in the row's process too
    limit = args.row_limit or (90.0 if smoke else 180.0) * (2 if args.matmuls else 1)
    planned = {job[1] for job in plan_rows(args.variants, sizes, args.stages, False)}
    idle = [v for v in args.variants if v not in planned]
    if idle:
        raise errors.ConfigError(
            f"--variants {','.join(idle)}: measured on --stages "
            f"{','.join(s for v in idle for s in VARIANT_STAGES[v])} only, which "
            f"--stages {','.join(args.stages)} leaves out")
    use_compile_cache(args.cache_dir)
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    peak_n = 256 if smoke else 8192
    peak = {"measured_bf16": _machine.matmul_peak(peak_n, "bfloat16", repeats=3),
            "measured_fp32": _machine.matmul_peak(peak_n, "float32", repeats=3),
            "nominal_bf16_flops_per_s": nominal_peak(machine["device_kind"])}
    measured = peak["measured_bf16"]["flops_per_s"]
    nominal = peak["nominal_bf16_flops_per_s"]
    print(f"bf16 matmul {peak_n}^3: {measured / 1e12:.3g} TFLOP/s; fp32: "
          f"{peak['measured_fp32']['flops_per_s'] / 1e12:.3g} TFLOP/s; nominal bf16: "
          f"{(nominal or 0) / 1e12:.4g} TFLOP/s", flush=True)
    table: dict[str, Any] = {
        "peak": peak, "train": [], "sampling": [],
        "settings": {"sizes": sizes, "smoke": smoke, "batch": batch,
                     "sample_batch": sample_batch, "repeats": repeats, "row_limit_s": limit,
                     "budget_s": args.budget, "cache_dir": args.cache_dir,
                     "dense_config": args.dense_config, "variants": list(args.variants),
                     "stages": list(args.stages), "matmuls": args.matmuls,
                     "overrides": list(args.overrides)}}

    def measure(job: dict[str, Any]) -> dict[str, Any]:
        spent = time.perf_counter() - t_start
        if spent > args.budget:
            return {"skipped": f"budget of {args.budget:.0f} s spent (--budget)"}
        if args.in_process:
            kind = job.pop("kind")
            row = measure_train(**job) if kind == "train" else measure_sampling(**job)
            gc.collect()
            return row
        return _run_child(job, min(limit, args.budget - spent + 30), args.cache_dir)

    sample_size = "tiny" if smoke else "paper"
    shown = None  # the table whose header was printed last
    for job in plan_rows(args.variants, sizes, args.stages, not args.no_sampling):
        if job[0] == "train":
            _, variant, size, stage = job
            row = measure({"kind": "train", "variant": variant, "size": size, "stage": stage,
                           "batch": batch, "repeats": repeats,
                           "dense_config": args.dense_config, "extra": list(args.overrides),
                           "measured_peak": measured, "nominal": nominal,
                           "matmuls": args.matmuls})
            row = {"variant": variant, "stage": stage, "size": size, **row}
            table["train"].append(row)
            if shown != "train":
                print(f"\nUViM train steps ({', '.join(TRAIN_STAGES[s] for s in args.stages)}; "
                      f"batch {batch}):")
                print(_header(TRAIN_COLUMNS))
            print(_line(row, TRAIN_COLUMNS), flush=True)
            if row.get("top_matmuls") and measured:
                bench_train_step.print_matmuls(row, measured)  # against the bf16 matmul
        else:
            row = measure({"kind": "sampling", "size": sample_size, "batch": sample_batch,
                           "repeats": repeats, "dense_config": args.dense_config,
                           "extra": list(args.overrides)})
            row = {"mode": SAMPLING_MODE, "size": sample_size, **row}
            table["sampling"].append(row)
            print(f"\nsampling, beam 4 fan 8 ({sample_size}, batch {sample_batch}):")
            print(_header(SAMPLING_COLUMNS))
            print(_line(row, SAMPLING_COLUMNS), flush=True)
        shown = job[0]
        _machine.write_json(args.json, table, machine)
    return _machine.finish(args.json, table, machine)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # one row, in the process _run_child started
        use_compile_cache(argv[argv.index("--cache-dir") + 1])
        return child_main(argv[1], argv[2])
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
