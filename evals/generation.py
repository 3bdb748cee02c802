"""Generation metrics: Frechet distance (FID), Inception Score, class consistency.

Features and class probabilities come from a pluggable :class:`FeatureExtractor`,
named on the command line and in an evaluator's ``extractor`` option:

* ``fid_inception:PATH`` (:class:`evals.fid_inception.FIDInceptionExtractor`): the
  FID Inception network of published FIDs (the 2015-12-05 TF graph that TTUR,
  pytorch-fid and the ADM suite use), in flax, with pytorch-fid's weights file
  ``pt_inception-2015-12-05-6726825d.pth`` (or an .npz of its keys). Its FIDs are
  the ones to compare with papers; IS is over its 1008 logits, as published.
* ``keras_inception:PATH`` (or, as before, ``inception:PATH``;
  :class:`InceptionV3Extractor`): Keras' InceptionV3 with Keras' weights file. A
  different network and preprocessing, so its FIDs are comparable among themselves
  only, *not* with published FIDs; results are labelled ``keras_inception``.
* ``digits`` (:class:`DigitsClassifier`): a small CNN the project trains itself
  (seconds, on CPU) on scikit-learn's bundled 8x8 handwritten digits, upsampled to
  32x32 RGB. It is the feature extractor for the embedded, offline generation task.

Nothing is ever downloaded. Every result names the extractor that made it
(``extractor``: ``fid_inception`` | ``keras_inception`` | ``digits``) and says
whether its FID can be set beside published numbers (``fid_comparable_to_published``;
true for ``fid_inception`` only).

Command line::

    python -m evals.generation --samples S.npz|DIR --reference R.npz|DIR \\
        --extractor digits|fid_inception:PATH|keras_inception:PATH [--out result.json]

An ``.npz`` holds ``images`` (uint8 [N, H, W, 3] or [N, H, W]) and optionally
``labels`` (the requested class of each sample: enables class consistency, for
extractors whose classes are the dataset's); a directory holds PNG/JPEG files of
one size (optionally with ``labels.json`` mapping file stem -> class).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from uvim_givt.errors import (
    ArgumentParser,
    DataError,
    EvalError,
    add_verbose_argument,
    positive_int,
    run_command,
)
from uvim_givt.rundir import write_json

# ----------------------------------------------------------------------------- metrics


class GenerationEvalError(EvalError):
    """An input (file, array, extractor spec) that cannot be evaluated as given."""


def _sqrtm_psd(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace term is
    computed from the symmetric form: the eigenvalues of S1 S2 equal those of
    ``A = S1^(1/2) S2 S1^(1/2)``, which is symmetric PSD, so
    ``tr((S1 S2)^(1/2)) = sum(sqrt(eig(A)))``. This stays real and finite for
    singular covariances (fewer samples than dimensions), where the general
    ``sqrtm`` of a non-symmetric product needs an eps offset.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise GenerationEvalError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {s2.shape}"
        )
    for name, x in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.all(np.isfinite(x)):
            raise GenerationEvalError(f"{name} has NaN/inf values")
    root1 = _sqrtm_psd(s1)
    a = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((a + a.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)  # tiny negative values are rounding noise


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise GenerationEvalError(f"features must be [N >= 2, D]; got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise GenerationEvalError("features have NaN/inf values")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two sets of features [N, D] and [M, D]."""
    mu_a, s_a = gaussian_stats(feats_a)
    mu_b, s_b = gaussian_stats(feats_b)
    return frechet_distance(mu_a, np.atleast_2d(s_a), mu_b, np.atleast_2d(s_b))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class probabilities [N, C]: (mean, std) over ``splits`` chunks.

    Per chunk: ``exp(mean_i KL(p(y|x_i) || p(y)))`` with p(y) the chunk's mean.
    It is 1 when every sample has the same (or a uniform) distribution and C when
    samples are confidently and evenly spread over C classes.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise GenerationEvalError(f"probs must be [N, C]; got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise GenerationEvalError("probs must be finite, non-negative rows summing to 1")
    if not 1 <= splits <= p.shape[0]:
        raise GenerationEvalError(f"splits={splits} must be in 1..N (N={p.shape[0]})")
    from scipy.special import xlogy  # 0 * log 0 = 0

    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(axis=0, keepdims=True)
        kl = np.sum(xlogy(chunk, chunk) - xlogy(chunk, marginal), axis=1)
        scores.append(float(np.exp(np.mean(kl))))
    return float(np.mean(scores)), float(np.std(scores))


def class_consistency_accuracy(pred_labels: np.ndarray, requested_labels: np.ndarray) -> float:
    """Fraction (0..1) of samples classified as the class they were generated for."""
    pred = np.asarray(pred_labels).reshape(-1)
    req = np.asarray(requested_labels).reshape(-1)
    if pred.shape != req.shape or pred.size == 0:
        raise GenerationEvalError(
            f"need as many predicted as requested labels (> 0); got {pred.size} and {req.size}"
        )
    return float(np.mean(pred == req))


# ----------------------------------------------------------------------------- extractors


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns uint8 RGB images [N, H, W, 3] into features [N, D] and class probs [N, C].

    Optional extras used when present: ``name`` (the label in results),
    ``comparable_to_published`` (its FIDs can be compared with papers' FIDs; False when
    absent), ``predicts_dataset_classes`` (its classes are the dataset's labels, so the
    class consistency is meaningful; True when absent) and ``features_and_probs(images)``
    (both in one pass).
    """

    def features(self, images: np.ndarray) -> np.ndarray: ...

    def probs(self, images: np.ndarray) -> np.ndarray: ...


def check_images(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W, 3] (or one channel, repeated to three), else an error."""
    x = np.asarray(images)
    if x.ndim == 3:  # grayscale [N, H, W]
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise GenerationEvalError(f"images must be [N, H, W, 3] (or 1 channel); got {x.shape}")
    if x.dtype != np.uint8:
        raise GenerationEvalError(f"images must be uint8 0..255; got {x.dtype}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def features_and_probs(
    extractor: FeatureExtractor, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both outputs, in one pass when the extractor offers it."""
    both = getattr(extractor, "features_and_probs", None)
    if both is not None:
        return both(images)
    return extractor.features(images), extractor.probs(images)


def extractor_label(extractor: FeatureExtractor) -> str:
    """The name results record for an extractor (``fid_inception``, ``keras_inception``...)."""
    return getattr(extractor, "name", type(extractor).__name__)


def extractor_record(extractor: FeatureExtractor, spec: str | None = None) -> dict[str, Any]:
    """What a result records about its extractor: ``extractor`` (the label),
    ``fid_comparable_to_published`` and, given, the ``extractor_spec`` it was built from."""
    out: dict[str, Any] = {
        "extractor": extractor_label(extractor),
        "fid_comparable_to_published": bool(getattr(extractor, "comparable_to_published",
                                                    False)),
    }
    if spec is not None:
        out["extractor_spec"] = spec
    return out


INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"


class InceptionV3Extractor:
    """Keras InceptionV3 (ImageNet classes) from a local weights file; label
    ``keras_inception``.

    Not the network of published FIDs (see :mod:`evals.fid_inception` for that one):
    Keras' InceptionV3 has other weights, average pools that count the padding and a
    1000-way top, so its FIDs are comparable among themselves only.

    ``weights`` is the path of Keras' full InceptionV3 weights, top included
    (``inception_v3_weights_tf_dim_ordering_tf_kernels.h5``, 1000 classes).
    ``weights=None`` builds randomly initialised weights: only for tests.
    Images are resized to 299x299 (bilinear) and scaled as Keras'
    ``inception_v3.preprocess_input`` does (to [-1, 1]).
    """

    name = "keras_inception"
    comparable_to_published = False
    predicts_dataset_classes = True  # Keras' 1000 classes in ImageNet's label order

    def __init__(self, weights: str | None, batch_size: int = 32):
        if weights is not None and not os.path.isfile(weights):
            raise GenerationEvalError(
                f"InceptionV3 weights file {weights} not found. Nothing is downloaded: give "
                f"the path of Keras' InceptionV3 weights with the top ({INCEPTION_WEIGHTS_FILE}),"
                f" e.g. --extractor keras_inception:/path/to/{INCEPTION_WEIGHTS_FILE}"
            )
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras  # heavy; only this extractor needs it

        try:
            base = keras.applications.InceptionV3(weights=weights, include_top=True)
        except Exception as e:  # keras raises various types for a wrong file
            raise GenerationEvalError(
                f"could not load InceptionV3 weights from {weights} (expected Keras' "
                f"{INCEPTION_WEIGHTS_FILE}, top included): {e}"
            ) from None
        self._keras = keras
        self._model = keras.Model(base.input, [base.get_layer("avg_pool").output, base.output])
        self.batch_size = batch_size
        self.weights = weights

    def features_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pool3 features [N, 2048] and softmax probabilities [N, 1000]."""
        from keras.applications.inception_v3 import preprocess_input

        x = check_images(images)
        feats, probs = [], []
        for i in range(0, len(x), self.batch_size):
            batch = x[i : i + self.batch_size].astype(np.float32)
            batch = self._keras.ops.image.resize(batch, (299, 299), interpolation="bilinear")
            batch = preprocess_input(np.array(batch, np.float32))  # a writable copy
            f, p = self._model.predict_on_batch(batch)
            feats.append(np.asarray(f, np.float64))
            probs.append(np.asarray(p, np.float64))
        return np.concatenate(feats), np.concatenate(probs)

    def features(self, images: np.ndarray) -> np.ndarray:
        """pool3 features [N, 2048]."""
        return self.features_and_probs(images)[0]

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 1000]."""
        return self.features_and_probs(images)[1]


# ----------------------------------------------------------------------------- digits

DIGITS_SIZE = 32
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CACHE_NAME = "digits_classifier_v1.msgpack"
CACHE_ENV = "UVIM_GIVT_CACHE"
_INFER_BATCH = 256


def cache_dir() -> str:
    """The project's cache directory: ``$UVIM_GIVT_CACHE`` or ``~/.cache/uvim_givt``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "uvim_givt")


def load_digits_32(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as uint8 RGB [N, 32, 32, 3] and int labels [N].

    Pixel values 0..16 become round(v * 255 / 16); each 8x8 image is upsampled
    4x by nearest neighbour (pixel replication, so the images stay exactly the
    originals), and the gray value is copied to R, G and B. ``split`` is
    ``"train"`` (80%), ``"test"`` (20%, held out by a fixed permutation with
    seed 0) or ``"all"`` (1,797 images).
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "all"):
        raise GenerationEvalError(f"unknown digits split {split!r}; use train, test or all")
    d = load_digits()
    gray = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
    scale = DIGITS_SIZE // gray.shape[1]
    big = gray.repeat(scale, axis=1).repeat(scale, axis=2)
    images = np.repeat(big[..., None], 3, axis=-1)
    labels = d.target.astype(np.int32)
    if split == "all":
        return images, labels
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(DIGITS_TEST_FRACTION * len(labels)))
    idx = np.sort(perm[:n_test] if split == "test" else perm[n_test:])
    return images[idx], labels[idx]


