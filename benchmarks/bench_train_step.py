"""Train-step time, examples/s, FLOPs and achieved FLOP/s of every stage, per size preset.

The step is the real one: the stage's loss from ``uvim_givt.training.runner`` (``vae_stage``
/ ``givt_stage``, the frozen stage-1 VAE inside the stage-2 step), its gradient and the optax
update of the stage's ``train.optim`` config, jitted with the parameters donated, as
``uvim_givt.training.trainer.train`` runs it (on one device, without the mesh). Weights are
random and batches synthetic (random labels/images of the right shapes): the time of a step
does not depend on their values.

Stages (configs/ presets; a stage without a ``base`` preset has no base row):

* ``vit_vae``: stage 1 of the dense task (``--dense-config``, default panoptic), ViT VAE;
* ``cnn_vae``: stage 1 of ImageNet, CNN VAE (with its PatchGAN; without the VGG perceptual
  loss unless ``vae.perceptual.weights`` names a file: the weights are not shipped);
* ``givt_causal`` / ``maskgit``: stage 2 of ImageNet, decoder-only GIVT (style ar / masked);
* ``encdec``: stage 2 of the dense task, the encoder-decoder GIVT (ViT encoder on the image).

FLOPs per step are model FLOPs: the step's matmuls and convolutions counted from its jaxpr
(:mod:`flops`; the einsum attention counted for the fused kernel, the same maths), so they do
not depend on compilation, autotuning or custom calls, and a scanned layer counts once per
layer. XLA's count of the compiled step is kept beside them (``xla_flops_per_step``: on the
CPU it agrees within a few %, tests/test_benchmarks.py; on GPUs it misses custom calls).
Achieved FLOP/s is reported as a fraction of a large fp32 matmul's FLOP/s measured in the
same run (``--peak-n``), on the same threads.

    python benchmarks/bench_train_step.py                       # tiny + base, a few minutes
    python benchmarks/bench_train_step.py --sizes paper --repeats 2
    python benchmarks/bench_train_step.py --quick                # tiny, 1 repeat (CI)
    python benchmarks/bench_train_step.py --stages encdec --set givt.model.dtype=bfloat16
    python benchmarks/bench_train_step.py --sizes base --matmuls    # what limits the step

``--matmuls`` times each distinct matmul and convolution of the step alone
(:mod:`matmuls`) and reports their sum (the step's matmul time), its share of the step and
the costliest shapes: a share near 1 says the step is as fast as its matmul shapes allow on
this device, a low one that the rest of the step takes the difference.

Prints a table and writes it with the machine description to ``--json`` (default
``benchmarks/results/bench_train_step.json``). JSON: ``{"machine", "peak", "settings",
"rows": [{stage, size, config, batch, params, step_s, step_min_s, examples_per_s,
flops_per_step, xla_flops_per_step, bytes_per_step, flops_per_byte, achieved_flops_per_s,
fraction_of_peak, compile_s, repeats, overrides, and with --matmuls matmul_s, matmul_share,
distinct_matmuls, top_matmuls: [{op, where, count, flops, seconds, total_s,
flops_per_s}]}]}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import flops as flops_lib  # noqa: E402
import matmuls as matmuls_lib  # noqa: E402

from uvim_givt import config as config_lib  # noqa: E402
from uvim_givt import errors  # noqa: E402
from uvim_givt.errors import ConfigError  # noqa: E402
from uvim_givt.models import builders  # noqa: E402
from uvim_givt.training import runner  # noqa: E402
from uvim_givt.training.optim import make_optimizer  # noqa: E402
from uvim_givt.training.trainer import count_params  # noqa: E402

SIZES = ("tiny", "base", "paper")
#: stage -> (config file, its argument, trained stage "vae" | "givt")
STAGES: dict[str, tuple[str, str, str]] = {
    "vit_vae": ("DENSE", "", "vae"),
    "cnn_vae": ("configs/imagenet.py", "style=ar", "vae"),
    "givt_causal": ("configs/imagenet.py", "style=ar", "givt"),
    "maskgit": ("configs/imagenet.py", "style=masked", "givt"),
    "encdec": ("DENSE", "", "givt"),
}
#: default batch per size: the presets' own batches (up to 8192) do not fit a small machine
DEFAULT_BATCH = {"tiny": 32, "base": 16, "paper": 1}
COLUMNS = ("stage", "size", "batch", "params", "step_s", "examples_per_s", "flops_per_step",
           "flops_per_byte", "achieved_flops_per_s", "fraction_of_peak", "compile_s")


# -------------------------------------------------------------------------------- configs
def preset_sizes(config_file: str) -> tuple[str, ...]:
    """The size presets a config file offers (its ``SIZES``), in SIZES order."""
    module = config_lib._load_module(config_lib.resolve_config_path(config_file))
    offered = tuple(getattr(module, "SIZES", SIZES))
    return tuple(s for s in SIZES if s in offered)


def apply_matching_overrides(cfgs: Sequence[ml_collections.ConfigDict],
                             overrides: Sequence[str]) -> None:
    """Applies each ``KEY=VALUE`` to every config that has KEY (stages come from several
    config files); a key no config has is an error, named."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        applied = False
        for cfg in cfgs:
            if key in config_lib.all_keys(cfg):
                config_lib.apply_overrides(cfg, [item])
                applied = True
        if not applied and cfgs:
            config_lib.apply_overrides(cfgs[0], [item])  # raises, naming the valid keys


