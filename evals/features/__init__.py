"""Feature extractors of the generation metrics, and the one way to build one from a spec.

An extractor turns uint8 RGB images [N, H, W, 3] into features [N, D] (for FIDs) and
class probabilities [N, C] (for the Inception Score and class consistency); see
:class:`FeatureExtractor`. It is named on the command line and in an evaluator's
``extractor`` option, and :func:`get_extractor` builds it:

* ``fid_inception:PATH`` (:class:`evals.features.fid_inception.FIDInceptionExtractor`):
  the FID Inception network of published FIDs (the 2015-12-05 TF graph that TTUR,
  pytorch-fid and the ADM suite use), in flax, with pytorch-fid's weights file
  ``pt_inception-2015-12-05-6726825d.pth`` (or an .npz of its keys; read by
  :mod:`evals.features.torch_weights`). Its FIDs are the ones to compare with papers;
  IS is over its 1008 logits, as published.
* ``keras_inception:PATH`` (or, as before, ``inception:PATH``;
  :class:`evals.features.keras_inception.InceptionV3Extractor`): Keras' InceptionV3 with
  Keras' weights file. A different network and preprocessing, so its FIDs are comparable
  among themselves only, *not* with published FIDs; results are labelled
  ``keras_inception``.
* ``digits`` (:class:`evals.features.digits_classifier.DigitsClassifier`): a small CNN
  the project trains itself (seconds, on CPU) on scikit-learn's bundled 8x8 handwritten
  digits, upsampled to 32x32 RGB. It is the feature extractor for the embedded, offline
  generation task.

Nothing is ever downloaded. Every result names the extractor that made it
(:func:`extractor_record`: ``extractor``: ``fid_inception`` | ``keras_inception`` |
``digits``) and says whether its FID can be set beside published numbers
(``fid_comparable_to_published``; true for ``fid_inception`` only).

Importing this package is cheap: jax/flax and Keras are imported when an extractor is
built. Nothing here imports the metrics (:mod:`evals.generation_metrics`) or the
evaluation loops.
"""

from __future__ import annotations

from evals.features.base import (
    FeatureExtractor,
    GenerationEvalError,
    check_images,
    class_consistency_accuracy,
    extractor_label,
    extractor_record,
    features_and_probs,
)
from evals.features.digits_classifier import DigitsClassifier
from evals.features.fid_inception import FIDInceptionExtractor
from evals.features.keras_inception import InceptionV3Extractor

__all__ = [
    "EXTRACTOR_CHOICES",
    "EXTRACTOR_PREFIXES",
    "DigitsClassifier",
    "FIDInceptionExtractor",
    "FeatureExtractor",
    "GenerationEvalError",
    "check_images",
    "class_consistency_accuracy",
    "extractor_label",
    "extractor_record",
    "features_and_probs",
    "get_extractor",
    "InceptionV3Extractor",
]

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
            return FIDInceptionExtractor(path, batch_size=batch_size)
        return InceptionV3Extractor(path, batch_size=batch_size)
    raise GenerationEvalError(f"unknown extractor {spec!r}; use {EXTRACTOR_CHOICES}")
