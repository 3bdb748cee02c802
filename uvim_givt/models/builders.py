"""Flax modules of a run's stages built from its config (one place for every command).

``build_model("givt", cfg)`` -> ``GIVT(**cfg.givt.model)``; ``build_model("vae", cfg)`` -> the
stage-1 VAE named by ``cfg.vae.kind``: ``"vit"`` (``ViTVAE`` over label maps, whose
``label_channels`` the config states), ``"vqvae"`` (``VQVAE``, the original UViM's, over
label maps with the image as context), ``"cnn"`` (``CNNVAE`` over images) or ``"vqgan"``
(``CNNVQ``, a VQ tokenizer over images on the CNN VAE's backbone);
``build_adaptor(cfg)`` -> the invertible adaptor of ``givt.adaptor`` (or None when off),
whose parameters live in the GIVT stage's tree under ``params_adaptor``. Nothing here
knows a task.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections

from uvim_givt.errors import ConfigError

Stage = Literal["givt", "vae"]
VAE_KINDS = ("vit", "vqvae", "cnn", "vqgan")


def vae_kind(cfg: ml_collections.ConfigDict) -> str:
    kind = cfg.vae.get("kind")
    if kind not in VAE_KINDS:
        raise ConfigError(f"vae.kind={kind!r}: one of {VAE_KINDS}")
    return kind


def label_channels(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
    """The label VAE's class channels: name -> (index in the label map, number of classes)
    (may be empty when the config has value channels)."""
    channels = cfg.vae.model.get("label_channels")
    if not channels and not value_channels(cfg):
        raise ConfigError("vae.model.label_channels is missing: a label VAE needs "
                          "{name: (index in the label map, number of classes)} (or "
                          "vae.model.value_channels {name: (first index, number of values)})")
    return {str(k): (int(v[0]), int(v[1])) for k, v in dict(channels or {}).items()}


def value_channels(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
    """The label VAE's value channels: name -> (first index in the label map, number of
    real values), e.g. colorization's ``{"color": (0, 3)}``; empty for class-only tasks."""
    channels = cfg.vae.model.get("value_channels") or {}
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
    """The flax module of a stage: ``GIVT`` (also for ``givt.kind="discrete"``: a GIVT with
    ``vocab_size``) or ``VTT`` (givt, by ``givt.kind``), ``ViTVAE``, ``VQVAE``, ``CNNVAE``
    or ``CNNVQ`` (vae)."""
    if stage == "givt" and str(cfg.givt.kind) == "vtt":
        from uvim_givt.models.vtt import VTT
        return _construct(VTT, "givt.model", **_kwargs(cfg.givt.model))
    if stage == "givt":
        from uvim_givt.models.givt import GIVT
        return _construct(GIVT, "givt.model", **_kwargs(cfg.givt.model))
    if stage == "vae":
        kw = _kwargs(cfg.vae.model)
        if vae_kind(cfg) == "cnn":
            from uvim_givt.models.cnn_vae import CNNVAE
            return _construct(CNNVAE, "vae.model", **kw)
        if vae_kind(cfg) == "vqgan":
            from uvim_givt.models.vqgan import CNNVQ
            return _construct(CNNVQ, "vae.model", **kw)
        kw["label_channels"] = label_channels(cfg)
        kw["value_channels"] = value_channels(cfg)
        if vae_kind(cfg) == "vqvae":
            from uvim_givt.models.vqvae import VQVAE
            return _construct(VQVAE, "vae.model", **kw)
        from uvim_givt.models.vit_vae import ViTVAE
        return _construct(ViTVAE, "vae.model", **kw)
    raise ValueError(f"unknown stage {stage!r}: givt or vae")


def adaptor_enabled(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the run has an invertible adaptor (``givt.adaptor.enabled``)."""
    return bool(cfg.givt.adaptor.enabled)


def build_adaptor(cfg: ml_collections.ConfigDict) -> Any:
    """The ``InvertibleAdaptor`` of ``givt.adaptor`` over the GIVT's sequence, or None."""
    if not adaptor_enabled(cfg):
        return None
    from uvim_givt.models import adaptor as adaptor_lib
    a, g = cfg.givt.adaptor, cfg.givt.model
    out_dim, seq_len = int(g.out_dim), int(g.seq_len)
    patch = tuple(int(v) for v in a.pixel_shuffle_patch_size)
    try:
        adaptor_lib.check_channels(out_dim, int(a.num_channels_bottleneck))
        adaptor_lib.grid_shape(seq_len, patch)
    except ValueError as e:
        raise ConfigError(f"givt.adaptor (givt.model.out_dim={out_dim}, seq_len={seq_len}, "
                          f"num_channels_bottleneck={a.num_channels_bottleneck}, "
                          f"pixel_shuffle_patch_size={patch}): {e}") from None
    return adaptor_lib.InvertibleAdaptor(
        num_channels=out_dim, num_blocks=int(a.num_blocks),
        num_channels_bottleneck=int(a.num_channels_bottleneck), pixel_shuffle_patch_size=patch)


def init_givt_stage(model: Any, adaptor: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of stage 2: the GIVT's tree, plus ``params_adaptor`` (the
    adaptor's) when there is one; without an adaptor exactly :func:`init_givt`'s tree."""
    from uvim_givt.models.adaptor import PARAMS_KEY
    k_givt, k_adaptor = jax.random.split(key)
    params = init_givt(model, k_givt if adaptor is not None else key)
    if adaptor is None:
        return params
    dummy = jnp.zeros((1, model.seq_len, model.out_dim), jnp.float32)
    return {**params, PARAMS_KEY: adaptor.init(k_adaptor, dummy)["params"]}


def vae_dummy_input(model: Any) -> jax.Array:
    """A one-example input of a stage-1 VAE: an image (CNN) or an int label map (ViT)."""
    if hasattr(model, "label_channels"):
        from uvim_givt.models import label_maps
        return label_maps.dummy(model.input_size, model.label_channels, model.value_channels)
    return jnp.zeros((1, *model.input_size, 3), jnp.float32)


def init_givt(model: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of a stage-2 model from dummy inputs: a GIVT (any style, with or
    without an encoder; real-valued tokens or, with ``vocab_size``, ids) or a VTT (ids)."""
    if getattr(model.head, "token_shape", None) == ():  # one id per position
        targets = jnp.zeros((1, model.seq_len), jnp.int32)
    else:
        targets = jnp.zeros((1, model.seq_len, model.out_dim), jnp.float32)
    labels = None if model.num_labels is None else jnp.zeros((1,), jnp.int32)
    image = jnp.zeros((1, *model.input_size, 3), jnp.float32) if model.has_encoder else None
    mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
    return model.init(key, targets, labels, image=image, input_mask=mask)["params"]


def init_params(stage: Stage, model: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of a stage's model; a model with state (the VQ-VAE's dictionary)
    gives its variables, ``{"params", "state"}``."""
    if stage == "givt":
        return init_givt(model, key)
    from uvim_givt.models.vqvae import VQVAE, init_variables
    if isinstance(model, VQVAE):
        return init_variables(model, key)
    return model.init(key, vae_dummy_input(model))["params"]


def abstract_params(stage: Stage, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The parameter tree of a stage's model as ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    model = build_model(stage, cfg)
    if stage == "givt":  # the stage's tree: with the adaptor's parameters when it has one
        adaptor = build_adaptor(cfg)
        return jax.eval_shape(lambda: init_givt_stage(model, adaptor, jax.random.PRNGKey(0)))
    return jax.eval_shape(lambda: init_params(stage, model, jax.random.PRNGKey(0)))
