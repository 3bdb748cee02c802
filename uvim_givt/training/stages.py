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
* ``oracle(vae_params, x, image)``: stage 1 alone, the decoded code of the ground truth
  (``image``: the context of the kinds that read it, else unused).
* A kind with state learnt outside the gradient (``vqvae``: its dictionary) has
  ``init_state(key)`` and ``train_loss(params, state, batch, rng) -> (loss, (parts,
  new_state))`` (the trainer carries and checkpoints the state, ``trainer.Stage``); its
  ``vae_params`` are the variables ``{"params", "state"}`` and ``discrete = True`` says
  its codes are ids (stage 2 must be a discrete one).

Stage kinds are registered by name (:func:`register`): stage 1 by ``vae.kind`` (``vit``:
ViT VAE over label maps; ``vqvae``: the original UViM's VQ-VAE over label maps with the
image as context, discrete codes; ``cnn``: CNN VAE over images, optionally with a perceptual
loss and a PatchGAN critic; ``vqgan``: a VQ tokenizer on the CNN VAE's backbone and losses,
discrete codes), stage 2 by ``givt_<givt.model.style>`` (``givt_ar`` causal, ``givt_masked``
MaskGIT) or by ``givt.kind`` (``vtt``: the original UViM's; ``discrete``: a GIVT over ids,
either style). The discrete kinds are in ``vq_stages`` and ``vtt_stage``; a new
kind is one class registered here or in its own module.
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
    """The registered kind of ``stage``: ``vae.kind``; for stage 2 ``givt_<style>`` when
    ``givt.kind`` is "givt", else ``givt.kind`` (``vtt``)."""
    if stage == "vae":
        return str(cfg.vae.kind)
    if stage == "givt":
        kind = str(cfg.givt.kind)
        return f"givt_{cfg.givt.model.style}" if kind == "givt" else kind
    raise ValueError(f"unknown stage {stage!r}: vae or givt")


