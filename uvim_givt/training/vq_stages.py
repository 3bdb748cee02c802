"""The stage-1 kinds with discrete codes: ``vqgan`` (a VQ tokenizer on the CNN VAE's
backbone and losses) and ``vqvae`` (the original UViM's VQ-VAE over label maps, the image as
context, its dictionary learnt outside the gradient). Registered with
:mod:`uvim_givt.training.stages` when that module loads."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from uvim_givt.errors import ConfigError, UserError
from uvim_givt.models import builders, vae_losses
from uvim_givt.training.stages import Batch, CNNVAEStage, Params, register


class _CodebookUsage:
    """What the discrete stage-1 kinds share: a codebook collapse said at the end of
    training (the usage ratios, ``vqvae.usage_metrics``, are in every step's metrics)."""

    #: a logged ``codebook_max_ratio`` above this: (nearly) every code on one codeword
    COLLAPSE_RATIO = 0.9

    def training_warnings(self, history: list[dict[str, float]]) -> list[str]:
        """Codebook collapse at the end of training, said in the log (the ratios are in the
        metrics of every step)."""
        last = [h for h in history if "codebook_max_ratio" in h][-1:]
        if not last or last[0]["codebook_max_ratio"] <= self.COLLAPSE_RATIO:
            return []
        h = last[0]
        return [f"warning: codebook collapse at step {int(h['step'])}: "
                f"{100 * h['codebook_max_ratio']:.0f}% of the codes on one codeword "
                f"(perplexity {h['codebook_perplexity']:.1f} of {self.model.dict_size}); "
                "see codebook_* in metrics.jsonl"]


@register("vqgan")
class VQGANStage(_CodebookUsage, CNNVAEStage):
    """A VQ tokenizer over images (``models/vqgan.py``: VQGAN as MaskGIT trains it, or
    ViT-VQGAN's factorised l2 codes) on the CNN VAE's backbone and image losses: L2 +
    the perceptual and PatchGAN terms as the CNN VAE's, + the codebook loss
    mean((sg(x) - e)^2) + ``vae.w_commitment`` x mean((x - sg(e))^2) + ``vae.w_entropy`` x
    MaskGIT's entropy loss (at ``vae.entropy_temperature``). The codebook learns by
    gradient (no state). Codebook usage of every step is in the training metrics, and a
    collapse is said at the end of training (:class:`_CodebookUsage`).

    For a discrete stage 2: :meth:`encode` gives ids [B, code_len], :meth:`decode` takes
    them (the ``image`` argument of the dense VQ-VAE's signature is unused)."""

    discrete = True

    def __init__(self, cfg: ml_collections.ConfigDict):
        super().__init__(cfg)
        vq = self.model

        def encode(p, x, image=None):  # ``image``: the dense VQ-VAE's signature, unused
            return vq.apply({"params": p}, x, method=vq.encode)

        def decode(p, ids, image=None):
            return vq.apply({"params": p}, ids, method=vq.decode)
        self.encode, self.decode = jax.jit(encode), jax.jit(decode)

    def _bottleneck_weights(self, cfg: ml_collections.ConfigDict) -> None:
        problems = self.model.problems()
        if problems:
            raise ConfigError("; ".join(f"vae.model.{k}: {why}" for k, why in problems))
        self.w_commitment = float(cfg.vae.w_commitment)
        self.w_entropy = float(cfg.vae.w_entropy)
        self.entropy_temperature = float(cfg.vae.entropy_temperature)

    def oracle(self, vae_params: Params, x: Any, image: Any = None) -> Any:
        """The decoded code ids of the images ``x``."""
        ids = self.encode(vae_params, jnp.asarray(x))
        return self.decode(vae_params, ids)

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        from uvim_givt.models import vqgan, vqvae
        x = batch["image"]
        model = self.train_model if train else self.model
        recon, aux = model.apply({"params": params["vae"]}, x)
        extras, with_critic = self._image_losses(params, recon, x)
        sg = jax.lax.stop_gradient
        extras["codebook"] = jnp.mean(jnp.square(sg(aux["x"]) - aux["e"]))
        commitment = jnp.mean(jnp.square(aux["x"] - sg(aux["e"])))
        extras["commitment"] = self.w_commitment * commitment
        if self.w_entropy:
            extras["entropy"] = self.w_entropy * vqgan.entropy_loss(
                aux["distances"], self.entropy_temperature)
        rec = jnp.mean(jnp.square(recon - x))
        loss = rec + sum(extras.values())
        metrics = {"rec": rec, **extras, "loss": loss}
        counts, _ = vqvae.batch_statistics(aux["x"], aux["ids"], self.model.dict_size)
        metrics.update(vqvae.usage_metrics(counts))
        return with_critic(loss, metrics), metrics


@register("vqvae")
class VQVAEStage(_CodebookUsage):
    """The original UViM stage 1 (``models/vqvae.py``): label maps (and the image, its
    context) -> code ids -> label logits. Loss: the label cross-entropy (as the ViT VAE's,
    ``vae.ignore_zero`` included) + ``vae.w_commitment`` x the commitment term
    mean((x - sg(x_q))^2). The dictionary is state: each training step updates it from the
    step's (global) batch by moving averages and splits codewords into unused ones, unless
    ``vae.freeze_dict``. Codebook usage of every step is in the training metrics
    (``codebook_max_ratio``, ``codebook_zeros_ratio``, ``codebook_perplexity``).

    For a discrete stage 2: :meth:`encode` gives code ids [B, code_len] (int32) and
    :meth:`decode` takes them (with the image as the decoder's context)."""

    name = "vae"
    input_key = "labels"
    discrete = True

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.model = vae = builders.build_model("vae", cfg)
        problems = vae.problems()
        if problems:
            raise ConfigError("; ".join(f"vae.model.{k}: {why}" for k, why in problems))
        if float(cfg.vae.ema_decay) > 0:
            raise ConfigError(f"vae.ema_decay={cfg.vae.ema_decay}: a parameter EMA of the "
                              "VQ-VAE would decode with a dictionary learnt for other "
                              "parameters; set it to 0")
        self.channels = builders.label_channels(cfg)
        self.values = builders.value_channels(cfg)
        self.ignore_zero = tuple(cfg.vae.ignore_zero)
        self.w_commitment = float(cfg.vae.w_commitment)
        self.update_dict = not bool(cfg.vae.freeze_dict)
        self.inputs = ("labels",) + (("image",) if vae.with_encoder_ctx
                                     or vae.with_decoder_ctx else ())
        self._image = "image" in self.inputs

        def encode(v, x, image):
            return vae.apply(v, x, image, method=vae.encode)[2].astype(jnp.int32)

        def decode(v, ids, image):
            return vae.apply(v, ids, image, method=vae.decode)
        self.encode = jax.jit(encode)
        self.decode = jax.jit(decode)
        self._oracle = jax.jit(lambda v, x, image: decode(v, encode(v, x, image), image))

    # ---------------------------------------------------------------- training
    def init(self, key: jax.Array) -> Params:
        return builders.init_params("vae", self.model, key)["params"]

    def init_state(self, key: jax.Array) -> Params:
        """A fresh dictionary drawn from ``key`` and its counts (without building the
        model, whose own initial state ``init`` leaves out)."""
        from uvim_givt.models import vqvae
        return vqvae.initial_state(jax.random.fold_in(key, 1), self.model.dict_size,
                                   self.model.codeword_dim)

    def vae_params(self, variables: Params) -> Params:
        return variables

    def stage_params(self, vae_params: Params) -> Params:
        return vae_params

    def _image_of(self, batch: Batch) -> Any:
        return batch["image"] if self._image else None

    def _objective(self, variables: Params, batch: Batch, rng: jax.Array, train: bool
                   ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        vae, labels = self.model, batch["labels"]
        logits, aux = vae.apply(variables, labels, self._image_of(batch), train=train,
                                rng=rng, rngs={"dropout": rng} if train else {})
        rec, parts = vae_losses.label_xent(logits, labels, label_channels=self.channels,
                                           ignore_zero=self.ignore_zero,
                                           value_channels=self.values)
        commitment = jnp.mean(jnp.square(
            aux["bottleneck"] - jax.lax.stop_gradient(aux["bottleneck_q"])))
        loss = rec + self.w_commitment * commitment
        parts.update(commitment=commitment, loss=loss)
        return loss, parts, aux

    def train_loss(self, params: Params, state: Params, batch: Batch, rng: jax.Array
                   ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Params]]:
        """The training objective and the dictionary after this batch."""
        from uvim_givt.models import vqvae
        k_model, k_split = jax.random.split(rng)
        loss, parts, aux = self._objective({"params": params, "state": state}, batch,
                                           k_model, True)
        counts, sums = vqvae.batch_statistics(aux["bottleneck"], aux["ids"],
                                              self.model.dict_size)
        parts.update(vqvae.usage_metrics(counts))
        if self.update_dict:
            d, c = vqvae.ema_update(state["dictionary"], state["counts"], counts, sums,
                                    self.model.dict_momentum)
            d, c = vqvae.split_unused(d, c, k_split, self.model.min_count)
            state = {"dictionary": d, "counts": c}
        return loss, (parts, jax.lax.stop_gradient(state))

    def loss(self, params: Params, batch: Batch, rng: jax.Array, train: bool,
             frozen: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The objective of ``params`` (the variables ``{"params", "state"}``), the
        dictionary as it is; held-out (``train=False``): no dropout, no code dropout."""
        from uvim_givt.models import vqvae
        loss, parts, aux = self._objective(params, batch, rng, train)
        counts, _ = vqvae.batch_statistics(aux["bottleneck"], aux["ids"],
                                           self.model.dict_size)
        parts.update(vqvae.usage_metrics(counts))
        return loss, parts

    # -------------------------------------------------------------- prediction
    def oracle(self, vae_params: Params, x: Any, image: Any = None) -> Any:
        """The decoded code ids of the ground truth ``x``, given the image."""
        if self._image and image is None:
            raise UserError("the VQ-VAE reads the image as context: oracle needs it")
        return self._oracle(vae_params, jnp.asarray(x),
                            None if image is None else jnp.asarray(image))
