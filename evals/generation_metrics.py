"""Generation metrics: Frechet distance (FID), Inception Score, precision and recall,
KID, class consistency.

Pure NumPy/SciPy maths over features [N, D] and class probabilities [N, C]
(:func:`frechet_distance`, :func:`fid_from_features`, :func:`inception_score`,
:func:`precision_recall`, :func:`kernel_inception_distance`,
:func:`class_consistency_accuracy`), reference statistics files in the ADM layout
(:func:`load_reference_stats`, :func:`save_reference_stats`), and
:func:`evaluate_generation`, which scores sample images against reference images with a
feature extractor (:mod:`evals.features`). The generation evaluators
(:mod:`evals.generation_loop`) and the files-mode command line (:mod:`evals.generation`)
both score through these.
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
    "kernel_inception_distance",
    "load_reference_stats",
    "precision_recall",
    "save_reference_stats",
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


def _check_features(name: str, f: np.ndarray, min_rows: int) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < min_rows:
        raise GenerationEvalError(f"{name} features must be [N >= {min_rows}, D]; got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise GenerationEvalError(f"{name} features have NaN/inf values")
    return f


def _kth_neighbour_radii(feats: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (the row itself excluded)."""
    sq = np.sum(feats * feats, axis=1)
    out = np.empty(len(feats))
    for start in range(0, len(feats), chunk):
        block = feats[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ feats.T
        # column k of the sorted distances: column 0 is the row itself (distance 0)
        out[start:start + chunk] = np.sqrt(np.maximum(
            np.partition(d2, k, axis=1)[:, k], 0.0))
    return out


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
             chunk: int = 1024) -> np.ndarray:
    """Whether each point lies in at least one ball (centre, radius)."""
    sq_c = np.sum(centres * centres, axis=1)
    out = np.empty(len(points), bool)
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk]
        d2 = np.sum(block * block, axis=1)[:, None] + sq_c[None, :] - 2.0 * block @ centres.T
        out[start:start + chunk] = np.any(np.sqrt(np.maximum(d2, 0.0)) <= radii[None, :],
                                          axis=1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) of [M, D] generated
    features against [N, D] real ones. Each set's manifold is the union of balls around
    its points reaching each one's k-th nearest neighbour in the same set (k = 3, as
    published); precision is the fraction of generated points inside the real manifold,
    recall the fraction of real points inside the generated one."""
    real = _check_features("real", real, k + 1)
    fake = _check_features("generated", fake, k + 1)
    if real.shape[1] != fake.shape[1]:
        raise GenerationEvalError(f"feature sizes differ: real {real.shape}, generated "
                                  f"{fake.shape}")
    precision = _covered(fake, real, _kth_neighbour_radii(real, k)).mean()
    recall = _covered(real, fake, _kth_neighbour_radii(fake, k)).mean()
    return {"precision": float(precision), "recall": float(recall)}


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al., 2018): the unbiased estimate of the squared MMD between the
    feature sets with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over
    ``num_subsets`` random subsets of ``subset_size`` rows of each (fewer when a set is
    smaller, as the reference implementations do); returns (mean, std) over the subsets."""
    real = _check_features("real", real, 2)
    fake = _check_features("generated", fake, 2)
    if real.shape[1] != fake.shape[1]:
        raise GenerationEvalError(f"feature sizes differ: real {real.shape}, generated "
                                  f"{fake.shape}")
    d = real.shape[1]
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off_diagonal - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


#: the arrays of a reference statistics file (the ADM evaluator's layout: pool features'
#: mean and covariance; its spatial ``mu_s`` / ``sigma_s`` are not used here)
STATS_KEYS = ("mu", "sigma")


def save_reference_stats(path: str, features: np.ndarray) -> None:
    """Writes the mean and covariance of reference features as an ADM-style ``.npz``
    (``mu`` [D], ``sigma`` [D, D]), to compute a dataset's FID reference once."""
    mu, sigma = gaussian_stats(features)
    np.savez(path, mu=mu, sigma=sigma)


def load_reference_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``sigma`` of a reference statistics ``.npz`` (ADM layout), checked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in STATS_KEYS if k not in z.files]
            if missing:
                raise GenerationEvalError(f"{path}: no {missing[0]!r} array (a statistics file "
                                          f"holds {', '.join(STATS_KEYS)}; has {z.files})")
            mu, sigma = (np.asarray(z[k], np.float64) for k in STATS_KEYS)
    except (OSError, ValueError) as e:
        raise GenerationEvalError(f"{path}: not a readable .npz ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise GenerationEvalError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit "
                                  "(need [D] and [D, D])")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise GenerationEvalError(f"{path}: mu or sigma has NaN/inf values")
    return mu, sigma


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
    reference: np.ndarray | tuple[np.ndarray, np.ndarray],
    extractor: FeatureExtractor,
    sample_labels: np.ndarray | None = None,
    is_splits: int = 10,
) -> dict[str, Any]:
    """FID (samples vs reference), IS of the samples, precision / recall and KID against
    the reference images, and, given labels, class consistency. ``reference`` may instead
    be a statistics file's (mu, sigma): FID and IS only (the others need features)."""
    feats_s, probs_s = features_and_probs(extractor, samples)
    mean_is, std_is = inception_score(probs_s, splits=min(is_splits, len(probs_s)))
    if isinstance(reference, tuple):
        mu_s, sigma_s = gaussian_stats(feats_s)
        fid = frechet_distance(mu_s, np.atleast_2d(sigma_s), *reference)
        metrics = {"FID": fid, "IS": mean_is, "IS_std": std_is}
        num_reference = None
    else:
        feats_r = extractor.features(reference)
        metrics = {"FID": fid_from_features(feats_s, feats_r), "IS": mean_is, "IS_std": std_is}
        if len(feats_s) > 3 and len(feats_r) > 3:
            metrics.update(precision_recall(feats_r, feats_s))
            metrics["KID"], metrics["KID_std"] = kernel_inception_distance(feats_r, feats_s)
        num_reference = len(reference)
    if sample_labels is not None and getattr(extractor, "predicts_dataset_classes", True):
        metrics["class_accuracy"] = class_consistency_accuracy(
            probs_s.argmax(axis=1), sample_labels
        )
    return {
        "metrics": metrics,
        "num_samples": len(samples),
        "num_reference": num_reference,
        **extractor_record(extractor),
    }
