"""Generation metrics: Frechet distance (FID), Inception Score, class consistency.

Pure NumPy/SciPy maths over features [N, D] and class probabilities [N, C]
(:func:`frechet_distance`, :func:`fid_from_features`, :func:`inception_score`,
:func:`class_consistency_accuracy`), and :func:`evaluate_generation`, which scores sample
images against reference images with a feature extractor (:mod:`evals.features`). The
generation evaluators (:mod:`evals.generation_loop`) and the files-mode command line
(:mod:`evals.generation`) both score through these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evals.features import (
    FeatureExtractor,
    GenerationEvalError,
    class_consistency_accuracy,
    extractor_record,
    features_and_probs,
)

__all__ = [
    "GenerationEvalError",
    "class_consistency_accuracy",  # defined beside the extractors (a classifier's accuracy)
    "evaluate_generation",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
]


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
