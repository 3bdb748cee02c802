"""Sampling settings as one value, and the one entry point that samples a GIVT by its style.

``SamplingSettings.from_config(cfg, overrides)`` reads ``givt.sampling`` (every key is in
the configs: ``configs/common.py:sampling_group``), puts a command's overrides over it
(``None`` = keep the config's), checks the combination once, and is then passed whole:
the predictor, the evaluators, the ``sample`` / ``sweep`` commands and the MaskGIT
trajectory all sample through :func:`sample_by_style` with it, and none of them reads
``givt.sampling`` again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How stage 2 is sampled (``givt.sampling``, after a command's overrides)."""

    style: str  # the GIVT's: "ar" (causal) or "masked" (MaskGIT)
    temperature: float  # of the mixture components' spread
    temperature_probs: float  # of the mixture weights
    cfg_weight: float  # DB-CFG guidance weight (0 = the conditional model, no guidance)
    cfg_max_samples: int  # DB-CFG's rejection-sampling proposals per token
    unconditional: bool  # every label dropped (no class, no guidance)
    num_samples: int  # dense tasks: code samples per image, their class maps averaged
    test_time_flip: bool  # dense tasks: odd draws sample the mirrored image
    beam_size: int  # causal: beam search (1 = ancestral sampling)
    fan_size: int  # causal: candidates per beam and step
    rand_top_k: bool  # causal beam search: survivors drawn, not the best
    rand_top_k_temperature: float
    num_steps: int  # MaskGIT: decoding steps
    choice_temperature: float  # MaskGIT: t_C of the token choice
    schedule: str  # MaskGIT: cosine | linear | pow:K

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any] | None = None) -> SamplingSettings:
        """``givt.sampling`` of ``cfg`` with the ``overrides`` that are not None, checked."""
        group = cfg.givt.sampling
        names = [f.name for f in dataclasses.fields(cls) if f.name != "style"]
        missing = [n for n in names if n not in group]
        if missing:
            raise ConfigError(f"givt.sampling lacks {', '.join(missing)} (every sampling key "
                              "is in configs/common.py:sampling_group)")
        values = {n: group[n] for n in names}
        unknown = sorted(set(overrides or {}) - set(names))
        if unknown:
            raise ConfigError(f"no sampling setting {unknown[0]!r} (settings: {names})")
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls._checked(config_lib.stage2_style(cfg), values)

    @classmethod
    def _checked(cls, style: str, values: Mapping[str, Any]) -> SamplingSettings:
        """Raw values checked by their schema rules first (a float where an int belongs, a
        string where a flag belongs: refused, never cast), then typed."""
        _check_rules(style, values)
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        cast = {"int": int, "float": float, "bool": bool, "str": str}
        settings = cls(style=style, **{k: cast[types[k]](v) for k, v in values.items()})
        settings.check()
        return settings

    def replace(self, **overrides: Any) -> SamplingSettings:
        """These settings with ``overrides`` (None = keep), checked."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "style"}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise ConfigError(f"no sampling setting {unknown[0]!r} (settings: {list(values)})")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return self._checked(self.style, values)

    def check(self) -> None:
        """Each value by its rule (:mod:`uvim_givt.schema`, the one place key ranges live),
        then the combinations no sampler accepts, refused by the keys that break them."""
        _check_rules(self.style, {f.name: getattr(self, f.name)
                                  for f in dataclasses.fields(self) if f.name != "style"})
        if self.unconditional and self.cfg_weight:
            raise ConfigError("givt.sampling.unconditional drops every label: it takes no "
                              f"guidance (cfg_weight={self.cfg_weight:g})")
        if (self.style == "ar" and self.cfg_weight
                and (self.beam_size > 1 or self.fan_size > 1)):
            raise ConfigError(f"beam search (beam_size={self.beam_size}, fan_size="
                              f"{self.fan_size}) and DB-CFG (cfg_weight={self.cfg_weight:g}) "
                              "do not combine: set cfg_weight=0 or beam_size=fan_size=1")

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the sampler of this style."""
        shared = dict(temperature=self.temperature, temperature_probs=self.temperature_probs,
                      cfg_weight=self.cfg_weight or None,
                      cfg_max_samples=self.cfg_max_samples,
                      unconditional=self.unconditional)
        if self.style == "masked":
            return dict(shared, num_steps=self.num_steps,
                        choice_temperature=self.choice_temperature, schedule=self.schedule)
        return dict(shared, beam_size=self.beam_size, fan_size=self.fan_size,
                    rand_top_k=self.rand_top_k,
                    rand_top_k_temperature=self.rand_top_k_temperature)

    def describe(self) -> str:
        """A short title: the settings that shape the samples."""
        parts = [f"t={self.temperature:g}"]
        if self.cfg_weight:
            parts.append(f"DB-CFG {self.cfg_weight:g}")
        if self.unconditional:
            parts.append("unconditional")
        if self.style == "masked":
            parts.append(f"{self.num_steps} steps, t_C={self.choice_temperature:g}, "
                         f"{self.schedule}")
        elif self.beam_size > 1 or self.fan_size > 1:
            parts.append(f"beam {self.beam_size}, fan {self.fan_size}"
                         + (f", rand_top_k t={self.rand_top_k_temperature:g}"
                            if self.rand_top_k else ""))
        return ", ".join(parts)


def _check_rules(style: str, values: Mapping[str, Any]) -> None:
    from uvim_givt import schema

    schema.check(ml_collections.ConfigDict(
        {"givt": {"sampling": dict(values), "model": {"style": style}}}), schema.LIBRARY_RULES)


def sample_by_style(model: Any, params: Any, rng: jax.Array, settings: SamplingSettings, *,
                    return_trace: bool = False, **inputs: Any) -> Any:
    """Codes [B, seq_len, out_dim] sampled with the sampler of ``settings.style``.

    ``inputs``: ``labels`` [B] and/or ``image`` [B, H, W, 3], or ``batch_size``; with
    ``return_trace`` (MaskGIT only) also the per-step trace."""
    from uvim_givt.sampling.autoregressive import sample_autoregressive
    from uvim_givt.sampling.maskgit import sample_maskgit

    if model.style != settings.style:
        raise ValueError(f"settings for a {settings.style!r} GIVT, the model is "
                         f"{model.style!r}")
    if settings.style == "masked":
        return sample_maskgit(model, params, rng, **settings.sampler_kwargs(),
                              return_trace=return_trace, **inputs)
    if return_trace:
        raise ValueError("the decoding trace is MaskGIT's (a causal GIVT has none)")
    codes, _ = sample_autoregressive(model, params, rng, **settings.sampler_kwargs(), **inputs)
    return codes
