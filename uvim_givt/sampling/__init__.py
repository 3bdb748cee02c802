"""Samplers for GIVT: autoregressive (KV cache, beam/fan), MaskGIT decoding, DB-CFG."""

from uvim_givt.sampling.autoregressive import sample_autoregressive
from uvim_givt.sampling.by_style import STYLE_SETTINGS, sample_by_style
from uvim_givt.sampling.cfg import guided_logdensity, rejection_sample_guided, sample_cfg
from uvim_givt.sampling.maskgit import num_masked_after_step, sample_maskgit

__all__ = [
    "STYLE_SETTINGS",
    "guided_logdensity",
    "num_masked_after_step",
    "rejection_sample_guided",
    "sample_autoregressive",
    "sample_by_style",
    "sample_cfg",
    "sample_maskgit",
]
