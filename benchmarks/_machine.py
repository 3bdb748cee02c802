"""What every benchmark script shares: the machine, a timer, a matmul peak, tables, JSON.

The API is small and stable (other scripts import it; only additions, never changes):

* :func:`describe_machine` -> dict: CPU model, cores (online and usable), the CPU flags that
  matter for XLA (avx2, avx512f, avx512_bf16, amx_*...), python / jax / jaxlib / flax /
  optax / numpy versions, the JAX backend and device kind and count, relevant env vars.
* :func:`machine_line` -> one human line of that dict, to print above a table.
* :func:`time_repeats` -> median (and min, max, all) seconds of ``fn()`` over repeats after
  warm-up; ``fn`` must return only when its work is done (see :func:`blocked`).
* :func:`blocked` -> wraps a JAX function so that a call waits for its outputs.
* :func:`matmul_peak` -> achieved FLOP/s of a large square matmul on the default device
  (2 n^3 / median time): the "peak" that train-step FLOP/s are reported against.
* :func:`format_table` / :func:`print_table` -> a plain or markdown table of row dicts.
* :func:`write_json` -> writes ``{"machine": ..., **table}`` (creating folders) and returns
  the path; :func:`default_json_path` -> ``benchmarks/results/<script>.json``;
  :func:`add_output_arguments` -> a script's ``--markdown``, ``--json`` and ``--verbose``;
  :func:`finish` -> a script's last step: writes the JSON, says where, returns its content.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

#: CPU flags worth knowing when reading CPU numbers (vector width, bf16/int8 matmul units)
_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
              "amx_bf16", "amx_tile", "amx_int8")
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
_ENV_VARS = ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS")

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ------------------------------------------------------------------------------ machine
def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo; platform's answer elsewhere."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                if model and flags and key == "":
                    break
    except OSError:
        pass
    return model, flags


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict[str, Any]:
    """The machine a measurement was taken on (JSON-serialisable)."""
    try:
        import jax  # late: the import reads XLA_FLAGS, which a script may set first
    except ImportError:  # bench_pq.py runs beside panopticapi (numpy<2), without JAX
        jax = None

    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    devices = jax.devices() if jax is not None else []
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "backend": jax.default_backend() if jax is not None else "none (no jax)",
        "device_kind": devices[0].device_kind if devices else "cpu",
        "device_count": len(devices),
        "env": {k: os.environ[k] for k in _ENV_VARS if k in os.environ},
        "argv": [os.path.basename(sys.argv[0])] + sys.argv[1:],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """One line: device, CPU, cores, flags, versions."""
    v = info["versions"]
    return (f"{info['backend']}:{info['device_kind']} x{info['device_count']} | "
            f"{info['cpu_model']} ({info['cpu_usable']}/{info['cpu_count']} cores usable; "
            f"{' '.join(info['cpu_flags']) or 'no listed flags'}) | "
            f"jax {v['jax']} jaxlib {v['jaxlib']} flax {v['flax']} numpy {v['numpy']}")


# ------------------------------------------------------------------------------- timing
def blocked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose call returns only when its (JAX) outputs are computed."""
    import jax

    def call(*args: Any, **kwargs: Any) -> Any:
        return jax.block_until_ready(fn(*args, **kwargs))
    return call


def time_repeats(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Seconds per call of ``fn()`` (which must block): median, min, max and every repeat.

    The median, not the mean: on a shared machine single repeats are slowed by others."""
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times), "times_s": times}


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, Any]:
    """Achieved FLOP/s of one jitted ``(n, n) @ (n, n)`` on the default device.

    A large square matmul is the best case for XLA's CPU (and GPU) backends, so it is the
    ceiling the achieved FLOP/s of a model's step is compared with."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype=jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), dtype=jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    t = time_repeats(lambda: mm(a, b).block_until_ready(), repeats=repeats, warmup=1)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": dtype, "flops": flops, "median_s": t["median_s"],
            "flops_per_s": flops / t["median_s"], "best_flops_per_s": flops / t["min_s"]}


# ------------------------------------------------------------------------------- tables
def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None,
                 markdown: bool = False) -> str:
    """Rows (dicts) as an aligned plain table, or a markdown one (for benchmarks/README.md).

    ``columns`` picks and orders the keys (default: the first row's keys)."""
    rows = list(rows)
    cols = list(columns) if columns is not None else list(rows[0]) if rows else []
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None,
                title: str | None = None, markdown: bool = False) -> None:
    """Prints :func:`format_table`, with an optional title line above it."""
    if title:
        print(title)
    print(format_table(rows, columns, markdown=markdown), flush=True)


# --------------------------------------------------------------------------------- JSON
def default_json_path(script: str) -> str:
    """``benchmarks/results/<script name without .py>.json`` (git-ignored)."""
    name = os.path.splitext(os.path.basename(script))[0]
    return os.path.join(RESULTS_DIR, name + ".json")


def write_json(path: str, table: Mapping[str, Any],
               machine: Mapping[str, Any] | None = None) -> str:
    """Writes ``{"machine": machine or describe_machine(), **table}``; returns ``path``."""
    out = {"machine": dict(machine) if machine is not None else describe_machine(), **table}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def add_output_arguments(p: Any, script: str, markdown: bool = True) -> None:
    """A script's output flags on its argparse parser ``p``: ``--markdown`` (a markdown
    table; unless ``markdown=False``), ``--json`` (default :func:`default_json_path` of
    ``script``) and ``--verbose`` (tracebacks)."""
    from uvim_givt import errors

    if markdown:
        p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--json", default=default_json_path(script),
                   help="where to write the results (default benchmarks/results/)")
    errors.add_verbose_argument(p)


def finish(path: str, table: Mapping[str, Any], machine: Mapping[str, Any]) -> dict[str, Any]:
    """A script's last step: :func:`write_json`, a ``wrote PATH`` line, and the written
    ``{"machine": machine, **table}`` returned (what a script's ``run`` returns)."""
    print(f"wrote {write_json(path, table, machine)}")
    return {"machine": machine, **table}


def row_plan(args: Any, name: str, size: str, default_batch: Mapping[str, int],
             quick_batch: int, repeats: tuple[int, int]) -> tuple[int, int]:
    """(batch, repeats) of one benchmark row: ``--quick`` (one repeat of ``quick_batch``),
    else ``--batch`` / ``--repeats`` or the defaults (``repeats`` = (paper, other sizes)),
    announced on stdout."""
    batch = quick_batch if args.quick else args.batch or default_batch[size]
    n = 1 if args.quick else args.repeats or (repeats[0] if size == "paper" else repeats[1])
    print(f"{name} {size}: batch {batch}, {n} repeats ...", flush=True)
    return batch, n


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, and anything else as its string."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
