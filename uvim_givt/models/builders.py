"""Flax modules of a run's stages built from its config (one place for every command).

``build_model("givt", cfg)`` -> ``GIVT(**cfg.givt.model)``; ``build_model("vae", cfg)`` -> the
stage-1 VAE named by ``cfg.vae.kind``: ``"vit"`` (``ViTVAE`` over label maps, whose
``label_channels`` the config states) or ``"cnn"`` (``CNNVAE`` over images). Nothing here
knows a task.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections

from uvim_givt.errors import ConfigError

Stage = Literal["givt", "vae"]
VAE_KINDS = ("vit", "cnn")


def vae_kind(cfg: ml_collections.ConfigDict) -> str:
    kind = cfg.vae.get("kind")
    if kind not in VAE_KINDS:
        raise ConfigError(f"vae.kind={kind!r}: one of {VAE_KINDS}")
    return kind


def label_channels(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
    """The ViT VAE's label channels: name -> (index in the label map, number of classes)."""
    channels = cfg.vae.model.get("label_channels")
    if not channels:
        raise ConfigError("vae.model.label_channels is missing: a ViT VAE needs "
                          "{name: (index in the label map, number of classes)}")
    return {str(k): (int(v[0]), int(v[1])) for k, v in dict(channels).items()}


def _kwargs(group: Any) -> dict[str, Any]:
    d = group.to_dict() if isinstance(group, ml_collections.ConfigDict) else dict(group)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _construct(cls: type, where: str, **kw: Any) -> Any:
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"cannot build {cls.__name__} from {where}: {e}") from None


def build_model(stage: Stage, cfg: ml_collections.ConfigDict) -> Any:
    """The flax module of a stage: ``GIVT`` (givt), ``ViTVAE`` or ``CNNVAE`` (vae)."""
    if stage == "givt":
        from uvim_givt.models.givt import GIVT
        return _construct(GIVT, "givt.model", **_kwargs(cfg.givt.model))
    if stage == "vae":
        kw = _kwargs(cfg.vae.model)
        if vae_kind(cfg) == "cnn":
            from uvim_givt.models.cnn_vae import CNNVAE
            return _construct(CNNVAE, "vae.model", **kw)
        from uvim_givt.models.vit_vae import ViTVAE
        kw["label_channels"] = label_channels(cfg)
        return _construct(ViTVAE, "vae.model", **kw)
    raise ValueError(f"unknown stage {stage!r}: givt or vae")


def vae_dummy_input(model: Any) -> jax.Array:
    """A one-example input of a stage-1 VAE: an image (CNN) or an int label map (ViT)."""
    if hasattr(model, "label_channels"):
        channels = 1 + max(i for i, _ in model.label_channels.values())
        return jnp.zeros((1, *model.input_size, channels), jnp.int32)
    return jnp.zeros((1, *model.input_size, 3), jnp.float32)


def init_givt(model: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of a GIVT (any style, with or without an encoder) from dummy inputs."""
    targets = jnp.zeros((1, model.seq_len, model.out_dim), jnp.float32)
    labels = None if model.num_labels is None else jnp.zeros((1,), jnp.int32)
    image = jnp.zeros((1, *model.input_size, 3), jnp.float32) if model.has_encoder else None
    mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
    return model.init(key, targets, labels, image=image, input_mask=mask)["params"]


def init_params(stage: Stage, model: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of a stage's model."""
    if stage == "givt":
        return init_givt(model, key)
    return model.init(key, vae_dummy_input(model))["params"]


def abstract_params(stage: Stage, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parameter tree of a stage's model as ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    model = build_model(stage, cfg)
    return jax.eval_shape(lambda: init_params(stage, model, jax.random.PRNGKey(0)))
