"""What every feature extractor shares: the protocol, image checks, result records.

A feature extractor turns uint8 RGB images into features (for FIDs) and class
probabilities (for the Inception Score and, when its classes are the dataset's, the
class consistency). This module holds the :class:`FeatureExtractor` protocol, the
error every evaluation input raises (:class:`GenerationEvalError`), the image check
all extractors apply, and what a result records about the extractor that made it.
The class-consistency accuracy lives here too: it is an extractor's classifier
scored on requested labels (the digits classifier's own accuracy is the same number).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from uvim_givt.errors import EvalError


class GenerationEvalError(EvalError):
    """An input (file, array, extractor spec) that cannot be evaluated as given."""


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


def class_consistency_accuracy(pred_labels: np.ndarray, requested_labels: np.ndarray) -> float:
    """Fraction (0..1) of samples classified as the class they were generated for."""
    pred = np.asarray(pred_labels).reshape(-1)
    req = np.asarray(requested_labels).reshape(-1)
    if pred.shape != req.shape or pred.size == 0:
        raise GenerationEvalError(
            f"need as many predicted as requested labels (> 0); got {pred.size} and {req.size}"
        )
    return float(np.mean(pred == req))
