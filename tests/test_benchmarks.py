"""The benchmark scripts run (in their --quick / --smoke modes) and write what they document.

Speed is not asserted here (benchmarks print medians); these tests keep the scripts from
rotting: each runs in-process on the tiny presets and its JSON has the documented fields.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import _machine  # noqa: E402
import bench_sampling  # noqa: E402
import bench_train_step  # noqa: E402
import flops  # noqa: E402
import gpu_suite  # noqa: E402
import matmuls  # noqa: E402

from uvim_givt import config as config_lib  # noqa: E402
from uvim_givt.errors import ConfigError  # noqa: E402

MACHINE_KEYS = {"cpu_model", "cpu_count", "cpu_usable", "cpu_flags", "python", "versions",
                "backend", "device_kind", "device_count"}


def _read(path) -> dict:
    with open(path) as f:
        out = json.load(f)
    assert MACHINE_KEYS <= set(out["machine"])
    assert {"jax", "jaxlib", "flax", "numpy"} <= set(out["machine"]["versions"])
    return out


def test_machine_helpers(tmp_path):
    rows = [{"a": 1, "b": 2.5e9}, {"a": "x", "b": None}]
    plain = _machine.format_table(rows).splitlines()
    assert plain[0].split() == ["a", "b"] and plain[2].split() == ["1", "2.5e+09"]
    assert _machine.format_table(rows, markdown=True).splitlines()[1] == "|---|---|"
    t = _machine.time_repeats(lambda: None, repeats=3, warmup=0)
    assert t["repeats"] == 3 and t["min_s"] <= t["median_s"] <= t["max_s"]
    peak = _machine.matmul_peak(64, repeats=1)
    assert peak["flops"] == 2 * 64 ** 3 and peak["flops_per_s"] > 0
    path = _machine.write_json(str(tmp_path / "sub" / "x.json"), {"rows": rows})
    assert _read(path)["rows"][0] == {"a": 1, "b": 2.5e9}


def test_cost_analysis_counts_a_matmul():
    # XLA's count of one (m, k) @ (k, n) is 2 m k n, the brute-force multiply-adds.
    a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
    cost = bench_train_step.cost_of(jax.jit(jnp.matmul).lower(a, b))
    assert cost["flops"] == pytest.approx(2 * 32 * 48 * 16)


def test_model_flops_of_closed_forms():
    """Dense layer, convolution (padding taps included, as the hardware does them), a scan
    (its body once per step) and a gradient (twice the forward's matmuls more)."""
    x, w = jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 32), jnp.float32)
    assert flops.count(jnp.dot, x, w) == 2 * 8 * 16 * 32
    img = jax.ShapeDtypeStruct((2, 10, 10, 3), jnp.float32)
    ker = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
    conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops.count(conv, img, ker) == 2 * (2 * 5 * 5 * 4) * 3 * 9
    sq = jax.ShapeDtypeStruct((16, 16), jnp.float32)

    def loop(w, x):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0].sum()
    assert flops.count(loop, sq, jax.ShapeDtypeStruct((8, 16), jnp.float32)) == 5 * 2 * 8 * 16 * 16
    assert flops.count(jax.grad(loop), sq, jax.ShapeDtypeStruct((8, 16), jnp.float32)) \
        == 3 * 5 * 2 * 8 * 16 * 16


def test_model_flops_match_xla_on_the_cpu():
    """The jaxpr count of a whole stage-2 train step (encoder, decoder, GMM head, the frozen
    VAE's encoder, the optimiser) against XLA's count of the same step unrolled, lowered for
    the CPU (no custom calls there): within 5% (XLA also counts elementwise ops). The model
    is scanned (with remat): its count is that of the unrolled layers, not the recomputed."""
    cfg = bench_train_step.load_stage_config("encdec", "tiny", "configs/panoptic.py")
    batch = bench_train_step.synthetic_batch(cfg, 2)
    cfg = bench_train_step.config_lib.apply_overrides(cfg, ["givt.model.scan=True"])
    ours = bench_train_step.model_flops(cfg, "givt", batch)
    plain = bench_train_step.config_lib.apply_overrides(
        bench_train_step.reference_attention(cfg), ["givt.model.scan=False"])
    step, init, frozen = bench_train_step.build_step(plain, "givt")
    params, opt = jax.eval_shape(init, jax.random.PRNGKey(0))
    xla = bench_train_step.cost_of(jax.jit(step).lower(params, opt, batch, 0, frozen))["flops"]
    assert 0.95 * xla <= ours <= xla, (ours, xla)