def _digits_module():
    import flax.linen as nn

    class DigitsCNN(nn.Module):
        """4x4 patch conv (32x32 -> 8x8), two 3x3 convs, a 128-d feature layer, 10 logits."""

        @nn.compact
        def __call__(self, x):
            # The digits are 8x8 images shown 4x larger: a stride-4 patch conv loses
            # nothing of them and keeps training to seconds on a CPU.
            x = nn.relu(nn.Conv(32, (4, 4), strides=(4, 4), padding="VALID")(x))
            x = nn.relu(nn.Conv(32, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.relu(nn.Conv(64, (3, 3))(x))
            x = x.reshape(x.shape[0], -1)
            feats = nn.relu(nn.Dense(128)(x))
            return feats, nn.Dense(10)(feats)

    return DigitsCNN()


class DigitsClassifier:
    """Feature extractor for 32x32 digit images; trains itself once, then loads from cache.

    Weights live in ``<cache dir>/digits_classifier_v1.msgpack`` (see
    :func:`cache_dir`). Features are the 128-d penultimate layer, probabilities
    the softmax over the 10 digits. Images of another size are resized to 32x32
    (bilinear, antialiased).
    """

    name = "digits"
    comparable_to_published = False  # a project-made network on 32x32 digits

    def __init__(self, cache: str | None = None, train_if_missing: bool = True, seed: int = 0):
        import jax

        self._module = _digits_module()
        self.cache_path = os.path.join(cache or cache_dir(), DIGITS_CACHE_NAME)
        self.meta: dict[str, Any] = {}
        dummy = np.zeros((1, DIGITS_SIZE, DIGITS_SIZE, 3), np.float32)
        # jit: one compilation instead of one per eager op (seconds on a busy CPU)
        init = jax.jit(lambda key: self._module.init(key, dummy)["params"])
        params = self._load(jax.eval_shape(init, jax.random.PRNGKey(seed)))
        if params is None:
            if not train_if_missing:
                raise GenerationEvalError(f"no trained digits classifier at {self.cache_path}")
            params = self._train(init(jax.random.PRNGKey(seed)), seed)
            self._save(params)
        self.params = params
        self._apply = jax.jit(lambda p, x: self._module.apply({"params": p}, x))

    # -- weights

    def _load(self, template: Any) -> Any | None:
        import jax
        from flax import serialization

        if not os.path.isfile(self.cache_path):
            return None
        try:
            with open(self.cache_path, "rb") as f:
                state = serialization.msgpack_restore(f.read())
            params = serialization.from_state_dict(template, state["params"])
            shapes = jax.tree_util.tree_map(lambda a, t: np.shape(a) == t.shape, params, template)
            if not all(jax.tree_util.tree_leaves(shapes)):
                raise ValueError("parameter shapes differ from this version's network")
            self.meta = dict(state.get("meta", {}))
        except Exception as e:  # corrupt or stale cache: say so, then retrain
            warnings.warn(
                f"ignoring unusable digits classifier cache {self.cache_path} ({e}); retraining",
                stacklevel=3,
            )
            return None
        return params

    def _save(self, params: Any) -> None:
        from flax import serialization

        os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
        state = {"params": serialization.to_state_dict(params), "meta": self.meta}
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(serialization.msgpack_serialize(state))
        os.replace(tmp, self.cache_path)

    def _train(self, params: Any, seed: int, epochs: int = 8, batch_size: int = 64) -> Any:
        import jax
        import jax.numpy as jnp
        import optax

        t0 = time.time()
        images, labels = load_digits_32("train")
        x_all = _to_float(images)
        tx = optax.adam(optax.cosine_decay_schedule(3e-3, epochs * (len(x_all) // batch_size)))
        opt_state = tx.init(params)

        def loss_fn(p, x, y):
            _, logits = self._module.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, o, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, loss

        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            perm = rng.permutation(len(x_all))
            for i in range(0, len(perm) - batch_size + 1, batch_size):  # full batches: one jit
                b = perm[i : i + batch_size]
                params, opt_state, _ = step(params, opt_state, jnp.asarray(x_all[b]), labels[b])
        self.params = params
        self._apply = jax.jit(lambda p, x: self._module.apply({"params": p}, x))
        test_x, test_y = load_digits_32("test")
        self.meta = {
            "version": 1,
            "test_accuracy": self.accuracy(test_x, test_y),
            "train_seconds": round(time.time() - t0, 1),
        }
        return params

    # -- inference

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        x = check_images(images)
        if x.shape[1:3] != (DIGITS_SIZE, DIGITS_SIZE):
            import jax

            x = np.asarray(
                jax.image.resize(
                    x.astype(np.float32), (len(x), DIGITS_SIZE, DIGITS_SIZE, 3), "linear"
                )
            )
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        return _to_float(x)

    def features_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Penultimate features [N, 128] and softmax probabilities [N, 10]."""
        from scipy.special import softmax

        x = self._prepare(images)
        bs = _INFER_BATCH
        feats, logits = [], []
        for i in range(0, len(x), bs):
            chunk = x[i : i + bs]
            n = len(chunk)
            if n < bs:  # pad to one shape: one compilation for every N
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            f, lg = self._apply(self.params, chunk)
            feats.append(np.asarray(f, np.float64)[:n])
            logits.append(np.asarray(lg, np.float64)[:n])
        return np.concatenate(feats), softmax(np.concatenate(logits), axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features [N, 128]."""
        return self.features_and_probs(images)[0]

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 10]."""
        return self.features_and_probs(images)[1]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Most likely digit per image [N]."""
        return self.probs(images).argmax(axis=1)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images classified as ``labels``."""
        return class_consistency_accuracy(self.predict(images), labels)


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) * (2.0 / 255.0) - 1.0


#: spec prefix -> the extractor it builds (``inception:`` kept for existing configs)
EXTRACTOR_PREFIXES = ("fid_inception", "keras_inception", "inception")
EXTRACTOR_CHOICES = "digits, fid_inception:PATH or keras_inception:PATH"


def get_extractor(spec: str, cache: str | None = None, batch_size: int = 32
                  ) -> FeatureExtractor:
    """``digits``, ``fid_inception:PATH`` (the network of published FIDs) or
    ``keras_inception:PATH`` / ``inception:PATH`` (Keras' InceptionV3) -> an extractor."""
    if spec == "digits":
        return DigitsClassifier(cache=cache)
    prefix, sep, path = spec.partition(":")
    if sep and prefix in EXTRACTOR_PREFIXES:
        if not path:
            raise GenerationEvalError(f"give the weights file: --extractor {prefix}:PATH")
        if prefix == "fid_inception":
            from evals.fid_inception import FIDInceptionExtractor  # flax network, lazily

            return FIDInceptionExtractor(path, batch_size=batch_size)
        return InceptionV3Extractor(path, batch_size=batch_size)
    raise GenerationEvalError(f"unknown extractor {spec!r}; use {EXTRACTOR_CHOICES}")


# ----------------------------------------------------------------------------- I/O + CLI

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_images(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8 [N, H, W, 3]) and optional labels from an ``.npz`` or a directory."""
    if os.path.isdir(path):
        return _load_image_dir(path)
    if not os.path.isfile(path):
        raise GenerationEvalError(f"{path} does not exist (expected an .npz file or a directory)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise GenerationEvalError(f"{path} has no 'images' array (has {z.files})")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError) as e:
        if isinstance(e, GenerationEvalError):
            raise
        raise GenerationEvalError(f"unreadable image file {path}: {e}") from None
    if images.dtype != np.uint8:
        if images.dtype.kind == "f" and images.size and images.min() >= 0 and images.max() <= 1:
            images = np.round(images * 255).astype(np.uint8)  # floats in [0, 1]
        else:
            raise GenerationEvalError(
                f"{path}: images are {images.dtype}; expected uint8 0..255 (or floats in [0, 1])"
            )
    try:
        images = check_images(images)
    except GenerationEvalError as e:
        raise GenerationEvalError(f"{path}: {e}") from None
    if labels is not None and labels.reshape(-1).shape[0] != len(images):
        raise GenerationEvalError(f"{path}: {len(labels)} labels for {len(images)} images")
    return images, (None if labels is None else labels.reshape(-1).astype(np.int64))


def _load_image_dir(directory: str) -> tuple[np.ndarray, np.ndarray | None]:
    from uvim_givt.data.images import read_image

    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise GenerationEvalError(f"directory {directory} has no PNG/JPEG images")
    images = []
    for name in names:
        p = os.path.join(directory, name)
        try:
            img = read_image(p)
        except DataError as e:
            raise GenerationEvalError(str(e)) from None
        if images and img.shape != images[0].shape:
            raise GenerationEvalError(
                f"image {p} is {img.shape[1]}x{img.shape[0]}, the others "
                f"{images[0].shape[1]}x{images[0].shape[0]}; all images must have one size"
            )
        images.append(img[..., ::-1])  # BGR -> RGB
    labels = None
    labels_path = os.path.join(directory, "labels.json")
    if os.path.isfile(labels_path):
        try:
            with open(labels_path) as f:
                table = json.load(f)
            labels = np.array([int(table[os.path.splitext(n)[0]]) for n in names])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GenerationEvalError(
                f"{labels_path} must map every image's file stem to an int label: {e!r}"
            ) from None
    return np.stack(images).astype(np.uint8), labels


def evaluate_generation(
    samples: np.ndarray,
    reference: np.ndarray,
    extractor: FeatureExtractor,
    sample_labels: np.ndarray | None = None,
    is_splits: int = 10,
) -> dict[str, Any]:
    """FID (samples vs reference), IS of the samples and, given labels, class consistency."""
    feats_s, probs_s = features_and_probs(extractor, samples)
    feats_r = extractor.features(reference)
    mean_is, std_is = inception_score(probs_s, splits=min(is_splits, len(probs_s)))
    metrics = {"FID": fid_from_features(feats_s, feats_r), "IS": mean_is, "IS_std": std_is}
    if sample_labels is not None and getattr(extractor, "predicts_dataset_classes", True):
        metrics["class_accuracy"] = class_consistency_accuracy(
            probs_s.argmax(axis=1), sample_labels
        )
    return {
        "metrics": metrics,
        "num_samples": len(samples),
        "num_reference": len(reference),
        **extractor_record(extractor),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = ArgumentParser(
        prog="python -m evals.generation",
        description="FID, Inception Score and class consistency of generated images.",
    )
    p.add_argument("--samples", required=True, help=".npz (images[, labels]) or image directory")
    p.add_argument("--reference", required=True, help=".npz or image directory (real images)")
    p.add_argument("--extractor", default="digits",
                   help="digits | fid_inception:PATH (pytorch-fid's pt_inception-2015-12-05"
                        "-6726825d.pth: FIDs comparable to published ones) | "
                        "keras_inception:PATH (Keras' InceptionV3 .h5: not comparable)")
    p.add_argument("--cache-dir", default=None, help=f"digits classifier cache (${CACHE_ENV})")
    p.add_argument("--is-splits", type=positive_int, default=10)
    p.add_argument("--out", help="write the result as JSON here")
    add_verbose_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _main(args), args.verbose)


def _main(args: argparse.Namespace) -> int:
    samples, labels = load_images(args.samples)
    reference, _ = load_images(args.reference)
    extractor = get_extractor(args.extractor, cache=args.cache_dir)
    result = evaluate_generation(samples, reference, extractor, labels, args.is_splits)
    for k, v in result["metrics"].items():
        print(f"{k:>15s}  {v:.4f}")
    print(f"{'samples':>15s}  {result['num_samples']} (reference {result['num_reference']}, "
          f"extractor {result['extractor']})")
    if not result["fid_comparable_to_published"]:
        print(f"{'':>15s}  note: FID by {result['extractor']}, not comparable to published FIDs"
              " (use --extractor fid_inception:PATH for those)")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
