"""Model FLOPs of a function, counted from its jaxpr: the matmuls and convolutions it does.

MFU needs FLOPs that do not depend on how the step was compiled. XLA's cost analysis does
not qualify on GPUs: with autotuning on, the cuBLAS / cuDNN custom calls it picks are not
counted (a paper-size stage-2 step read 15.2 TFLOP instead of 43.4, issue #28). Here every
``dot_general`` counts ``2 x (output elements) x (contracted size)`` and every convolution
``2 x (output elements) x (input features per group) x (kernel window)`` (over the real
input elements of a dilated input: a strided convolution's gradient), from shapes alone;
a ``scan`` body counts ``length`` times, a ``cond`` its costliest branch, remat's
recomputation counts (it is work the device does). Elementwise ops are left out (the usual
convention of MFU; they are a few % of a transformer step). A ``while`` loop whose trip
count is not static cannot be counted: :func:`count` raises rather than under-report.

tests/test_benchmarks.py checks the count against XLA's own on the CPU (no custom calls
there), and against closed forms for a dense layer and a convolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn: Any) -> int:
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2 * math.prod(out.shape) * contracted


def _conv_flops(eqn: Any) -> int:
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    dn = eqn.params["dimension_numbers"]
    # rhs_spec: (out feature dim, in feature dim, spatial dims...)
    rhs_spec = dn.rhs_spec
    in_features = rhs.shape[rhs_spec[1]]
    window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    # A dilated input (the gradient of a strided convolution) is mostly inserted zeros: only
    # 1 / prod(lhs_dilation) of the window's taps meet a real input element.
    dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2 * math.prod(out.shape) * in_features * window // dilation


def _sub_jaxprs(value: Any) -> list[Any]:
    """The jaxprs inside one equation parameter (a jaxpr, a closed jaxpr, or tuples of them)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


#: the primitives counted: matmuls and convolutions
MATMUL_PRIMITIVES = ("dot_general", "conv_general_dilated")


def matmul_flops(eqn: Any) -> int:
    """FLOPs of one ``dot_general`` or ``conv_general_dilated`` equation, from its shapes."""
    return _dot_flops(eqn) if eqn.primitive.name == "dot_general" else _conv_flops(eqn)


def walk(jaxpr: Any, visit: Callable[[Any, int], None], times: int = 1) -> None:
    """Calls ``visit(eqn, n)`` for every matmul and convolution of ``jaxpr``, ``n`` being how
    often one call runs it: a ``scan`` body ``length`` times, a ``cond``'s costliest branch,
    pjit / remat / custom-derivative bodies once."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in MATMUL_PRIMITIVES:
            visit(eqn, times)
        elif name == "scan":
            walk(eqn.params["jaxpr"].jaxpr, visit, times * int(eqn.params["length"]))
        elif name == "cond":
            costliest = max(eqn.params["branches"], key=lambda b: _count_jaxpr(b.jaxpr))
            walk(costliest.jaxpr, visit, times)
        elif name == "while":
            if _count_jaxpr(eqn.params["body_jaxpr"].jaxpr):
                raise ValueError("a while loop with matmuls in its body: its trip count is not "
                                 "static, so its FLOPs cannot be counted")
        else:  # pjit, remat, custom_jvp / custom_vjp calls, shard_map...: their bodies, once
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    walk(sub, visit, times)


def _count_jaxpr(jaxpr: Any) -> int:
    total = 0

    def add(eqn: Any, times: int) -> None:
        nonlocal total
        total += times * matmul_flops(eqn)

    walk(jaxpr, add)
    return total


def count(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The matmul and convolution FLOPs of one call ``fn(*args, **kwargs)``; arguments may
    be arrays or ``jax.ShapeDtypeStruct`` (nothing is computed or compiled)."""
    return _count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
