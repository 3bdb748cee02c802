"""The accelerator part of the benchmark suite, as one command that fits in a few minutes.

1. The paper-scale UViM stage-2 train step (the dense task's ``size=paper`` encoder-decoder
   GIVT: ViT-L/16 image encoder at 512px, 24 decoder layers, the frozen stage-1 ViT VAE
   encoder inside the step), in three precisions:

   * ``fp32``: ``dtype=float32``, the reference (einsum + softmax) attention;
   * ``bf16``: ``dtype=bfloat16``, the reference attention;
   * ``bf16_fused``: ``dtype=bfloat16``, ``jax.nn.dot_product_attention`` (cuDNN's fused
     kernel where XLA picks it);

   (the ``givt.model`` and ``vae.model`` keys ``dtype`` / ``attention``; a variant whose
   keys the config lacks is reported as skipped). Step time, examples/s, XLA's FLOPs per
   step and MFU = achieved FLOP/s / the device's bf16 peak: the nominal dense peak of the
   device kind where known (``NOMINAL_BF16_PEAK``) and a bf16 matmul measured in the same
   run.
2. Autoregressive sampling of the same model (image encoder included), beam 4, fan 8:
   tokens/s and images/s.

On the device machine (writes the JSON where the run returns files)::

    python benchmarks/gpu_suite.py --json $OUT/gpu_suite.json

``--smoke`` runs the same code on the tiny preset at batch 2 (a CPU checks it works in a
minute or two). Rows are printed, and the JSON rewritten, as each finishes, so a run cut
short keeps what it measured. JSON: ``{"machine", "peak": {measured_bf16, measured_fp32,
nominal_bf16_flops_per_s}, "settings", "train": [bench_train_step rows + variant, mfu_nominal,
mfu_measured], "sampling": [bench_sampling rows]}``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
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
#: variant -> overrides of both models (stage-2 GIVT and the frozen stage-1 VAE)
VARIANTS: dict[str, tuple[str, ...]] = {
    "fp32": ("dtype=float32", "attention=reference"),
    "bf16": ("dtype=bfloat16", "attention=reference"),
    "bf16_fused": ("dtype=bfloat16", "attention=fused"),
}
TRAIN_COLUMNS = ("variant", "size", "batch", "step_s", "examples_per_s", "flops_per_step",
                 "achieved_flops_per_s", "mfu_nominal", "mfu_measured", "compile_s")


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
    for model in ("givt.model", "vae.model"):
        for item in VARIANTS[variant]:
            key = f"{model}.{item.split('=')[0]}"
            (have if key in keys else missing).append(f"{model}.{item}" if key in keys
                                                      else key)
    return have, missing


def _line(row: dict[str, Any], columns: Sequence[str]) -> str:
    return _machine.format_table([row], columns).splitlines()[-1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny preset, batch 2, 1 repeat, small matmuls (checks it runs)")
    p.add_argument("--variants", type=bench_train_step._csv(tuple(VARIANTS)),
                   default=list(VARIANTS), help=f"from {list(VARIANTS)} (default all)")
    p.add_argument("--batch", type=errors.positive_int, default=None,
                   help="train-step examples (default 16; 2 with --smoke)")
    p.add_argument("--sample-batch", type=errors.positive_int, default=None,
                   help="images sampled per call (default 8; 1 with --smoke)")
    p.add_argument("--repeats", type=errors.positive_int, default=None,
                   help="timed steps / sampling calls after warm-up (default 5; 1 with --smoke)")
    p.add_argument("--no-sampling", action="store_true", help="only the train steps")
    p.add_argument("--dense-config", default="configs/panoptic.py",
                   help="the UViM task's config (panoptic or depth)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="extra config override of every variant "
                   "(repeatable), e.g. givt.model.remat=True")
    _machine.add_output_arguments(p, __file__, markdown=False)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    smoke = bool(args.smoke)
    size = "tiny" if smoke else "paper"
    batch = args.batch or (2 if smoke else 16)
    sample_batch = args.sample_batch or (1 if smoke else 8)
    repeats = args.repeats or (1 if smoke else 5)
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    peak_n = 256 if smoke else 8192
    peak = {"measured_bf16": _machine.matmul_peak(peak_n, "bfloat16", repeats=3),
            "measured_fp32": _machine.matmul_peak(peak_n, "float32", repeats=3),
            "nominal_bf16_flops_per_s": nominal_peak(machine["device_kind"])}
    measured = peak["measured_bf16"]["flops_per_s"]
    print(f"bf16 matmul {peak_n}^3: {measured / 1e12:.3g} TFLOP/s; fp32: "
          f"{peak['measured_fp32']['flops_per_s'] / 1e12:.3g} TFLOP/s; nominal bf16: "
          f"{(peak['nominal_bf16_flops_per_s'] or 0) / 1e12:.4g} TFLOP/s", flush=True)
    table: dict[str, Any] = {
        "peak": peak, "train": [], "sampling": [],
        "settings": {"size": size, "smoke": smoke, "batch": batch,
                     "sample_batch": sample_batch, "repeats": repeats,
                     "dense_config": args.dense_config, "variants": list(args.variants),
                     "overrides": list(args.overrides)}}

    def save() -> None:
        _machine.write_json(args.json, table, machine)

    print(f"\nUViM stage-2 train step ({size}, batch {batch}):", flush=True)
    print("  ".join(TRAIN_COLUMNS), flush=True)
    for variant in args.variants:
        cfg = bench_train_step.load_stage_config("encdec", size, args.dense_config)
        overrides, missing = variant_overrides(cfg, variant)
        if missing:
            row = {"variant": variant, "size": size, "skipped": f"config lacks {missing}"}
        else:
            overrides += list(args.overrides)
            config_lib.apply_overrides(cfg, overrides)
            row = bench_train_step.measure("encdec", size, cfg, batch, repeats, overrides)
            row["variant"] = variant
            flops_s = row["achieved_flops_per_s"]
            nominal = peak["nominal_bf16_flops_per_s"]
            row["mfu_nominal"] = flops_s / nominal if flops_s and nominal else None
            row["mfu_measured"] = flops_s / measured if flops_s else None
        table["train"].append(row)
        print(row.get("skipped") and f"{variant}: skipped ({row['skipped']})"
              or _line(row, TRAIN_COLUMNS), flush=True)
        save()
        gc.collect()

    if not args.no_sampling:
        cfg = bench_sampling.load_mode_config("uvim_beam4_fan8", size, args.dense_config)
        config_lib.apply_overrides(cfg, args.overrides)
        row = bench_sampling.measure("uvim_beam4_fan8", size, cfg, sample_batch, repeats,
                                     args.overrides)
        table["sampling"].append(row)
        print(f"\nsampling, beam 4 fan 8 ({size}, batch {sample_batch}):")
        _machine.print_table([row], bench_sampling.COLUMNS)
    return _machine.finish(args.json, table, machine)


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
