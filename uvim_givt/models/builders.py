"""Flax modules of a run's stages built from its config (one place for every command).

``build_model("givt", cfg)`` -> ``GIVT(**cfg.givt.model)``; ``build_model("vae", cfg)`` -> the
stage-1 VAE: ``CNNVAE`` for the imagenet task, else a ``ViTVAE`` whose label channels come
from the task plugin (or ``cfg.vae.model.label_channels`` when the config states them).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections

Stage = Literal["givt", "vae"]


def vae_label_channels(cfg: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
    """The ViT VAE's label channels (name -> (index in the label map, classes)) of a task."""
    model = cfg.vae.model
    if "label_channels" in model:
        return {str(k): (int(v[0]), int(v[1])) for k, v in dict(model.label_channels).items()}
    task = cfg.get("task")
    try:
        plugin = importlib.import_module(f"tasks.{task}").TASK
        return dict(plugin.label_channels(cfg))
    except (ImportError, AttributeError, TypeError):
        raise ValueError(f"no ViT VAE label channels known for task {task!r} "
                         "(set vae.model.label_channels)") from None


def _kwargs(group: Any) -> dict[str, Any]:
    d = group.to_dict() if isinstance(group, ml_collections.ConfigDict) else dict(group)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _construct(cls: type, where: str, **kw: Any) -> Any:
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"cannot build {cls.__name__} from {where}: {e}") from None


def build_model(stage: Stage, cfg: ml_collections.ConfigDict,
                label_channels: dict[str, tuple[int, int]] | None = None) -> Any:
    """The flax module of a stage: ``GIVT`` (givt), ``ViTVAE`` or, for imagenet, ``CNNVAE``."""
    if stage == "givt":
        from uvim_givt.models.givt import GIVT
        return _construct(GIVT, "cfg.givt.model", **_kwargs(cfg.givt.model))
    if stage == "vae":
        kw = _kwargs(cfg.vae.model)
        if cfg.get("task") == "imagenet":
            from uvim_givt.models.cnn_vae import CNNVAE
            return _construct(CNNVAE, "cfg.vae.model", **kw)
        from uvim_givt.models.vit_vae import ViTVAE
        kw["label_channels"] = label_channels or vae_label_channels(cfg)
        return _construct(ViTVAE, "cfg.vae.model", **kw)
    raise ValueError(f"unknown stage {stage!r}: givt or vae")


def init_givt(model: Any, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of a GIVT (any style, with or without an encoder) from dummy inputs."""
    targets = jnp.zeros((1, model.seq_len, model.out_dim), jnp.float32)
    labels = None if model.num_labels is None else jnp.zeros((1,), jnp.int32)
    image = jnp.zeros((1, *model.input_size, 3), jnp.float32) if model.has_encoder else None
    mask = jnp.zeros((1, model.seq_len), bool) if model.style == "masked" else None
    return model.init(key, targets, labels, image=image, input_mask=mask)["params"]


def abstract_params(stage: Stage, cfg: ml_collections.ConfigDict,
                    label_channels: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The parameter tree of a stage's model as ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    model = build_model(stage, cfg, label_channels)
    key = jax.random.PRNGKey(0)
    if stage == "givt":
        def init():
            return init_givt(model, key)
    elif cfg.get("task") == "imagenet":
        def init():
            return model.init(key, jnp.zeros((1, *model.input_size, 3), jnp.float32))["params"]
    else:
        channels = 1 + max(i for i, _ in model.label_channels.values())

        def init():
            x = jnp.zeros((1, *model.input_size, channels), jnp.int32)
            return model.init(key, x)["params"]
    return jax.eval_shape(init)
