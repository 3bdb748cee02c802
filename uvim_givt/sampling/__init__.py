"""Samplers for GIVT: autoregressive (KV cache, beam/fan), MaskGIT decoding, DB-CFG; the
sampling settings as one value and the one entry point that samples by style.

The names below load their module on first use (PEP 562), so importing a light submodule
(``completion``: the completion regions, NumPy only) does not import JAX: the command line
names the regions in ``--help`` without loading the model stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "sample_autoregressive": "autoregressive",
    "guided_logdensity": "cfg",
    "rejection_sample_guided": "cfg",
    "sample_cfg": "cfg",
    "num_masked_after_step": "maskgit",
    "sample_maskgit": "maskgit",
    "SamplingSettings": "settings",
    "sample_by_style": "settings",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