def stage_of(cfg: ml_collections.ConfigDict, stage: str) -> Any:
    """The definition of ``stage`` ("vae" or "givt") of ``cfg``, built once per config."""
    name = kind_name(cfg, stage)
    if name not in _KINDS:
        key = "vae.kind" if stage == "vae" else (
            "givt.model.style" if str(cfg.givt.kind) == "givt" else "givt.kind")
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
        self.inputs = (self.input_key,)
        self.encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=vae.encode))
        self.decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=vae.decode))

    def oracle(self, vae_params: Params, x: Any, image: Any = None) -> Any:
        """Decoded posterior mean of the ground truth ``x`` (``image`` unused)."""
        return self.decode(vae_params, self.encode(vae_params, jnp.asarray(x))[0])

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
        self.beta = float(cfg.vae.beta)
        self.channels = builders.label_channels(cfg)
        self.values = builders.value_channels(cfg)
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
                                         ignore_zero=self.ignore_zero,
                                         value_channels=self.values)


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
        self._bottleneck_weights(cfg)
        self.w_perc = float(cfg.vae.perceptual.weight)
        self.w_adv = float(cfg.vae.adversarial.weight)
        self._vgg_file = str(cfg.vae.perceptual.weights)
        self.disc = (image_losses.PatchDiscriminator(int(cfg.vae.adversarial.filters),
                                                     int(cfg.vae.adversarial.num_layers))
                     if self.w_adv > 0 else None)

    def _bottleneck_weights(self, cfg: ml_collections.ConfigDict) -> None:
        self.beta = float(cfg.vae.beta)  # the KL's

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

    def _image_losses(self, params: Params, recon: jax.Array, x: jax.Array
                      ) -> tuple[dict[str, jax.Array], Any]:
        """The weighted perceptual and generator terms of the reconstructions, and a
        function adding the critic's hinge loss (and its metrics) to the total."""
        disc = self.disc if "disc" in params else None
        extras = {}
        if self.vgg is not None:
            extras["perceptual"] = self.w_perc * jnp.mean(
                image_losses.perceptual_distance(self.vgg, recon, x))
        if disc is not None:  # generator step: the critic's params are constants
            d_fake_g = disc.apply({"params": jax.lax.stop_gradient(params["disc"])}, recon)
            extras["generator"] = self.w_adv * image_losses.hinge_g_loss(d_fake_g)

        def with_critic(loss: jax.Array, metrics: dict[str, jax.Array]) -> jax.Array:
            if disc is not None:  # critic step: the reconstructions are constants
                d_real = disc.apply({"params": params["disc"]}, x)
                d_fake = disc.apply({"params": params["disc"]}, jax.lax.stop_gradient(recon))
                d_loss = image_losses.hinge_d_loss(d_real, d_fake)
                loss = loss + d_loss
                metrics.update(disc=d_loss, d_real=jnp.mean(d_real), d_fake=jnp.mean(d_fake))
            metrics["mse"] = jnp.mean(jnp.square(jnp.clip(recon, -1, 1) - x))
            return loss
        return extras, with_critic

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        x = batch["image"]
        # no dropout in the CNN VAE: the forward pass draws z (and code dropout) from rng
        recon, aux = self._forward(self.train_model, params["vae"], x, rng, train, rng)
        extras, with_critic = self._image_losses(params, recon, x)
        loss, metrics = vae_losses.vae_loss(recon, x, aux["mu"], aux["logvar"], beta=self.beta,
                                            extra_losses=extras)
        return with_critic(loss, metrics), metrics


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
        if getattr(self.vae, "discrete", False):
            raise ConfigError(f"vae.kind={cfg.vae.kind!r} makes discrete code ids; a GIVT "
                              "models real-valued codes: stage 2 over ids is givt.kind='vtt' "
                              "(the original UViM's) or 'discrete' (a GIVT with vocab_size)")
        self.model = model = builders.build_model("givt", cfg)
        self.adaptor = builders.build_adaptor(cfg)  # None when off
        self.sample_posterior = cfg.givt.posterior == "sample"
        self.input_noise = float(cfg.givt.input_noise)
        self.label_smoothing = float(cfg.givt.label_smoothing)
        if self.label_smoothing and not getattr(self, "discrete", False):
            raise ConfigError(f"givt.label_smoothing={cfg.givt.label_smoothing}: a Gaussian "
                              "mixture has no labels to smooth (code ids only: givt.kind="
                              "'vtt' or 'discrete')")
        # what the GIVT is conditioned on; plus the VAE's input, encoded in the step (the
        # cached-codes route reads CODE_MU / CODE_LOGVAR in its place)
        self.conditioning_inputs = (("image",) if model.has_encoder else ()) + \
            (("label",) if model.num_labels is not None else ())
        self.inputs = tuple(dict.fromkeys((self.vae.input_key,) + self.conditioning_inputs))
        self.teacher_forced_means = jax.jit(self._teacher_forced_means)
        self._jit_position_nll = jax.jit(self._position_nll)
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
             frozen: Params = None, input_noise: bool = True
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The NLL per token of the frozen VAE's codes (or of the cached codes in the batch;
        over ids with ``givt.label_smoothing``, the smoothed cross-entropy, the NLL still
        ``nll_per_token``). ``input_noise=False`` leaves the teacher-forcing inputs clean
        while ``train`` (the published held-out loss: the training loss, whose recipe has
        no input noise)."""
        if frozen is None and CODE_MU not in batch:
            raise ValueError("the GIVT stage's loss needs the frozen VAE's parameters (or "
                             "cached codes in the batch)")
        k_z, k_loss = jax.random.split(rng)
        z = self.codes(frozen, batch, k_z, train)
        noise = self.input_noise if train and input_noise else 0.0
        loss, parts = givt_nll_loss(self.model, params, z, k_loss, **self.conditioning(batch),
                                    train=train, input_noise=noise, adaptor=self.adaptor,
                                    label_smoothing=self.label_smoothing)
        parts = dict(parts)
        parts["nll_per_token"] = parts.pop("nll")
        if "weight/nll" in parts:  # a masked model's weights (training.trainer)
            parts["weight/nll_per_token"] = parts.pop("weight/nll")
        return loss, parts

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

    def _position_nll(self, params: Params, y: jax.Array, image: Any, labels: Any
                      ) -> jax.Array:
        model = self.model
        encoded = None if image is None else model.apply(
            {"params": params}, image, False, method=model.encode)
        logits = model.apply({"params": params}, y, labels, encoded, None, None, False,
                             method=model.decode)
        ids = jnp.issubdtype(y.dtype, jnp.integer)  # a discrete model's code ids stay ints
        return -model.head.log_prob(logits.astype(jnp.float32),
                                    y if ids else y.astype(jnp.float32))

    def position_nll(self, params: Params, z: Any, image: Any = None, labels: Any = None
                     ) -> jax.Array:
        """Teacher-forced NLL [B, seq_len] (nats) of each position of the VAE codes ``z``
        given the true codes before it (causal GIVTs; the GIVT's sequence, adapted)."""
        if self.model.style != "ar":
            raise ConfigError("a per-position NLL needs a causal GIVT "
                              f"(givt.model.style='ar', not {self.model.style!r})")
        return self._jit_position_nll(params, self.adapt(params, z),
                                      None if image is None else jnp.asarray(image),
                                      None if labels is None else jnp.asarray(labels))

    def sample(self, params: Params, rng: jax.Array, settings: Any, *, image: Any = None,
               labels: Any = None, batch_size: int | None = None,
               return_trace: bool = False, given: Any = None, keep: Any = None) -> Any:
        """VAE codes [B, seq_len, out_dim] by the sampler of the GIVT's style (through the
        adaptor's inverse); with ``return_trace`` (MaskGIT) also the decoding trace, whose
        sequences are still the GIVT's. ``given`` [B, seq_len, out_dim] VAE codes with
        ``keep`` bool [seq_len] (completion, the samplers' ``keep_gt``): the kept positions
        are those codes and the others are sampled given them (a causal GIVT sees the kept
        codes before each position; MaskGIT all of them)."""
        from uvim_givt.sampling.settings import sample_by_style
        batch = len(image) if image is not None else \
            len(labels) if labels is not None else batch_size
        kept = {}
        if keep is not None and bool(jnp.any(jnp.asarray(keep))):
            kept = dict(keep_gt=jnp.asarray(keep, bool), gt=self.adapt(params, given))
        out = sample_by_style(self.model, params, rng, settings, batch_size=batch,
                              image=None if image is None else jnp.asarray(image),
                              labels=None if labels is None else jnp.asarray(labels),
                              return_trace=return_trace, **kept)
        if return_trace:
            return self.unadapt(params, out[0]), out[1]
        return self.unadapt(params, out)


register("givt_ar")(GIVTStage)
register("givt_masked")(GIVTStage)


def require_givt(params: Params) -> None:
    if params is None:
        raise UserError("this run has no trained GIVT (train stage 2 first: --stage givt)")


# The discrete kinds live in modules of their own; importing them registers stage 1's
# "vqgan" and "vqvae" and stage 2's "vtt" and "discrete".
from uvim_givt.training import vq_stages, vtt_stage  # noqa: E402, F401