def test_matmul_time_of_a_step():
    """``matmuls.collect`` finds each distinct matmul once with how often it runs (a scan's
    body once per step, the gradient's products too), their FLOPs add up to flops.count's,
    and the matmul time is the sum of count x the standalone time of each."""
    w = jax.ShapeDtypeStruct((16, 16), jnp.float32)
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    v = jax.ShapeDtypeStruct((16, 4), jnp.float32)

    def loss(w, x, v):
        y = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]
        return jnp.sum(y @ v)

    (forward,) = [o for o in matmuls.collect(loss, w, x, v) if o.count == 5]
    assert forward.flops == 2 * 8 * 16 * 16 and "[8,16] x [16,16]" in forward.shapes
    grad = jax.grad(loss, argnums=(0, 2))
    ops = matmuls.collect(grad, w, x, v)
    assert sum(o.count * o.flops for o in ops) == flops.count(grad, w, x, v)
    # 5 forward products, 5 + 5 in the backward (the input's and the weight's gradients),
    # the head's forward one and its two gradients
    assert sum(o.count for o in ops) == 3 * 5 + 3
    assert any(o.where.startswith("grad") for o in ops)
    total = matmuls.time_all(ops, repeats=2)
    assert all(o.seconds > 0 for o in ops)
    assert total == pytest.approx(sum(o.count * o.seconds for o in ops))
    top = matmuls.summary(ops, top=2)
    assert len(top) == 2 and top[0]["total_s"] >= top[1]["total_s"]


def test_overrides_reach_every_config_that_has_the_key():
    vit = bench_train_step.load_stage_config("vit_vae", "tiny", "configs/panoptic.py")
    cnn = bench_train_step.load_stage_config("cnn_vae", "tiny", "configs/panoptic.py")
    bench_train_step.apply_matching_overrides([vit, cnn], ["vae.beta=0.5",
                                                           "vae.perceptual.weight=0.25"])
    assert vit.vae.beta == 0.5 and cnn.vae.beta == 0.5 and cnn.vae.perceptual.weight == 0.25
    with pytest.raises(ConfigError, match="vae.betta"):
        bench_train_step.apply_matching_overrides([vit, cnn], ["vae.betta=1"])


def test_train_step_quick(tmp_path):
    path = tmp_path / "train.json"
    # One decoder layer: the scripts' code paths at a fraction of the compile time.
    assert bench_train_step.main(["--quick", "--stages", "givt_causal", "--json", str(path),
                                  "--set", "givt.model.num_decoder_layers=1",
                                  "--matmuls"]) == 0
    out = _read(path)
    assert out["peak"]["flops_per_s"] > 0
    (row,) = out["rows"]
    assert row["stage"] == "givt_causal" and row["size"] == "tiny" and row["batch"] == 4
    for key in ("params", "step_s", "examples_per_s", "flops_per_step", "xla_flops_per_step",
                "bytes_per_step",
                "achieved_flops_per_s", "fraction_of_peak", "compile_s"):
        assert row[key] > 0, key
    assert row["examples_per_s"] == pytest.approx(4 / row["step_s"])
    assert row["matmul_share"] == pytest.approx(row["matmul_s"] / row["step_s"])
    assert row["distinct_matmuls"] >= 5 and len(row["top_matmuls"]) == 5


