"""One entry point that samples a GIVT with the decoder of its style."""

from collections.abc import Mapping
from typing import Any

import jax

from uvim_givt.models.givt import GIVT
from uvim_givt.sampling.autoregressive import sample_autoregressive
from uvim_givt.sampling.maskgit import sample_maskgit

# Settings each style reads from a sampling config, with their defaults.
STYLE_SETTINGS = {
    "ar": {"beam_size": 1, "fan_size": 1},
    "masked": {"num_steps": 16, "choice_temperature": 1.0},
}


def sample_by_style(model: GIVT, params: Any, rng: jax.Array, settings: Mapping[str, Any],
                    **kwargs: Any) -> jax.Array:
    """Samples [B, seq_len, out_dim] with the sampler of ``model.style``.

    ``settings`` is a sampling config (e.g. ``givt.sampling``): a causal model reads
    ``beam_size``/``fan_size`` from it, a MaskGIT one ``num_steps``/``choice_temperature``;
    missing keys take the defaults of ``STYLE_SETTINGS``, other keys are ignored.
    ``kwargs`` (labels, image, temperature, cfg_weight, ...) go to the sampler unchanged.
    """
    if model.style not in STYLE_SETTINGS:
        raise ValueError(f"GIVT style {model.style!r} has no sampler; expected one of "
                         f"{sorted(STYLE_SETTINGS)}")
    chosen = {k: type(d)(settings.get(k, d)) for k, d in STYLE_SETTINGS[model.style].items()}
    if model.style == "masked":
        return sample_maskgit(model, params, rng, **chosen, **kwargs)
    codes, _ = sample_autoregressive(model, params, rng, **chosen, **kwargs)
    return codes
