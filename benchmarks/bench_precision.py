"""Mixed precision and fused attention: train steps fp32 vs bf16, attention reference vs fused.

Two tables, each time the median of ``--repeats`` calls after a compiled warm-up:

* attention: one attention call (forward, and forward + gradient) on [B, T, heads, head_dim]
  queries/keys/values with a causal mask, flax's hand-written ``nn.dot_product_attention``
  ("reference") against ``jax.nn.dot_product_attention`` ("fused", as
  ``uvim_givt.models.common.fused_attention`` calls it), in float32 and bfloat16;
* train step: loss, gradient and an Adam update of the tiny presets' models (the
  decoder-only GIVT of configs/imagenet.py, the encoder-decoder GIVT and the ViT VAE of
  configs/panoptic.py, the CNN VAE of configs/imagenet.py) with random weights and
  synthetic batches, for each (``dtype``, ``attention``) setting of the model.

Ratios are against the float32 / reference row of the same model. The machine line lists
the CPU's bf16-related flags (``avx512_bf16``, ``amx_bf16``), the devices and the library
versions: XLA's CPU backend may or may not use those instructions for bf16 matmuls.

    python benchmarks/bench_precision.py                 # both tables, tiny shapes
    python benchmarks/bench_precision.py --only attention --repeats 20
    python benchmarks/bench_precision.py --batch 32 --models givt_causal,vit_vae
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from uvim_givt import config as config_lib
from uvim_givt import errors
from uvim_givt.models import builders, vae_losses
from uvim_givt.models.common import fused_attention
from uvim_givt.training.objectives import givt_nll_loss

# (batch, length, heads, head_dim): the tiny presets' decoder, base and paper-like shapes.
ATTENTION_SHAPES = ((32, 64, 4, 24), (8, 256, 6, 64), (2, 1024, 16, 64))
MODELS = {  # name: (config, stage)
    "givt_causal": ("configs/imagenet.py:size=tiny", "givt"),
    "encdec": ("configs/panoptic.py:size=tiny", "givt"),
    "vit_vae": ("configs/panoptic.py:size=tiny", "vae"),
    "cnn_vae": ("configs/imagenet.py:size=tiny", "vae"),
}
SETTINGS = (("float32", "reference"), ("float32", "fused"), ("bfloat16", "fused"))


# --------------------------------------------------------------------------- machine
def machine_line() -> str:
    """CPU model and bf16 flags, devices, library versions."""
    model, flags = platform.processor() or "?", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    bf16 = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("jax", "jaxlib", "flax", "optax"))
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"cpu: {model}; bf16 flags: {' '.join(bf16) or 'none'}; usable cores: "
            f"{len(os.sched_getaffinity(0))}; devices: {jax.default_backend()} ({devices}); "
            f"{versions}")


def median_times(fns: Sequence[Callable[[], Any]], repeats: int) -> list[tuple[float, float]]:
    """(median wall seconds, median process CPU seconds) of each ``fn()``, results blocked
    on, after one warm-up call each. The functions alternate within each repeat, so a
    change in the machine's load hits all of them alike; CPU time is less distorted than
    wall time by other jobs on a shared machine."""
    for fn in fns:
        jax.block_until_ready(fn())
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            wall[i].append(time.perf_counter() - w)
            cpu[i].append(time.process_time() - c)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def print_rows(title: str, rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    text = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
            for r in rows]
    width = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, width, strict=True)))
    for t in text:
        print("  ".join(x.rjust(w) for x, w in zip(t, width, strict=True)))


# ------------------------------------------------------------------------- attention
def _attention_calls(fn: Callable[..., jax.Array], qkv: Sequence[jax.Array],
                     mask: jax.Array) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The jitted forward call and gradient (w.r.t. q, k and v) of an attention function."""
    def forward(q, k, v):
        return fn(q, k, v, mask=mask, deterministic=True)

    fwd = jax.jit(forward)
    grad = jax.jit(jax.grad(lambda q, k, v: forward(q, k, v).astype(jnp.float32).sum(),
                            argnums=(0, 1, 2)))
    return (lambda: fwd(*qkv)), (lambda: grad(*qkv))


