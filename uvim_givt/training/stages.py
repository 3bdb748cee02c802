"""One definition per stage kind: its init, its loss, the inputs it reads, and the functions
prediction needs. Training (the runner), the held-out loss evaluator and the predictor all
use the same definition, so each stage's maths is written once, here.

* ``loss(params, batch, rng, train, frozen=None) -> (loss, parts)``: ``train=True`` is the
  training objective (dropout, posterior samples, input noise, label dropout); the held-out
  evaluator calls the same function with ``train=False`` (as big_vision's ``validation_fn``
  calls the training loss): no dropout, no noise, no label dropout; stage 1 still scores a
  posterior sample drawn from ``rng`` (the KL and reconstruction of the objective), stage 2
  scores the frozen VAE's posterior means.
* ``inputs``: the batch keys the loss reads (the runner keeps only these).

Stage kinds are registered by name (:func:`register`): stage 1 by ``vae.kind`` (``vit``:
ViT VAE over label maps; ``cnn``: CNN VAE over images, optionally with a perceptual loss and
a PatchGAN critic), stage 2 by ``givt_<givt.model.style>`` (``givt_ar`` causal,
``givt_masked`` MaskGIT). A new kind is one class registered here or in its own module.
Definitions are built once per config (:func:`stage_of`), so their compiled functions are
shared by every evaluation and predictor of a run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from uvim_givt import config as config_lib
from uvim_givt.errors import ConfigError, UserError
from uvim_givt.models import builders, image_losses, vae_losses
from uvim_givt.training.objectives import givt_nll_loss

Params = Any
Batch = dict[str, jax.Array]
#: Batch keys of the frozen VAE's posterior of each example, when stage 2 trains from cached
#: codes (``training/code_cache.py``) instead of encoding its input in the step.
CODE_MU, CODE_LOGVAR = "code_mu", "code_logvar"
_KINDS: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {}


def register(name: str) -> Callable[[type], type]:
    """Registers a stage kind under ``name`` (stage 1: a ``vae.kind``; stage 2:
    ``givt_<style>``)."""
    def add(cls: type) -> type:
        _KINDS[name] = cls
        return cls
    return add


def kind_name(cfg: ml_collections.ConfigDict, stage: str) -> str:
    if stage == "vae":
        return str(cfg.vae.kind)
    if stage == "givt":
        return f"givt_{cfg.givt.model.style}"
    raise ValueError(f"unknown stage {stage!r}: vae or givt")


def stage_of(cfg: ml_collections.ConfigDict, stage: str) -> Any:
    """The definition of ``stage`` ("vae" or "givt") of ``cfg``, built once per config."""
    name = kind_name(cfg, stage)
    if name not in _KINDS:
        key = "vae.kind" if stage == "vae" else "givt.model.style"
        raise ConfigError(f"{key}: no stage kind {name!r} (registered: {sorted(_KINDS)})")
    groups = {"vae": config_lib.to_dict(cfg.vae)}
    if stage == "givt":
        groups["givt"] = {k: v for k, v in config_lib.to_dict(cfg.givt).items()
                          if k not in ("train", "sampling", "init")}
    key = (name, _KINDS[name], json.dumps(groups, sort_keys=True, default=str))
    if key not in _BUILT:
        _BUILT[key] = _KINDS[name](cfg)
    return _BUILT[key]


_BUILT: dict[tuple[str, type, str], Any] = {}


# ------------------------------------------------------------------------------ stage 1
class _VAEStage:
    """What both VAE kinds share: the VAE module and its compiled encode / decode."""

    name = "vae"
    input_key = "image"

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.model = vae = builders.build_model("vae", cfg)
        self.beta = float(cfg.vae.beta)
        self.inputs = (self.input_key,)
        self.encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode))
        self.decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode))

    def vae_params(self, stage_params: Params) -> Params:
        """The VAE inside this stage's training parameters."""
        return stage_params

    def stage_params(self, vae_params: Params) -> Params:
        """Training parameters holding the VAE ``vae_params`` (the held-out loss's view)."""
        return vae_params

    def _forward(self, model: Any, params: Params, x: jax.Array, rng: jax.Array,
                 train: bool, dropout: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """Encode, a posterior sample from ``rng``, decode. Training: the module's own
        forward pass (dropout, code dropout); held-out: no dropout, the same sample."""
        if train:
            return model.apply({"params": params}, x, train=True, rng=rng,
                               rngs={"dropout": dropout})

        def heldout(m, x, rng):
            mu, logvar = m.encode(x, False)
            z = vae_losses.reparametrize(mu, logvar, jax.random.split(rng)[0])
            return m.decode(z, False), {"mu": mu, "logvar": logvar, "z": z}
        return model.apply({"params": params}, x, rng, method=heldout)


@register("vit")
class ViTVAEStage(_VAEStage):
    """UViM stage 1: the ViT VAE over a task's label maps; cross-entropy per label channel
    + beta KL."""

    input_key = "labels"

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        self.channels = builders.label_channels(cfg)
        self.ignore_zero = tuple(cfg.vae.ignore_zero)

    def init(self, key: jax.Array) -> Params:
        return builders.init_params("vae", self.model, key)

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        k_z, k_drop = jax.random.split(rng)
        labels = batch["labels"]
        logits, aux = self._forward(self.model, params, labels, k_z, train, k_drop)
        return vae_losses.label_vae_loss(logits, labels, aux["mu"], aux["logvar"],
                                         label_channels=self.channels, beta=self.beta,
                                         ignore_zero=self.ignore_zero)


@register("cnn")
class CNNVAEStage(_VAEStage):
    """The CNN VAE over images (MaskGIT-shaped): L2 + beta KL, optionally a VGG perceptual
    loss and a PatchGAN critic trained in the same step; params ``{"vae"[, "disc"]}``.

    Each network gets only the gradient of its own objective (``stop_gradient`` on the
    other's input). A held-out loss of VAE parameters alone (no critic) leaves the
    adversarial terms out."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        self.train_model = self.model.clone(clip_output=False)  # gradients outside [-1, 1]
        self.w_perc = float(cfg.vae.perceptual.weight)
        self.w_adv = float(cfg.vae.adversarial.weight)
        self._vgg_file = str(cfg.vae.perceptual.weights)
        self.disc = (image_losses.PatchDiscriminator(int(cfg.vae.adversarial.filters),
                                                     int(cfg.vae.adversarial.num_layers))
                     if self.w_adv > 0 else None)

    @functools.cached_property
    def vgg(self) -> Any:
        """The perceptual loss's VGG16 weights, read when the loss is first traced (building
        the definition, e.g. to check a config's model, needs no weights file)."""
        return image_losses.load_vgg16_weights(self._vgg_file) if self.w_perc > 0 else None

    def init(self, key: jax.Array) -> Params:
        k_vae, k_disc = jax.random.split(key)
        x = builders.vae_dummy_input(self.model)
        params = {"vae": self.model.init(k_vae, x)["params"]}
        if self.disc is not None:
            params["disc"] = self.disc.init(k_disc, x)["params"]
        return params

    def vae_params(self, stage_params: Params) -> Params:
        return stage_params["vae"]

    def stage_params(self, vae_params: Params) -> Params:
        return {"vae": vae_params}

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = batch["image"]
        # no dropout in the CNN VAE: the forward pass draws z (and code dropout) from rng
        recon, aux = self._forward(self.train_model, params["vae"], x, rng, train, rng)
        disc = self.disc if "disc" in params else None
        extras = {}
        if self.vgg is not None:
            extras["perceptual"] = self.w_perc * jnp.mean(
                image_losses.perceptual_distance(self.vgg, recon, x))
        if disc is not None:  # generator step: the critic's params are constants
            d_fake_g = disc.apply({"params": jax.lax.stop_gradient(params["disc"])}, recon)
            extras["generator"] = self.w_adv * image_losses.hinge_g_loss(d_fake_g)
        loss, metrics = vae_losses.vae_loss(recon, x, aux["mu"], aux["logvar"], beta=self.beta,
                                            extra_losses=extras)
        if disc is not None:  # critic step: the reconstructions are constants
            d_real = disc.apply({"params": params["disc"]}, x)
            d_fake = disc.apply({"params": params["disc"]}, jax.lax.stop_gradient(recon))
            d_loss = image_losses.hinge_d_loss(d_real, d_fake)
            loss = loss + d_loss
            metrics.update(disc=d_loss, d_real=jnp.mean(d_real), d_fake=jnp.mean(d_fake))
        metrics["mse"] = jnp.mean(jnp.square(jnp.clip(recon, -1, 1) - x))
        return loss, metrics


# ------------------------------------------------------------------------------ stage 2
class GIVTStage:
    """Stage 2: the GIVT's NLL of the frozen VAE's codes (through the invertible adaptor
    when the run has one), given the image (encoder-decoder) or the class label.

    Training models a posterior sample (``givt.posterior="sample"``) or the mean, with
    ``givt.input_noise`` on the teacher-forcing inputs; held-out scores the means. Causal
    models are teacher-forced, MaskGIT ones scored on a random mask (``objectives``)."""

    name = "givt"

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.vae = stage_of(cfg, "vae")
        self.model = model = builders.build_model("givt", cfg)
        self.adaptor = builders.build_adaptor(cfg)  # None when off
        self.sample_posterior = cfg.givt.posterior == "sample"
        self.input_noise = float(cfg.givt.input_noise)
        # what the GIVT is conditioned on; plus the VAE's input, encoded in the step (the
        # cached-codes route reads CODE_MU / CODE_LOGVAR in its place)
        self.conditioning_inputs = (("image",) if model.has_encoder else ()) + \
            (("label",) if model.num_labels is not None else ())
        self.inputs = tuple(dict.fromkeys((self.vae.input_key,) + self.conditioning_inputs))
        self.teacher_forced_means = jax.jit(self._teacher_forced_means)
        if self.adaptor is not None:
            from uvim_givt.models.adaptor import PARAMS_KEY
            adaptor = self.adaptor
            self._adaptor_key = PARAMS_KEY
            self._adapt = jax.jit(lambda p, z: adaptor.apply({"params": p}, z,
                                                             method=adaptor.forward))
            self._unadapt = jax.jit(lambda p, y: adaptor.apply({"params": p}, y,
                                                               method=adaptor.inverse))

    def init(self, key: jax.Array) -> Params:
        return builders.init_givt_stage(self.model, self.adaptor, key)

    def conditioning(self, batch: Batch) -> dict[str, Any]:
        model = self.model
        return {"image": batch["image"] if model.has_encoder else None,
                "labels": batch["label"] if model.num_labels is not None else None}

    def codes(self, vae_params: Params, batch: Batch, rng: jax.Array, train: bool
              ) -> jax.Array:
        """The frozen VAE's codes of a batch: a posterior sample (training, when the config
        says so) or the mean; of the posterior in the batch when it carries cached codes."""
        if CODE_MU in batch:
            mu, logvar = batch[CODE_MU], batch[CODE_LOGVAR]
        else:
            mu, logvar = self.vae.model.apply({"params": vae_params},
                                              batch[self.vae.input_key],
                                              method=self.vae.model.encode)
        z = vae_losses.reparametrize(mu, logvar, rng) if train and self.sample_posterior \
            else mu
        return jax.lax.stop_gradient(z)

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Params = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        if frozen is None and CODE_MU not in batch:
            raise ValueError("the GIVT stage's loss needs the frozen VAE's parameters (or "
                             "cached codes in the batch)")
        k_z, k_loss = jax.random.split(rng)
        z = self.codes(frozen, batch, k_z, train)
        nll, parts = givt_nll_loss(self.model, params, z, k_loss, **self.conditioning(batch),
                                   train=train, input_noise=self.input_noise if train else 0.0,
                                   adaptor=self.adaptor)
        parts = dict(parts)
        parts["nll_per_token"] = parts.pop("nll")
        if "weight/nll" in parts:  # a masked model's weights (training.trainer)
            parts["weight/nll_per_token"] = parts.pop("weight/nll")
        return nll, parts

    # -------------------------------------------------------------- prediction
    def adapt(self, params: Params, z: Any) -> jax.Array:
        """VAE codes -> the sequence the GIVT models (the identity without an adaptor)."""
        if self.adaptor is None:
            return jnp.asarray(z)
        return self._adapt(params[self._adaptor_key], jnp.asarray(z))

    def unadapt(self, params: Params, y: Any) -> jax.Array:
        """The GIVT's sequence -> VAE codes (the adaptor's inverse; else the identity)."""
        if self.adaptor is None:
            return jnp.asarray(y)
        return self._unadapt(params[self._adaptor_key], jnp.asarray(y))

    def _teacher_forced_means(self, params: Params, y: jax.Array, image: Any, labels: Any
                              ) -> jax.Array:
        model = self.model
        encoded = None if image is None else model.apply(
            {"params": params}, image, False, method=model.encode)
        logits = model.apply({"params": params}, y, labels, encoded, None, None, False,
                             method=model.decode)
        return model.head.mean(logits)

    def sample(self, params: Params, rng: jax.Array, settings: Any, *, image: Any = None,
               labels: Any = None, batch_size: int | None = None,
               return_trace: bool = False) -> Any:
        """VAE codes [B, seq_len, out_dim] by the sampler of the GIVT's style (through the
        adaptor's inverse); with ``return_trace`` (MaskGIT) also the decoding trace, whose
        sequences are still the GIVT's."""
        from uvim_givt.sampling.settings import sample_by_style
        batch = len(image) if image is not None else \
            len(labels) if labels is not None else batch_size
        out = sample_by_style(self.model, params, rng, settings, batch_size=batch,
                              image=None if image is None else jnp.asarray(image),
                              labels=None if labels is None else jnp.asarray(labels),
                              return_trace=return_trace)
        if return_trace:
            return self.unadapt(params, out[0]), out[1]
        return self.unadapt(params, out)


register("givt_ar")(GIVTStage)
register("givt_masked")(GIVTStage)


def require_givt(params: Params) -> None:
    if params is None:
        raise UserError("this run has no trained GIVT (train stage 2 first: --stage givt)")
