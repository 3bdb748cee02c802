"""Samplers for GIVT: autoregressive (KV cache, beam/fan), MaskGIT decoding, DB-CFG."""

from uvim_givt.sampling.autoregressive import sample_autoregressive
from uvim_givt.sampling.cfg import guided_logdensity, rejection_sample_guided, sample_cfg
from uvim_givt.sampling.maskgit import MASK_SCHEDULES, num_masked_after_step, sample_maskgit

__all__ = [
    "MASK_SCHEDULES",
    "guided_logdensity",
    "num_masked_after_step",
    "rejection_sample_guided",
    "sample_autoregressive",
    "sample_cfg",
    "sample_maskgit",
]