def test_sampling_quick(tmp_path):
    path = tmp_path / "sampling.json"
    assert bench_sampling.main(["--quick", "--modes", "ar_plain", "--json", str(path),
                                "--set", "givt.model.num_decoder_layers=1"]) == 0
    (row,) = _read(path)["rows"]
    assert (row["mode"], row["seq_len"], row["token_dim"], row["batch"]) == \
        ("ar_plain", 64, 4, 2)
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["sample_s"])
    assert row["images_per_s"] == pytest.approx(2 / row["sample_s"])


def test_gpu_suite_smoke(tmp_path, capsys):
    """Rows in processes of their own, bf16 first, the headline variant's rows (smaller
    size first, both stages) before the sampling row, the JSON rewritten per row, a row
    over its time limit reported as skipped, the compile cache filled."""
    assert gpu_suite.plan_rows(["fp32", "bf16", "bf16_fused"], ["base", "paper"]) == [
        ("train", "bf16", "base", "encdec"), ("train", "bf16", "base", "vit_vae"),
        ("train", "bf16", "paper", "encdec"), ("train", "bf16", "paper", "vit_vae"),
        ("sampling",),
        ("train", "bf16_fused", "base", "encdec"), ("train", "bf16_fused", "base", "vit_vae"),
        ("train", "bf16_fused", "paper", "encdec"), ("train", "bf16_fused", "paper", "vit_vae"),
        ("train", "fp32", "base", "encdec"), ("train", "fp32", "base", "vit_vae"),
        ("train", "fp32", "paper", "encdec"), ("train", "fp32", "paper", "vit_vae")]
    assert gpu_suite.plan_rows(["fp32"], ["tiny"], ["vit_vae"], sampling=False) == [
        ("train", "fp32", "tiny", "vit_vae")]
    # the scanned stage 2 on its own stage only, after the headline; every row's overrides
    assert gpu_suite.plan_rows(list(gpu_suite.VARIANTS), ["base"], sampling=False)[:4] == [
        ("train", "bf16_fused", "base", "encdec"), ("train", "bf16_fused", "base", "vit_vae"),
        ("train", "bf16_fused_scan", "base", "encdec"), ("train", "bf16", "base", "encdec")]
    assert gpu_suite.main(["--smoke", "--variants", "bf16_fused_scan", "--stages", "vit_vae",
                           "--no-sampling", "--json", str(tmp_path / "none.json")]) == 2
    assert "--variants bf16_fused_scan: measured on --stages encdec only" in \
        capsys.readouterr().err
    cfg = config_lib.load_config("configs/panoptic.py")
    assert gpu_suite.variant_overrides(cfg, "bf16_fused_scan") == ([
        "givt.model.dtype=bfloat16", "vae.model.dtype=bfloat16", "givt.model.attention=fused",
        "vae.model.attention=fused", "givt.model.scan=True"], [])
    path, cache = tmp_path / "gpu.json", tmp_path / "cache"
    assert gpu_suite.main(["--smoke", "--variants", "bf16_fused", "--no-sampling",
                           "--json", str(path), "--cache-dir", str(cache),
                           "--set", "givt.model.num_layers=1", "--matmuls"]) == 0
    out = _read(path)
    assert out["peak"]["measured_bf16"]["flops_per_s"] > 0
    assert [(r["stage"], r["variant"]) for r in out["train"]] == [
        ("encdec", "bf16_fused"), ("vit_vae", "bf16_fused")]
    for row in out["train"]:
        assert row["step_s"] > 0 and row["mfu_measured"] > 0 and row["flops_per_step"] > 0
        assert {"givt.model.dtype=bfloat16", "vae.model.dtype=bfloat16"} <= \
            set(row["overrides"])
        assert 0 < row["matmul_s"] and row["top_matmuls"][0]["count"] >= 1
    assert any(cache.iterdir())
    assert gpu_suite.main(["--smoke", "--variants", "fp32", "--stages", "encdec",
                           "--no-sampling", "--row-limit", "0.5", "--json", str(path),
                           "--cache-dir", str(cache)]) == 0
    (row,) = _read(path)["train"]
    assert row["skipped"].startswith("over the 0.5 s row limit") and "step_s" not in row
    assert gpu_suite.nominal_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert gpu_suite.nominal_peak("cpu") is None