def run_settings(args: argparse.Namespace, sizes: Sequence[str],
                 **chosen: Sequence[str]) -> dict[str, Any]:
    """The JSON's ``settings`` of a script over sizes and dense configs (this one and
    bench_sampling): the sizes, what was chosen to run (stages, modes), ``--quick``,
    ``--dense-config`` and the ``--set`` overrides."""
    return {"sizes": sizes, **{k: list(v) for k, v in chosen.items()},
            "quick": bool(args.quick), "dense_config": args.dense_config,
            "overrides": list(args.overrides)}


def load_stage_config(stage: str, size: str, dense_config: str) -> ml_collections.ConfigDict:
    path, arg, _ = STAGES[stage]
    path = dense_config if path == "DENSE" else path
    return config_lib.load_config(f"{path}:size={size}" + (f",{arg}" if arg else ""))


def _benchmark_safe(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The VGG perceptual loss needs a weights file nobody ships: off when none is named."""
    if "perceptual" in cfg.vae and not cfg.vae.perceptual.weights:
        cfg.vae.perceptual.weight = 0.0
    return cfg


# ----------------------------------------------------------------------------- the step
def synthetic_batch(cfg: ml_collections.ConfigDict, batch: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """Random model inputs of the shapes the stage's training batches have."""
    rng = np.random.default_rng(seed)
    size = int(cfg.data.image_size)
    out = {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)}
    if builders.vae_kind(cfg) == "vit":
        channels = builders.label_channels(cfg)
        labels = np.zeros((batch, size, size, 1 + max(i for i, _ in channels.values())),
                          np.int32)
        for index, classes in channels.values():
            labels[..., index] = rng.integers(0, classes, labels.shape[:-1])
        out["labels"] = labels
    if cfg.givt.model.get("num_labels") is not None:
        out["label"] = rng.integers(0, int(cfg.givt.model.num_labels), (batch,)).astype(np.int32)
    return out


def build_step(cfg: ml_collections.ConfigDict, stage: str
               ) -> tuple[Callable, Callable[[jax.Array], Any], Any]:
    """(train_step, init, frozen): the trainer's step for ``stage`` ("vae" | "givt").

    ``train_step(params, opt_state, batch, step, frozen) -> (params, opt_state, metrics)``;
    ``init(key) -> (params, opt_state)``; ``frozen``: the stage-1 VAE of stage 2, or None."""
    frozen = None
    if stage == "vae":
        st = runner.vae_stage(None, cfg, None)
        train_cfg = cfg.vae.train
    else:
        vae = builders.build_model("vae", cfg)
        # jitted: flax's eager init dispatches (and compiles) op by op, far slower
        frozen = jax.jit(lambda k: builders.init_params("vae", vae, k))(jax.random.PRNGKey(1))
        st = runner.givt_stage(None, cfg, None, frozen)
        train_cfg = cfg.givt.train
    abstract = jax.eval_shape(st.init_params, jax.random.PRNGKey(0))
    tx, schedule = make_optimizer(train_cfg.optim, abstract, int(train_cfg.total_steps))

    # The body of trainer.train's step (minus its NaN bookkeeping), on one device.
    def train_step(params, opt_state, batch, step, frozen):
        key = jax.random.fold_in(jax.random.PRNGKey(0), step)
        extra = () if frozen is None else (frozen,)
        (loss, metrics), grads = jax.value_and_grad(st.loss_fn, has_aux=True)(
            params, batch, key, *extra)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, dict(metrics, loss=loss, lr=schedule(step))

    def init(key):
        params = st.init_params(key)
        return params, tx.init(params)
    return train_step, init, frozen


