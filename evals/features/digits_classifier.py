"""The digits classifier: the feature extractor of the embedded, offline generation task
(spec ``digits``).

A small CNN the project trains itself (seconds, on CPU) on scikit-learn's bundled 8x8
handwritten digits, upsampled to 32x32 RGB (:func:`load_digits_32`). It trains once and
is then loaded from the project's cache (:func:`cache_dir`). Features are its 128-d
penultimate layer, probabilities the softmax over the 10 digits, whose classes are the
dataset's labels (so the class consistency of samples is meaningful).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np

from evals.features.base import GenerationEvalError, check_images, class_consistency_accuracy

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
