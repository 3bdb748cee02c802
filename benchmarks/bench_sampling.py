"""Sampling throughput (tokens/s, images/s) of every decoding mode, at tiny and paper lengths.

Modes (each through the library's samplers, ``uvim_givt.sampling``, with the temperatures
and settings of the config's ``givt.sampling``):

* ``ar_plain``: ImageNet GIVT-Causal, ancestral sampling (beam 1, fan 1);
* ``ar_beam4_fan8``: the same model, beam search with beam 4 and fan 8;
* ``ar_dbcfg``: the same model, DB-CFG at the config's ``cfg_weight`` (rejection sampling
  against the label-dropped pass);
* ``maskgit16``: ImageNet GIVT-MaskGIT, 16 decoding steps (no guidance);
* ``uvim_beam4_fan8``: the dense task's encoder-decoder GIVT (``--dense-config``, default
  panoptic) given an image, beam 4 / fan 8 (the published UViM sampler), the image encoder
  included in the time.

Sequence lengths come from the presets: ImageNet tiny 8x8=64 tokens of 4 channels, paper
16x16=256 tokens of 16; the dense task tiny 64 tokens of 16, paper 256 of 32 (16x16 codes of
a 512px image). Weights are random (initialised, not trained): the cost of a token does not
depend on them, but DB-CFG's rejection sampler runs a fixed number of proposals
(``cfg_max_samples``) whatever the weights. Only the GIVT is timed (not the VAE decoder).
tokens/s counts output tokens (batch x seq_len), not beam candidates.

    python benchmarks/bench_sampling.py                  # tiny + paper (minutes on a CPU)
    python benchmarks/bench_sampling.py --quick          # tiny, batch 2, 1 repeat (CI)
    python benchmarks/bench_sampling.py --modes ar_plain --sizes paper --batch 8

JSON (``benchmarks/results/bench_sampling.json``): ``{"machine", "settings", "rows": [{mode,
size, config, batch, seq_len, token_dim, params, sample_s, sample_min_s, tokens_per_s,
images_per_s, compile_s, repeats, overrides}]}``; compile_s is the first call (trace +
compile + one run).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from bench_train_step import (  # noqa: E402
    _benchmark_safe,
    _csv,
    add_config_arguments,
    apply_matching_overrides,
    run_settings,
)

from uvim_givt import config as config_lib  # noqa: E402
from uvim_givt import errors  # noqa: E402
from uvim_givt.models import builders  # noqa: E402
from uvim_givt.sampling import SamplingSettings, sample_by_style  # noqa: E402
from uvim_givt.training.trainer import count_params  # noqa: E402

SIZES = ("tiny", "paper")
#: mode -> (config file, its argument)
MODES: dict[str, tuple[str, str]] = {
    "ar_plain": ("configs/imagenet.py", "style=ar"),
    "ar_beam4_fan8": ("configs/imagenet.py", "style=ar"),
    "ar_dbcfg": ("configs/imagenet.py", "style=ar"),
    "maskgit16": ("configs/imagenet.py", "style=masked"),
    "uvim_beam4_fan8": ("DENSE", ""),
}
DEFAULT_BATCH = {"tiny": 8, "paper": 2}
COLUMNS = ("mode", "size", "batch", "seq_len", "token_dim", "params", "sample_s",
           "tokens_per_s", "images_per_s", "compile_s")


def load_mode_config(mode: str, size: str, dense_config: str) -> ml_collections.ConfigDict:
    path, arg = MODES[mode]
    path = dense_config if path == "DENSE" else path
    return _benchmark_safe(
        config_lib.load_config(f"{path}:size={size}" + (f",{arg}" if arg else "")))


def make_sampler(mode: str, cfg: ml_collections.ConfigDict, batch: int
                 ) -> tuple[Callable[[jax.Array], jax.Array], Any, dict[str, Any]]:
    """(sample(rng) -> codes, params, shape info) for one mode; params are random."""
    model = builders.build_model("givt", cfg)
    params = jax.jit(lambda k: builders.init_givt(model, k))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    kw: dict[str, Any] = {}
    if model.num_labels is not None:
        kw["labels"] = jnp.asarray(rng.integers(0, int(model.num_labels), (batch,)), jnp.int32)
    else:
        kw["batch_size"] = batch
    if model.has_encoder:
        size = int(cfg.data.image_size)
        kw["image"] = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    # The config's sampling settings (its temperatures, DB-CFG proposals, MaskGIT t_C), with
    # what the mode measures put over them.
    settings = SamplingSettings.from_config(cfg).replace(**{
        "maskgit16": dict(num_steps=16, cfg_weight=0.0),
        "ar_beam4_fan8": dict(cfg_weight=0.0, beam_size=4, fan_size=8),
        "uvim_beam4_fan8": dict(cfg_weight=0.0, beam_size=4, fan_size=8),
        "ar_dbcfg": dict(beam_size=1, fan_size=1),
    }.get(mode, dict(cfg_weight=0.0, beam_size=1, fan_size=1)))

    def sample(key):
        return sample_by_style(model, params, key, settings, **kw)
    info = {"seq_len": int(model.seq_len), "token_dim": int(model.out_dim),
            "params": count_params(params)}
    return sample, params, info


def measure(mode: str, size: str, cfg: ml_collections.ConfigDict, batch: int, repeats: int,
            overrides: Sequence[str]) -> dict[str, Any]:
    sample, _, info = make_sampler(mode, cfg, batch)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), repeats + 2))
    t0 = time.perf_counter()
    jax.block_until_ready(sample(next(keys)))  # compiles
    compile_s = time.perf_counter() - t0
    timing = _machine.time_repeats(lambda: jax.block_until_ready(sample(next(keys))),
                                   repeats=repeats, warmup=0)
    t = timing["median_s"]
    return {"mode": mode, "size": size, "config": MODES[mode][0], "batch": batch, **info,
            "sample_s": t, "sample_min_s": timing["min_s"],
            "tokens_per_s": batch * info["seq_len"] / t, "images_per_s": batch / t,
            "compile_s": compile_s, "repeats": timing["repeats"],
            "overrides": list(overrides)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", type=_csv(tuple(MODES)), default=list(MODES),
                   help=f"comma-separated, from {list(MODES)} (default all)")
    p.add_argument("--sizes", type=_csv(SIZES), default=list(SIZES),
                   help="comma-separated presets (default tiny,paper)")
    p.add_argument("--batch", type=errors.positive_int, default=None,
                   help=f"images sampled per call (default {DEFAULT_BATCH})")
    p.add_argument("--repeats", type=errors.positive_int, default=None,
                   help="timed calls after the compiling one (default 3; 1 for paper)")
    add_config_arguments(p, "uvim_beam4_fan8", "mode")
    p.add_argument("--quick", action="store_true",
                   help="tiny only, batch 2, 1 repeat (CI smoke run)")
    _machine.add_output_arguments(p, __file__)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = ["tiny"] if args.quick else list(args.sizes)
    machine = _machine.describe_machine()
    print(_machine.machine_line(machine), flush=True)
    plan = [(mode, size, load_mode_config(mode, size, args.dense_config))
            for mode in args.modes for size in sizes]
    apply_matching_overrides([c for _, _, c in plan], args.overrides)
    rows = []
    for mode, size, cfg in plan:
        batch, repeats = _machine.row_plan(args, mode, size, DEFAULT_BATCH, 2, (1, 3))
        row = measure(mode, size, cfg, batch, repeats, args.overrides)
        rows.append(row)
        print(f"  {row['sample_s']:.3g} s/call, {row['tokens_per_s']:.4g} tokens/s", flush=True)
    _machine.print_table(rows, COLUMNS, title="\nsampling (random weights; GIVT only, the "
                         "VAE decoder not timed)", markdown=args.markdown)
    table = {"settings": run_settings(args, sizes, modes=args.modes), "rows": rows}
    return _machine.finish(args.json, table, machine)


def main(argv: Sequence[str] | None = None) -> int:
    return errors.run_cli(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