def cost_of(compiled_or_lowered: Any) -> dict[str, float]:
    """XLA's cost analysis as one dict (older jax returned a list with one dict per module)."""
    cost = compiled_or_lowered.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def reference_attention(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` whose models use the einsum attention: the same maths as the fused
    kernel, but visible to the FLOP count (a cuDNN call is an opaque primitive)."""
    out = ml_collections.ConfigDict(cfg.to_dict())
    keys = [k for k in ("vae.model.attention", "givt.model.attention")
            if k in config_lib.all_keys(out)]
    return config_lib.apply_overrides(out, [f"{k}=reference" for k in keys])


def _scan_keys(cfg: ml_collections.ConfigDict, stage: str) -> list[str]:
    keys = ["vae.model.scan"] if cfg.vae.model.get("scan") else []
    if stage == "givt" and cfg.givt.model.get("scan"):
        keys.append("givt.model.scan")
    return keys


def model_flops(cfg: ml_collections.ConfigDict, stage: str, batch: dict[str, Any]) -> int:
    """The step's model FLOPs: its matmuls and convolutions counted from the jaxpr
    (:mod:`flops`), independent of compilation, autotuning and custom calls. Counted on the
    unscanned layers: a scanned stack is rematerialised, and the recomputed forward pass is
    device work, not model FLOPs (MFU's convention), so both layouts report the same."""
    plain = reference_attention(cfg)
    config_lib.apply_overrides(plain, [f"{k}=False" for k in _scan_keys(cfg, stage)])
    step, init, frozen = build_step(plain, stage)
    params, opt_state = jax.eval_shape(init, jax.random.PRNGKey(0))
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    return flops_lib.count(step, params, opt_state, shapes, jnp.asarray(0, jnp.int32), frozen)


def measure(stage_name: str, size: str, cfg: ml_collections.ConfigDict, batch: int,
            repeats: int, overrides: Sequence[str], profile_dir: str | None = None,
            matmuls: bool = False) -> dict[str, Any]:
    """One row: the stage's step at ``batch`` timed after a warm-up step; with ``matmuls``
    also its matmul time (:mod:`matmuls`: each distinct matmul of the step timed alone)."""
    stage = STAGES[stage_name][2]
    train_step, init, frozen = build_step(cfg, stage)
    params, opt_state = jax.jit(init)(jax.random.PRNGKey(0))
    n_params = count_params(params)
    data = jax.device_put(synthetic_batch(cfg, batch))
    step = jnp.asarray(0, jnp.int32)
    jitted = jax.jit(train_step, donate_argnums=(0, 1))

    t0 = time.perf_counter()
    compiled = jitted.lower(params, opt_state, data, step, frozen).compile()
    compile_s = time.perf_counter() - t0
    cost = cost_of(compiled)
    xla_flops = float(cost.get("flops", 0.0))
    flops = float(model_flops(cfg, stage, data))
    if _scan_keys(cfg, stage):
        cost, xla_flops = {}, 0.0  # XLA counts a scanned body once: not the step's cost

    state = {"params": params, "opt": opt_state}

    def run_step():
        state["params"], state["opt"], metrics = compiled(state["params"], state["opt"], data,
                                                          step, frozen)
        jax.block_until_ready((state["params"], metrics))

    timing = _machine.time_repeats(run_step, repeats=repeats, warmup=1)
    if profile_dir:
        with jax.profiler.trace(os.path.join(profile_dir, f"{stage_name}_{size}")):
            run_step()
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    achieved = flops / timing["median_s"] if flops else None
    breakdown = {}
    if matmuls:
        ops = matmuls_lib.collect(train_step, state["params"], state["opt"], data, step,
                                  frozen)
        matmul_s = matmuls_lib.time_all(ops, repeats=max(repeats, 3))
        breakdown = {"matmul_s": matmul_s, "matmul_share": matmul_s / timing["median_s"],
                     "distinct_matmuls": len(ops), "top_matmuls": matmuls_lib.summary(ops)}
    return {
        "stage": stage_name, "size": size, "config": STAGES[stage_name][0], "batch": batch,
        "params": n_params, "step_s": timing["median_s"], "step_min_s": timing["min_s"],
        "examples_per_s": batch / timing["median_s"], "flops_per_step": flops or None,
        "xla_flops_per_step": xla_flops or None, "bytes_per_step": bytes_accessed or None,
        "flops_per_byte": flops / bytes_accessed if flops and bytes_accessed else None,
        "achieved_flops_per_s": achieved, "compile_s": compile_s,
        "repeats": timing["repeats"], "overrides": list(overrides), **breakdown,
    }


def print_matmuls(row: dict[str, Any], peak: float) -> None:
    """The matmul-time lines of a row measured with ``matmuls``."""
    print(f"  matmuls alone: {row['matmul_s'] * 1e3:.1f} ms = {row['matmul_share']:.2f} of "
          f"the step ({row['distinct_matmuls']} distinct); the costliest:", flush=True)
    for op in row["top_matmuls"]:
        print(f"    {op['total_s'] * 1e3:8.1f} ms  {op['count']:3d} x {op['op']}  at "
              f"{op['flops_per_s'] / peak:.2f} of peak  ({op['where']})", flush=True)


# ---------------------------------------------------------------------------------- CLI
def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: comma-separated, from {list(choices)}")
        return items
    return parse


def add_config_arguments(p: argparse.ArgumentParser, dense_use: str, unit: str,
                         example: str = "") -> None:
    """``--dense-config`` (the dense task's config, for ``dense_use``) and ``--set`` (overrides
    applied to every ``unit``'s config that has the key: :func:`apply_matching_overrides`);
    this script's and bench_sampling's."""
    p.add_argument("--dense-config", default="configs/panoptic.py",
                   help=f"config of {dense_use} (panoptic or depth)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help=f"config override, applied to every {unit}'s "
                   "config that has KEY (repeatable)" + (f", e.g. {example}" if example else ""))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", type=_csv(tuple(STAGES)), default=list(STAGES),
                   help=f"comma-separated, from {list(STAGES)} (default all)")
    p.add_argument("--sizes", type=_csv(SIZES), default=["tiny", "base"],
                   help="comma-separated presets (default tiny,base; paper is minutes "
                        "per stage on a small CPU)")
    p.add_argument("--batch", type=errors.positive_int, default=None,
                   help=f"examples per step for every size (default {DEFAULT_BATCH})")
    p.add_argument("--repeats", type=errors.positive_int, default=None,
                   help="timed steps after the warm-up (default 5; 2 for paper)")
    add_config_arguments(p, "the vit_vae and encdec stages", "stage",
                         example="givt.model.dtype=bfloat16")
    p.add_argument("--peak-n", type=errors.positive_int, default=2048,
                   help="size of the square fp32 matmul whose FLOP/s is the peak")
    p.add_argument("--quick", action="store_true",
                   help="tiny only, batch 4, 1 repeat, a small peak matmul (CI smoke run)")
    p.add_argument("--matmuls", action="store_true",
                   help="also time each distinct matmul of the step alone: the step's "
                        "matmul time and its share of the step, the costliest shapes")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also write a jax.profiler trace of one step per row into DIR")
    _machine.add_output_arguments(p, __file__)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every (stage, size) asked for; returns the JSON table (also written)."""
    sizes, peak_n = list(args.sizes), int(args.peak_n)
    if args.quick:
        sizes, peak_n = ["tiny"], min(peak_n, 512)
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    peak = _machine.matmul_peak(peak_n, "float32", repeats=3 if args.quick else 5)
    print(f"matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (fp32 {peak_n}^3, "
          f"{machine['cpu_usable']} usable cores)", flush=True)

    plan = []
    for stage in args.stages:
        for size in sizes:
            path = STAGES[stage][0]
            if size not in preset_sizes(args.dense_config if path == "DENSE" else path):
                print(f"{stage}: {path} has no {size!r} preset; skipped", flush=True)
                continue
            plan.append((stage, size, _benchmark_safe(
                load_stage_config(stage, size, args.dense_config))))
    apply_matching_overrides([c for _, _, c in plan], args.overrides)

    rows = []
    for stage, size, cfg in plan:
        batch, repeats = _machine.row_plan(args, stage, size, DEFAULT_BATCH, 4, (2, 5))
        row = measure(stage, size, cfg, batch, repeats, args.overrides, args.profile,
                      args.matmuls)
        if row["achieved_flops_per_s"]:
            row["fraction_of_peak"] = row["achieved_flops_per_s"] / peak["flops_per_s"]
        rows.append(row)
        print(f"  {row['step_s'] * 1e3:.1f} ms/step, compile {row['compile_s']:.1f} s",
              flush=True)
        if args.matmuls:
            print_matmuls(row, peak["flops_per_s"])
    _machine.print_table(rows, COLUMNS, title="\ntrain step (fp32 unless --set says "
                         "otherwise; random weights, synthetic batches)",
                         markdown=args.markdown)
    table = {"peak": peak, "settings": run_settings(args, sizes, stages=args.stages),
             "rows": rows}
    return _machine.finish(args.json, table, machine)


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
