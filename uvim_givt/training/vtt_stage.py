"""The stage-2 kinds over code ids: the original UViM's ``vtt`` (``givt.kind="vtt"``: the
VTT's loss on the frozen VQ-VAE's code ids and the prediction interface of the GIVT stage, on
ids) and ``discrete`` (the GIVT over a VQ tokenizer's ids). Registered with
:mod:`uvim_givt.training.stages` when that module loads."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from uvim_givt.errors import ConfigError
from uvim_givt.models import builders
from uvim_givt.models.categorical import smoothed_xent
from uvim_givt.training.stages import Batch, GIVTStage, Params, register, stage_of


def vq_stage_and_model(cfg: ml_collections.ConfigDict, what: str, use: str
                       ) -> tuple[Any, Any]:
    """The stage-1 stage (which must make code ids) and the stage-2 model of a stage over
    code ids; ``what`` / ``use``: the refusal's subject and its remedy."""
    vae = stage_of(cfg, "vae")
    if not getattr(vae, "discrete", False):
        raise ConfigError(f"{what}, but vae.kind={cfg.vae.kind!r} makes real-valued codes: "
                          f"use {use} or givt.kind='givt'")
    return vae, builders.build_model("givt", cfg)


@register("vtt")
class VTTStage:
    """Stage 2 of the original UViM: the VTT's (``models/vtt.py``) cross-entropy of the
    frozen VQ-VAE's code ids given the image, as big_vision's ``trainers/proj/uvim/train.py``:
    the ids enter as ``code + 1`` (0 is the padding symbol) and the loss is the mean over
    tokens of -log softmax. Training and held-out loss are the same function (held-out:
    no dropout). It offers the GIVT stage's prediction interface, on code ids: ``sample``
    (the shared autoregressive sampler with the categorical head: temperature, top-k
    through ``temperature`` 0 = greedy, beam search), ``teacher_forced_means`` (the most
    likely id at each position given the true ones before it) and ``position_nll``."""

    name = "givt"
    discrete = True

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.vae, self.model = vq_stage_and_model(
            cfg, "givt.kind='vtt' models a VQ-VAE's code ids", "vae.kind='vqvae' (the dense "
            "configs' tokens=vq)")
        model, vq, problems = self.model, self.vae.model, []
        if int(model.vocab_size) != int(vq.dict_size) + 1:
            problems.append(f"givt.model.vocab_size={model.vocab_size}: the VQ-VAE's "
                            f"dictionary has {vq.dict_size} codes, so it must be "
                            f"{vq.dict_size + 1} (code ids + 1; 0 pads)")
        if int(model.seq_len) != int(vq.code_len):
            problems.append(f"givt.model.seq_len={model.seq_len} but the VQ-VAE makes "
                            f"{vq.code_len} codes")
        if problems:
            raise ConfigError("; ".join(problems))
        self.adaptor = None
        self.label_smoothing = float(cfg.givt.label_smoothing)
        self.conditioning_inputs = ("image",)
        self.inputs = tuple(dict.fromkeys((self.vae.input_key, "image")))
        self.teacher_forced_means = jax.jit(self._teacher_forced_ids)
        self._jit_position_nll = jax.jit(self._position_nll)

    def init(self, key: jax.Array) -> Params:
        return builders.init_givt(self.model, key)

    def conditioning(self, batch: Batch) -> dict[str, Any]:
        return {"image": batch["image"], "labels": None}

    def codes(self, vae_params: Params, batch: Batch, rng: jax.Array = None,
              train: bool = False) -> jax.Array:
        """The frozen VQ-VAE's code ids [B, code_len] of the batch (deterministic)."""
        return jax.lax.stop_gradient(self.vae.encode(vae_params, batch[self.vae.input_key],
                                                     batch["image"]))

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Params = None, input_noise: bool = True
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean NLL per token (nats) of the VQ-VAE's code ids, and the teacher-forced
        accuracy of the most likely id; with ``givt.label_smoothing`` the loss is the
        smoothed cross-entropy (the padding id gets none). ``input_noise`` has no meaning
        for ids."""
        del input_noise
        if frozen is None:
            raise ValueError("the VTT's loss needs the frozen VQ-VAE's variables")
        tokens = self.codes(frozen, batch) + 1
        logits = self.model.apply({"params": params}, tokens, image=batch["image"],
                                  train=train, rngs={"dropout": rng} if train else {})
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = jnp.mean(smoothed_xent(logp, tokens, 0.0))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32))
        parts = {"nll_per_token": nll, "accuracy": accuracy}
        if not self.label_smoothing:
            return nll, parts
        parts["xent_smoothed"] = jnp.mean(smoothed_xent(logp, tokens, self.label_smoothing,
                                                        pad_id=0))
        return parts["xent_smoothed"], parts

    # -------------------------------------------------------------- prediction
    def adapt(self, params: Params, z: Any) -> jax.Array:
        return jnp.asarray(z)  # no adaptor: code ids are what the VTT models

    def unadapt(self, params: Params, y: Any) -> jax.Array:
        return jnp.asarray(y)

    def _logits(self, params: Params, ids: jax.Array, image: Any) -> jax.Array:
        return self.model.apply({"params": params}, ids.astype(jnp.int32) + 1,
                                image=jnp.asarray(image))

    def _teacher_forced_ids(self, params: Params, ids: jax.Array, image: Any, labels: Any
                            ) -> jax.Array:
        return self.model.head.mean(self._logits(params, ids, image)) - 1

    def _position_nll(self, params: Params, ids: jax.Array, image: Any, labels: Any
                      ) -> jax.Array:
        logits = self._logits(params, ids, image)
        return -self.model.head.log_prob(logits, ids.astype(jnp.int32) + 1)

    def position_nll(self, params: Params, ids: Any, image: Any = None, labels: Any = None
                     ) -> jax.Array:
        """Teacher-forced NLL [B, seq_len] (nats) of each code id given the true ones before
        it."""
        return self._jit_position_nll(params, jnp.asarray(ids), jnp.asarray(image), None)

    def sample(self, params: Params, rng: jax.Array, settings: Any, *, image: Any = None,
               labels: Any = None, batch_size: int | None = None,
               return_trace: bool = False, given: Any = None, keep: Any = None) -> Any:
        """Code ids [B, code_len] sampled given the images (``settings``: temperature, 0 or
        1e-7 as published = greedy; beam and fan); ``given`` ids with ``keep`` bool
        [code_len]: the kept positions are those ids, the rest sampled given them."""
        from uvim_givt.sampling.settings import sample_by_style
        if image is None:
            raise ValueError("the VTT samples code ids given images")
        if return_trace:
            raise ConfigError("a decoding trace is MaskGIT's; the VTT decodes causally")
        kept = {}
        if keep is not None and bool(jnp.any(jnp.asarray(keep))):
            kept = dict(keep_gt=jnp.asarray(keep, bool),
                        gt=jnp.asarray(given, jnp.int32) + 1)
        tokens = sample_by_style(self.model, params, rng, settings, batch_size=len(image),
                                 image=jnp.asarray(image), labels=None, **kept)
        return tokens - 1


@register("discrete")
class DiscreteStage(GIVTStage):
    """Stage 2 over a VQ tokenizer's code ids (``givt.kind="discrete"``): the GIVT module
    with ``vocab_size`` = the dictionary's size, i.e. the same transformer (causal, or
    MaskGIT with ``givt.model.style="masked"``; class-conditional with label dropout, or
    with an image encoder) with an id lookup in place of the linear input projection and a
    softmax in place of the Gaussian mixture. Its loss is the GIVT stage's (the
    cross-entropy of the frozen tokenizer's ids: teacher-forced, or on a random mask), its
    samplers the GIVT's, with classifier-free guidance on the logits. The baseline every
    GIVT claim is measured against (VQGAN's transformer, MaskGIT), on the same backbone."""

    discrete = True

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.vae, self.model = vq_stage_and_model(
            cfg, "givt.kind='discrete' models code ids", "a VQ tokenizer (vae.kind='vqgan'; "
            "the imagenet config's tokens=vq)")
        model, vq, problems = self.model, self.vae.model, []
        if int(model.vocab_size) != int(vq.dict_size):
            problems.append(f"givt.model.vocab_size={model.vocab_size}: the tokenizer's "
                            f"dictionary has {vq.dict_size} codes (vae.model.dict_size)")
        if int(model.seq_len) != int(vq.code_len):
            problems.append(f"givt.model.seq_len={model.seq_len} but the tokenizer makes "
                            f"{vq.code_len} codes")
        if builders.adaptor_enabled(cfg):
            problems.append("givt.adaptor.enabled=True: the invertible adaptor maps real "
                            "vectors, not ids")
        if float(cfg.givt.input_noise) > 0:
            problems.append(f"givt.input_noise={cfg.givt.input_noise}: ids take no noise")
        if bool(cfg.givt.train.get("cached_codes", False)):
            problems.append("givt.train.cached_codes=True: the code cache holds real-valued "
                            "posteriors; code ids are encoded in the step")
        if problems:
            raise ConfigError("; ".join(problems))
        self.adaptor = None
        self.sample_posterior = False
        self.input_noise = 0.0
        self.label_smoothing = float(cfg.givt.label_smoothing)
        self.conditioning_inputs = (("image",) if model.has_encoder else ()) + \
            (("label",) if model.num_labels is not None else ())
        self.inputs = tuple(dict.fromkeys((self.vae.input_key,) + self.conditioning_inputs
                                          + (("image",) if self.vae.input_key == "labels"
                                             else ())))
        self.teacher_forced_means = jax.jit(self._teacher_forced_means)
        self._jit_position_nll = jax.jit(self._position_nll)

    def codes(self, vae_params: Params, batch: Batch, rng: jax.Array = None,
              train: bool = False) -> jax.Array:
        """The frozen tokenizer's code ids [B, code_len] (deterministic)."""
        return jax.lax.stop_gradient(self.vae.encode(
            vae_params, batch[self.vae.input_key], batch.get("image")))
