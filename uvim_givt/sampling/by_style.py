"""One entry point that samples a GIVT with the decoder of its style."""

from collections.abc import Mapping
from typing import Any

import jax

from uvim_givt.errors import ConfigError
from uvim_givt.models.givt import GIVT
from uvim_givt.sampling.autoregressive import sample_autoregressive
from uvim_givt.sampling.maskgit import sample_maskgit

# Settings each style reads from a sampling config (``givt.sampling``), with their types.
STYLE_SETTINGS = {
    "ar": {"beam_size": int, "fan_size": int},
    "masked": {"num_steps": int, "choice_temperature": float},
}
# Read when present (the configs have them; run directories made before they existed
# sample as the samplers' published defaults: no rand_top_k, cosine schedule).
OPTIONAL_SETTINGS = {
    "ar": {"rand_top_k": bool, "rand_top_k_temperature": float},
    "masked": {"schedule": str},
}
SHARED_SETTINGS = {"cfg_max_samples": int, "unconditional": bool}


def sample_by_style(model: GIVT, params: Any, rng: jax.Array, settings: Mapping[str, Any],
                    **kwargs: Any) -> jax.Array:
    """Samples [B, seq_len, out_dim] with the sampler of ``model.style``.

    ``settings`` is a sampling config (e.g. ``givt.sampling``): a causal model reads
    ``beam_size`` and ``fan_size`` from it, a MaskGIT one ``num_steps`` and
    ``choice_temperature``; a missing one is a :class:`ConfigError` (defaults live in the
    configs). Read when present: ``rand_top_k``, ``rand_top_k_temperature`` (causal),
    ``schedule`` (MaskGIT), ``cfg_max_samples`` (DB-CFG's proposals) and ``unconditional``
    (every label dropped); other keys are ignored.
    ``kwargs`` (labels, image, temperature, cfg_weight, ...) go to the sampler unchanged.
    """
    if model.style not in STYLE_SETTINGS:
        raise ValueError(f"GIVT style {model.style!r} has no sampler; expected one of "
                         f"{sorted(STYLE_SETTINGS)}")
    wanted = STYLE_SETTINGS[model.style]
    missing = sorted(set(wanted) - set(settings))
    if missing:
        raise ConfigError(f"sampling settings of a {model.style!r} GIVT lack "
                          f"{', '.join(missing)} (givt.sampling)")
    chosen = {k: cast(settings[k]) for k, cast in wanted.items()}
    optional = {**OPTIONAL_SETTINGS[model.style], **SHARED_SETTINGS}
    chosen.update({k: cast(settings[k]) for k, cast in optional.items()
                   if settings.get(k) is not None})
    if model.style == "masked":
        return sample_maskgit(model, params, rng, **chosen, **kwargs)
    codes, _ = sample_autoregressive(model, params, rng, **chosen, **kwargs)
    return codes
