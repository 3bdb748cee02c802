"""Keras' InceptionV3 as a feature extractor (spec ``keras_inception:PATH``, or as before
``inception:PATH``; label ``keras_inception``).

A different network and preprocessing from the FID Inception of published FIDs
(:mod:`evals.features.fid_inception`), so its FIDs are comparable among themselves only,
*not* with published FIDs. Keras is imported when an extractor is built; nothing is
downloaded.
"""

from __future__ import annotations

import os

import numpy as np

from evals.features.base import GenerationEvalError, check_images

INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"


class InceptionV3Extractor:
    """Keras InceptionV3 (ImageNet classes) from a local weights file; label
    ``keras_inception``.

    Not the network of published FIDs (see :mod:`evals.features.fid_inception` for that one):
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

