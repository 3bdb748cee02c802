"""What a step's matmuls alone would cost: each distinct matmul and convolution of its
jaxpr timed on its own, times how often the step does it.

The fraction of peak says how far a step is from the device's best matmul; it does not say
why. Model matmuls have their own shapes (a 384-wide contraction, per-head attention
products), and these run below a large square matmul's rate even alone. Summing each
distinct op's standalone time over the step gives the *matmul time*: what the step would
take if it did nothing but its matmuls, each at the speed the device gives that shape. Then

* ``matmul_s / step_s`` near 1: the step is as fast as its matmul shapes allow; what is
  left is in the shapes (wider contractions, fused attention, batching of small products);
* well below 1: the rest of the step (elementwise work, memory traffic, the optimiser,
  loop and launch overhead) takes the difference.

Operations are found by :func:`flops.walk`, as :mod:`flops` counts them (a scanned body
``length`` times, a ``cond``'s costliest branch, remat's recomputation included) and
grouped by primitive, operand shapes and dtypes and parameters; each group is compiled and
timed once (median of ``repeats`` calls on random operands, less a jitted call's dispatch
overhead). Used by ``bench_train_step.py --matmuls`` and ``gpu_suite.py --matmuls``.

Only ``dot_general`` and convolutions are seen: a step whose attention runs as one opaque
kernel (cuDNN's fused attention, bf16 on a GPU, ``uvim_givt.models.common.fused_attention``)
has its attention in "the rest of the step"; the reference attention (``--set
*.model.attention=reference``) shows attention's products as matmuls.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import _machine
import flops as flops_lib
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Op:
    """One distinct matmul or convolution of a step: how often it runs, its FLOPs per call,
    where it is first seen (flax module path; ops of the same shapes elsewhere count with
    it) and, once timed, seconds per call."""

    eqn: Any
    count: int
    flops: int
    where: str
    seconds: float | None = None

    @property
    def shapes(self) -> str:
        """Primitive, operand shapes and dtypes, and a matmul's contracted axes (forward and
        backward products of the same shapes differ there)."""
        ins = " x ".join("[" + ",".join(map(str, v.aval.shape)) + "]" for v in self.eqn.invars)
        dtypes = "/".join(sorted({str(v.aval.dtype) for v in self.eqn.invars}))
        text = f"{self.eqn.primitive.name} {ins} {dtypes}"
        if self.eqn.primitive.name == "dot_general":
            (lhs, rhs), _ = self.eqn.params["dimension_numbers"]
            text += f" contracting {tuple(lhs)}x{tuple(rhs)}"
        return text

    @property
    def total_s(self) -> float | None:
        return None if self.seconds is None else self.count * self.seconds

    @property
    def flops_per_s(self) -> float | None:
        return self.flops / self.seconds if self.seconds else None


def _key(eqn: Any) -> tuple:
    avals = tuple((tuple(v.aval.shape), str(v.aval.dtype)) for v in eqn.invars)
    return (eqn.primitive.name, avals, repr(sorted(eqn.params.items())))


def _where(eqn: Any) -> str:
    """The flax module path of an op, marked ``grad`` when it is a backward-pass one."""
    stack = str(eqn.source_info.name_stack)
    backward = "transpose(" in stack
    path = re.sub(r"\b(jvp|transpose|remat|checkpoint|rematted_computation|pjit|jit)\(|\)", "",
                  stack)
    return ("grad " if backward else "") + path


def collect(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Op]:
    """The distinct matmuls and convolutions of one call ``fn(*args, **kwargs)``, costliest
    (count x FLOPs) first; arguments may be ``jax.ShapeDtypeStruct``."""
    ops: dict[tuple, Op] = {}

    def add(eqn: Any, times: int) -> None:
        key = _key(eqn)
        if key in ops:
            ops[key].count += times
        else:
            ops[key] = Op(eqn, times, flops_lib.matmul_flops(eqn), _where(eqn))

    flops_lib.walk(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, add)
    return sorted(ops.values(), key=lambda o: -o.count * o.flops)


def time_op(op: Op, repeats: int = 5, seed: int = 0) -> float:
    """Median seconds of one call of ``op`` alone (compiled once, random operands), less
    the dispatch overhead of a jitted call on the same operands that computes nothing (a
    step runs its matmuls inside one program, without a dispatch each)."""
    rng = np.random.default_rng(seed)
    args = [jnp.asarray(rng.standard_normal(v.aval.shape), v.aval.dtype) for v in op.eqn.invars]
    params = dict(op.eqn.params)
    fn = jax.jit(lambda *a: op.eqn.primitive.bind(*a, **params))
    empty = jax.jit(lambda *a: a[0].reshape(-1)[:1])

    def median(f: Callable[..., Any]) -> float:  # the warm-up call compiles
        return _machine.time_repeats(lambda: jax.block_until_ready(f(*args)),
                                     repeats)["median_s"]

    return max(median(fn) - median(empty), 0.0)


def time_all(ops: list[Op], repeats: int = 5) -> float:
    """Times every op (fills ``Op.seconds``); returns the step's matmul time, the sum of
    count x seconds."""
    for op in ops:
        op.seconds = time_op(op, repeats)
    return sum(op.total_s for op in ops)


def summary(ops: list[Op], top: int = 5) -> list[dict[str, Any]]:
    """The ``top`` ops that take the most matmul time, as JSON-friendly rows."""
    ranked = sorted(ops, key=lambda o: -(o.total_s or 0.0))[:top]
    return [{"op": o.shapes, "where": o.where, "count": o.count, "flops": o.flops,
             "seconds": o.seconds, "total_s": o.total_s, "flops_per_s": o.flops_per_s}
            for o in ranked]
