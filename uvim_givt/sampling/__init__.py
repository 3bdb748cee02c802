"""Samplers for GIVT: autoregressive (KV cache, beam/fan), MaskGIT decoding, DB-CFG; the
sampling settings as one value and the one entry point that samples by style."""

from uvim_givt.sampling.autoregressive import sample_autoregressive
from uvim_givt.sampling.cfg import guided_logdensity, rejection_sample_guided, sample_cfg
from uvim_givt.sampling.maskgit import num_masked_after_step, sample_maskgit
from uvim_givt.sampling.settings import SamplingSettings, sample_by_style

__all__ = [
    "SamplingSettings",
    "guided_logdensity",
    "num_masked_after_step",
    "rejection_sample_guided",
    "sample_autoregressive",
    "sample_by_style",
    "sample_cfg",
    "sample_maskgit",
]
