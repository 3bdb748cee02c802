"""Linear probes: how much of the class a frozen model's features make linearly readable.

The representation side of generative models (VIM, DiGIT): a GIVT's decoder activations
at block ``l``, averaged over the sequence positions, are the features of an image; a
linear classifier (multinomial logistic regression on standardised features, scikit-learn)
is fitted on the training split's features and scored by top-1 accuracy on held-out ones.
Two baselines come from the same images: the raw pixels and the VAE's posterior means
(the GIVT's own input), so a layer's accuracy says what the transformer adds.

The features are computed class-blind: a class-conditional GIVT reads every image with
its label dropped (the NOLABEL embedding), or the label would be in the features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uvim_givt.errors import EvalError


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                          test_y: np.ndarray, *, c: float = 1.0, seed: int = 0) -> float:
    """Top-1 accuracy on (test_x, test_y) of a logistic-regression probe fitted on the
    training features (standardised with the training statistics)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = _2d(train_x), _2d(test_x)
    if len(np.unique(train_y)) < 2:
        raise EvalError("a linear probe needs at least two classes in its training split")
    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(train_x), train_y)
    return float(np.mean(clf.predict(scaler.transform(test_x)) == test_y))


def _2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


@dataclasses.dataclass
class ProbeFeatures:
    """Features of one split: per source (``pixels``, ``vae``, ``layer_<l>``) [N, F]."""

    labels: np.ndarray
    features: dict[str, np.ndarray]


def probe_all(train: ProbeFeatures, test: ProbeFeatures, *, c: float = 1.0,
              seed: int = 0) -> dict[str, float]:
    """Accuracy of a probe per feature source present in both splits."""
    missing = set(train.features) ^ set(test.features)
    if missing:
        raise EvalError(f"feature sources differ between the splits: {sorted(missing)}")
    return {name: linear_probe_accuracy(train.features[name], train.labels,
                                        test.features[name], test.labels, c=c, seed=seed)
            for name in train.features}


def layer_sources(layers: Iterable[int]) -> list[str]:
    return [f"layer_{layer}" for layer in layers]


def plot_probe(results: dict[str, float], path: str, title: str = "") -> str:
    """Accuracy against the decoder layer (a line), the baselines as marked lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(int(k.split("_")[1]) for k in results if k.startswith("layer_"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if layers:
        ax.plot(layers, [100 * results[f"layer_{i}"] for i in layers], "o-", color="C0",
                label="GIVT decoder block output (mean over positions)")
    for (name, label), style in zip((("pixels", "raw pixels"), ("vae", "VAE posterior means")),
                                    (("C3", "--"), ("C2", ":")), strict=True):
        if name in results:
            ax.axhline(100 * results[name], color=style[0], linestyle=style[1],
                       label=f"{label}: {100 * results[name]:.1f}%")
    ax.set(xlabel="decoder block", ylabel="held-out top-1 accuracy (%)",
           title=title or "linear probe")
    if layers:
        ax.set_xticks(layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_layers(layers: Sequence[int], depth: int) -> list[int]:
    """``layers`` (1-based decoder blocks) checked against the model's ``depth``."""
    bad = [layer for layer in layers if not 1 <= layer <= depth]
    if bad:
        raise EvalError(f"--layer {bad[0]}: the GIVT decoder has blocks 1..{depth}")
    return sorted(set(layers))


def split_features(task: Any, gen: Any, source: str, split: str, batch_size: int,
                   max_examples: int | None, layers: Sequence[int]) -> ProbeFeatures:
    """Probe features of a split's images: raw pixels, the VAE's posterior means and the
    GIVT's block outputs (label dropped where the model can drop it)."""
    from evals.generation_loop import eval_images
    from uvim_givt.models.representations import block_means, unscanned

    model, params = unscanned(gen.model, gen.givt_params)
    nolabel = "nolabel" in model.special_labels

    @jax.jit
    def reps(params, y):
        drop = jnp.ones((y.shape[0],), bool) if nolabel else None
        return block_means(model, params, y, drop_labels=drop, layers=layers)

    labels, feats = [], {"pixels": [], "vae": [], **{s: [] for s in layer_sources(layers)}}
    for images, y in eval_images(task, gen.cfg, source, split, batch_size, max_examples):
        mu = gen.encode(images)
        out = reps(params, gen.adapt(mu))
        labels.append(np.asarray(y))
        feats["pixels"].append(np.asarray(images).reshape(len(images), -1))
        feats["vae"].append(np.asarray(mu).reshape(len(images), -1))
        for layer in layers:
            feats[f"layer_{layer}"].append(np.asarray(out[layer]))
    if not labels:
        raise EvalError(f"split {split!r} of {source} has no examples")
    return ProbeFeatures(np.concatenate(labels), {k: np.concatenate(v) for k, v in feats.items()})