def attention_rows(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for b, t, h, d in ATTENTION_SHAPES:
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        qkv32 = [jax.random.normal(k, (b, t, h, d), jnp.float32) for k in keys]
        mask = nn.make_causal_mask(jnp.zeros((b, t)))
        for dtype in ("float32", "bfloat16"):
            qkv = [x.astype(dtype) for x in qkv32]
            ref_fwd, ref_grad = _attention_calls(nn.dot_product_attention, qkv, mask)
            fused_fwd, fused_grad = _attention_calls(fused_attention, qkv, mask)
            rf, ff = median_times([ref_fwd, fused_fwd], repeats)
            rg, fg = median_times([ref_grad, fused_grad], repeats)
            rows.append(dict(shape=f"{b}x{t}x{h}x{d}", dtype=dtype,
                             ref_fwd_ms=rf[0] * 1e3, fused_fwd_ms=ff[0] * 1e3,
                             fwd_ratio=rf[0] / ff[0], fwd_cpu_ratio=rf[1] / ff[1],
                             ref_grad_ms=rg[0] * 1e3, fused_grad_ms=fg[0] * 1e3,
                             grad_ratio=rg[0] / fg[0], grad_cpu_ratio=rg[1] / fg[1]))
            print(f"  attention {rows[-1]['shape']} {dtype} done", flush=True)
    return rows


# ------------------------------------------------------------------------ train steps
def _batch(cfg: Any, stage: str, model: Any, batch: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    if stage == "givt":
        out = {"tokens": rng.normal(size=(batch, model.seq_len, model.out_dim))}
        if model.num_labels:
            out["labels"] = rng.integers(0, model.num_labels, (batch,))
        if model.has_encoder:
            out["image"] = rng.uniform(-1, 1, (batch, *model.input_size, 3))
        return {k: jnp.asarray(v, jnp.int32 if k == "labels" else jnp.float32)
                for k, v in out.items()}
    x = builders.vae_dummy_input(model)
    if x.dtype == jnp.int32:  # a label map: random classes per channel
        labels = np.zeros((batch, *x.shape[1:]), np.int32)
        for index, classes in model.label_channels.values():
            labels[..., index] = rng.integers(0, classes, labels.shape[:-1])
        return {"x": jnp.asarray(labels)}
    return {"x": jnp.asarray(rng.uniform(-1, 1, (batch, *x.shape[1:])), jnp.float32)}


def _loss_fn(stage: str, model: Any) -> Callable[..., jax.Array]:
    if stage == "givt":
        def loss(params, batch, key):
            return givt_nll_loss(model, params, batch["tokens"], key,
                                 labels=batch.get("labels"), image=batch.get("image"))[0]
        return loss

    def vae_loss(params, batch, key):
        out, aux = model.apply({"params": params}, batch["x"], train=True, rng=key)
        if hasattr(model, "label_channels"):
            return vae_losses.label_vae_loss(out, batch["x"], aux["mu"], aux["logvar"],
                                             label_channels=model.label_channels,
                                             beta=1e-4)[0]
        return vae_losses.vae_loss(out, batch["x"], aux["mu"], aux["logvar"], beta=1e-4)[0]
    return vae_loss


def _train_step(stage: str, spec: str, dtype: str, attention: str,
                batch: int) -> Callable[[], Any] | None:
    """A jitted train step (loss, gradient, Adam) of one model setting, as a no-argument
    call; None if the setting does not apply (attention in a model without any)."""
    cfg = config_lib.load_config(spec)
    group = cfg[stage].model
    group.dtype = dtype
    if "attention" in group:
        group.attention = attention
    elif attention == "reference":  # a model without attention (the CNN VAE)
        return None
    model = builders.build_model(stage, cfg)
    params = builders.init_params(stage, model, jax.random.PRNGKey(0))
    # Random weights: zero-initialised heads would make the logits constant.
    params = jax.tree.map(
        lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    opt = optax.adam(1e-4)
    loss_fn = _loss_fn(stage, model)
    data = _batch(cfg, stage, model, batch)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, data, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state, key = (params, opt.init(params)), jax.random.PRNGKey(2)
    return lambda: step(*state, key)


def train_step_rows(models: Sequence[str], batch: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        spec, stage = MODELS[name]
        steps = {s: _train_step(stage, spec, *s, batch) for s in SETTINGS}
        steps = {s: f for s, f in steps.items() if f is not None}
        times = dict(zip(steps, median_times(list(steps.values()), repeats), strict=True))
        (wall0, cpu0) = next(iter(times.values()))
        for (dtype, attention), (wall, cpu) in times.items():
            rows.append(dict(model=name, dtype=dtype, attention=attention,
                             step_ms=wall * 1e3, cpu_ms=cpu * 1e3, ratio=wall0 / wall,
                             cpu_ratio=cpu0 / cpu))
        print(f"  train step {name} done", flush=True)
    return rows


# ------------------------------------------------------------------------------ CLI
def _models(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated names from {list(MODELS)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = errors.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("attention", "train"), default=None,
                   help="run one table only (default both)")
    p.add_argument("--models", type=_models, default=list(MODELS),
                   help=f"comma-separated train-step models from {list(MODELS)}")
    p.add_argument("--batch", type=errors.positive_int, default=8,
                   help="examples per train step (default 8)")
    p.add_argument("--repeats", type=errors.positive_int, default=5,
                   help="timed calls per row after the warm-up (default 5)")
    errors.add_verbose_argument(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    print(machine_line(), flush=True)
    if args.only in (None, "attention"):
        print_rows("attention, causal mask: median ms; ratios = reference / fused (>1: "
                   "fused faster; cpu: process CPU time)", attention_rows(args.repeats))
    if args.only in (None, "train"):
        print_rows(f"train step (loss + grad + Adam), batch {args.batch}: median ms; ratios "
                   "= the model's first row (float32; reference attention if it has any) / "
                   "this row (>1: faster)",
                   train_step_rows(args.models, args.batch, args.repeats))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return errors.run_command(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
