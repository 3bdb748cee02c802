"""MaskGIT mask schedules: the fraction of a sequence still masked at progress r in [0, 1].

One definition serves training (the mask ratio of a random training mask, the GIVT's
``mask_schedule_train``) and decoding (how many tokens stay masked after each step,
``givt.sampling.schedule``), as in big_vision's ``apply_mask_schedule``:

* ``cosine``: cos(pi/2 * r) (MaskGIT's default);
* ``linear``: 1 - r (the same as ``pow:1``);
* ``pow:k``: 1 - r**k for a real k > 0 (k > 1 uncovers few tokens early, many late).

Values are clipped to [1e-6, 1], as published.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_POW = re.compile(r"^pow:(\d+(\.\d*)?|\.\d+)$")


def check_schedule(name: str) -> str:
    """``name`` if it is a known schedule, else ValueError naming the choices."""
    if name in ("cosine", "linear") or (_POW.match(name) and float(name[4:]) > 0):
        return name
    raise ValueError(f"unknown mask schedule {name!r}: cosine, linear or pow:K with K > 0")


def mask_ratio(ratio: jax.Array | float, schedule: str = "cosine") -> jax.Array:
    """Fraction of tokens still masked at progress ``ratio`` under ``schedule``."""
    check_schedule(schedule)
    ratio = jnp.asarray(ratio, jnp.float32)
    if schedule == "cosine":
        frac = jnp.cos(jnp.pi / 2.0 * ratio)
    elif schedule == "linear":
        frac = 1.0 - ratio
    else:
        frac = 1.0 - ratio ** float(schedule[4:])
    return jnp.clip(frac, 1e-6, 1.0)
