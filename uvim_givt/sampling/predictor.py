"""Inference with a trained run: the named predictions evaluators and commands score.

* ``oracle``: stage 1 alone: encode the ground truth, decode the posterior mean;
* ``sample_codes``: stage 2 codes, by the sampler of the GIVT's style, conditioned on
  images (encoder-decoder) or class labels (with optional DB-CFG);
* ``teacher_forced``: stage 2 given the ground-truth codes: each position's predicted
  mean (the GIVT's next-code mean given the true previous codes), decoded. Scored by the
  task metric next to ``predict``, it names the exposure bias (free-running vs
  teacher-forced);
* ``predict``: dense tasks: decoded per-channel logits of sampled codes, averaged over
  ``givt.sampling.num_samples`` draws (optionally half of them on mirrored images);
* ``sample_latents`` / ``decode_images`` / ``reconstruct``: generation in fixed-size
  chunks (one compiled shape per run).

With an invertible adaptor (``givt.adaptor``) the GIVT models ``adapt(z)``, not the VAE's
codes ``z``: ground-truth codes go through ``adapt`` before they reach the GIVT (teacher
forcing) and every sampled or predicted sequence through ``unadapt`` before it is decoded,
so ``sample_codes`` and ``sample_latents`` always return VAE codes. The samplers are
unchanged: they work on the GIVT's side.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uvim_givt.errors import ConfigError, UserError
from uvim_givt.sampling.settings import SamplingSettings
from uvim_givt.training import stages


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 0..255."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _array(x: Any) -> Any:
    return None if x is None else jnp.asarray(x)


@jax.jit
def _log_mean_softmax(logits: jax.Array) -> jax.Array:
    """log(mean_k softmax(logits[k])) over the leading axis, computed stably."""
    n = logits.shape[0]
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=0) - jnp.log(n)


class Predictor:
    """A run's VAE (and GIVT, when given) with one :class:`SamplingSettings`.

    The models and their compiled functions come from the stage definitions
    (:mod:`uvim_givt.training.stages`), built once per config: a new predictor of the same
    run compiles nothing again. ``settings`` default to the config's ``givt.sampling``."""

    def __init__(self, cfg: ml_collections.ConfigDict, vae_params: Any, givt_params: Any = None,
                 batch_size: int = 0, settings: SamplingSettings | None = None):
        self.cfg, self.vae_params, self.givt_params = cfg, vae_params, givt_params
        self.batch_size = int(batch_size)
        self.stage1 = stages.stage_of(cfg, "vae")
        self.vae = self.stage1.model
        self.stage2 = stages.stage_of(cfg, "givt") if givt_params is not None else None
        self.model = self.stage2.model if self.stage2 is not None else None
        self.settings = settings if settings is not None else (
            SamplingSettings.from_config(cfg) if givt_params is not None else None)

    def with_settings(self, settings: SamplingSettings) -> Predictor:
        """The same run sampled with other settings."""
        return Predictor(self.cfg, self.vae_params, self.givt_params, self.batch_size,
                         settings)

    # ------------------------------------------------------------------ stage 1
    @property
    def discrete(self) -> bool:
        """Whether stage 1 makes code ids (a VQ-VAE, which reads the image as context)."""
        return bool(getattr(self.stage1, "discrete", False))

    def encode(self, x: np.ndarray, image: Any = None) -> jax.Array:
        """Posterior means of a batch of VAE inputs (label maps or images); a VQ-VAE's code
        ids, given the ``image`` as its context."""
        if self.discrete:
            return self.stage1.encode(self.vae_params, jnp.asarray(x), _array(image))
        return self.stage1.encode(self.vae_params, jnp.asarray(x))[0]

    def decode(self, z: Any, image: Any = None) -> Any:
        """Decoded codes (a VQ-VAE's ids, given the ``image`` as its decoder's context)."""
        if self.discrete:
            return self.stage1.decode(self.vae_params, jnp.asarray(z), _array(image))
        return self.stage1.decode(self.vae_params, jnp.asarray(z))

    def oracle(self, x: np.ndarray, image: np.ndarray | None = None) -> Any:
        """Stage-1 reconstruction: decode the code of the ground truth (the posterior mean;
        a VQ-VAE's code ids, given the ``image`` as its context)."""
        return jax.tree_util.tree_map(np.asarray, self.stage1.oracle(self.vae_params, x, image))

    # ------------------------------------------------------------------ stage 2
    def _stage2(self) -> Any:
        stages.require_givt(self.givt_params)
        return self.stage2

    def adapt(self, z: Any) -> jax.Array:
        """VAE codes -> the sequence the GIVT models (the identity without an adaptor)."""
        return self._stage2().adapt(self.givt_params, z)

    def unadapt(self, y: Any) -> jax.Array:
        """The GIVT's sequence -> VAE codes (the adaptor's inverse; else the identity)."""
        return self._stage2().unadapt(self.givt_params, y)

    def sample_codes(self, seed: int, draw: int = 0, *, image: Any = None, labels: Any = None,
                     batch_size: int | None = None, rng: jax.Array | None = None,
                     return_trace: bool = False, given: Any = None, keep: Any = None
                     ) -> Any:
        """VAE codes [B, seq_len, out_dim] by the sampler of the GIVT's style with this
        predictor's settings. ``draw`` > 0 picks an independent sample for the same
        ``seed`` (draw 0 uses ``PRNGKey(seed)`` itself); ``rng``, when given, replaces
        both. ``batch_size``: the number of sequences when there is no condition.
        ``given`` codes with ``keep`` bool [seq_len]: the kept positions take the given
        codes and the rest are completed."""
        stage2 = self._stage2()
        if rng is None:
            rng = jax.random.PRNGKey(seed)
            if draw:
                rng = jax.random.fold_in(rng, draw)
        return stage2.sample(self.givt_params, rng, self.settings, image=image, labels=labels,
                             batch_size=batch_size, return_trace=return_trace,
                             given=given, keep=keep)

    def position_nll(self, images: np.ndarray | None, x: np.ndarray,
                     labels: np.ndarray | None = None) -> np.ndarray:
        """Stage 2's teacher-forced NLL [B, seq_len] (nats) of each code of the posterior
        means of ``x`` (its stage-1 input) given the true codes before it."""
        return np.asarray(self._stage2().position_nll(
            self.givt_params, self.encode(x, images), images, labels))

    def teacher_forced(self, images: np.ndarray | None, x: np.ndarray,
                       labels: np.ndarray | None = None) -> Any:
        """Decoded GMM means of the GIVT teacher-forced on the posterior means of ``x``
        (its stage-1 input), conditioned on ``images`` or class ``labels``. With an
        adaptor the GIVT reads the adapted codes and its means go through the inverse."""
        stage2 = self._stage2()
        if self.model.style != "ar":
            raise UserError("teacher_forced predictions need a causal GIVT "
                            f"(givt.model.style='ar', not {self.model.style!r})")
        y = self.adapt(self.encode(x, images))
        mu = stage2.teacher_forced_means(self.givt_params, y, _array(images), _array(labels))
        return jax.tree_util.tree_map(np.asarray, self.decode(self.unadapt(mu), images))

    def predict(self, images: np.ndarray, seed: int = 0, mirror_equivariant: bool = False,
                given: np.ndarray | None = None, num_given: int = 0
                ) -> dict[str, np.ndarray]:
        """Dense tasks: per-channel logits for ``images``.

        With ``num_samples`` = n > 1, n code samples are decoded and their per-pixel class
        distributions averaged; the result is returned as log-probabilities (log of the
        mean softmax), so argmax and expectation decoding read it as logits. With
        ``test_time_flip``, the odd draws sample from the horizontally mirrored images and
        their decoded logits are mirrored back before averaging. ``given`` (stage-1 inputs,
        the ground truth) with ``num_given`` > 0: every draw keeps the first ``num_given``
        codes of its posterior means and completes the rest (no mirrored draws then: the
        given codes are of the unmirrored labels).
        """
        self._stage2()
        n, flip = self.settings.num_samples, self.settings.test_time_flip
        if flip and not mirror_equivariant:
            raise ConfigError(f"givt.sampling.test_time_flip=True: the {self.cfg.task} task's "
                              "labels do not mirror with the image")
        codes = keep = None
        views = [jnp.asarray(images)]  # one host-to-device copy for all draws
        if num_given:
            codes = self.encode(given, views[0])
            keep = np.arange(self.model.seq_len) < num_given
            flip = False
        if flip:
            views.append(views[0][:, :, ::-1])
        decoded = []
        for k in range(n):
            view = views[int(flip and k % 2 == 1)]
            mirrored = flip and k % 2 == 1
            logits = self.decode(self.sample_codes(seed, k, image=view, given=codes,
                                                   keep=keep), view)
            decoded.append({name: v[:, :, ::-1] for name, v in logits.items()} if mirrored
                           else logits)
        if n == 1:
            return jax.tree_util.tree_map(np.asarray, decoded[0])
        return {name: np.asarray(_log_mean_softmax(jnp.stack([d[name] for d in decoded])))
                for name in decoded[0]}

    # --------------------------------------------------------------- generation
    def _chunks(self, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(chunk index, start, stop, padded size) over n items, ``batch_size`` at most."""
        bs = min(self.batch_size or n, n)
        for i, start in enumerate(range(0, n, bs)):
            yield i, start, min(start + bs, n), bs

    def sample_latents(self, labels: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
        """Class-conditional codes [N, seq_len, out_dim] in chunks of ``batch_size``;
        ``cfg_weight`` 0 samples the conditional model exactly (the unguided sampler, not
        guidance with w=0)."""
        self._stage2()
        if self.settings.cfg_weight and "nolabel" not in self.model.special_labels:
            raise UserError("CFG needs a model trained with label dropout "
                            "(givt.model.drop_labels_probability > 0); use --cfg 0")
        labels = np.asarray(labels, np.int32).reshape(-1)
        n_cls = int(self.model.num_labels)
        if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
            raise UserError(f"class labels must be in 0..{n_cls - 1}; got {sorted(set(labels))}")
        out = []
        for i, start, stop, bs in self._chunks(len(labels)):
            chunk = labels[start:stop]
            padded = np.concatenate([chunk, np.zeros(bs - len(chunk), np.int32)])
            key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
            out.append(np.asarray(self.sample_codes(seed, labels=padded, rng=key))[:len(chunk)])
        if not out:
            from uvim_givt.sampling.autoregressive import token_spec
            shape, dtype = token_spec(self.model, 0)
            return np.zeros(shape, dtype)
        return np.concatenate(out)

    def random_latents(self, n: int, seed: int = 0) -> np.ndarray:
        """N(0, I) latents [n, code_len, codeword_dim] (the prior: a baseline); for a VQ
        tokenizer, uniformly random code ids [n, code_len]."""
        rng = np.random.default_rng(seed)
        if self.discrete:
            return rng.integers(0, self.vae.dict_size, (n, self.vae.code_len), np.int32)
        return rng.standard_normal((n, self.vae.code_len, self.vae.code_dim)).astype(
            np.float32)

    def decode_images(self, z: np.ndarray) -> np.ndarray:
        """Latents [N, L, D] (a VQ tokenizer's ids [N, L]) -> uint8 images [N, H, W, 3], in
        padded chunks."""
        out = []
        for _, start, stop, bs in self._chunks(len(z)):
            chunk = z[start:stop]
            pad = np.zeros((bs - len(chunk), *chunk.shape[1:]), chunk.dtype)
            out.append(to_uint8(self.decode(np.concatenate([chunk, pad])))[:len(chunk)])
        return np.concatenate(out)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W, 3] in [-1, 1] -> decoded posterior means, float in [-1, 1]."""
        out = []
        for _, start, stop, bs in self._chunks(len(images)):
            chunk = images[start:stop]
            pad = np.zeros((bs - len(chunk), *chunk.shape[1:]), np.float32)
            out.append(np.asarray(self.oracle(np.concatenate([chunk, pad])))[:len(chunk)])
        return np.concatenate(out)
