"""The FID Inception network: the one published FIDs are computed with (spec
``fid_inception:PATH``, label ``fid_inception``).

Published FIDs (TTUR's ``fid.py``, the ADM / guided-diffusion evaluation suite,
pytorch-fid) all use the TF-slim InceptionV3 graph of 2015-12-05
(``inception-2015-12-05.tgz``), not a Keras or torchvision InceptionV3. It differs
from those in three places, which this flax port (NHWC) reproduces:

* the average pools inside the Mixed_5* (A), Mixed_6b-e (C) and Mixed_7b (E)
  blocks divide by the number of *real* pixels under the window (TF's average
  pool ignores the zero padding);
* the pool branch of the last block (Mixed_7c) is a 3x3 *max* pool;
* the classifier has 1008 outputs (1000 ImageNet classes + unused ones).

Every convolution is bias-free, followed by batch normalisation (eps 1e-3) and a
ReLU. Features are the 2048-d "pool3" (the spatial mean of Mixed_7c); the class
probabilities are ``softmax(pool3 @ W)`` over the 1008 logits *without* the FC
bias, as the original Inception Score code (improved-gan, the ADM suite) reads
them from ``softmax/logits/MatMul``.

Preprocessing follows pytorch-fid: uint8 images become floats in [0, 1], are
resized to 299x299 bilinearly (half-pixel centres, i.e. ``align_corners=False``,
no antialiasing; a 299x299 image is left as it is), then mapped to [-1, 1]. (The TF
graph's own resize, used by TTUR and the ADM suite on e.g. 256px images, is TF1's
bilinear without half-pixel centres; for images that are not 299x299 the FIDs of the two
pipelines can differ slightly. At 299x299 both feed the network the same pixels.)

Weights come from a file the user gives; nothing is ever downloaded:

* pytorch-fid's released ``pt_inception-2015-12-05-6726825d.pth`` (or any
  ``torch.save`` of the same state dict, in torch's zip format or its older
  "legacy" stream format), read by a small reader that needs no torch and
  unpickles nothing but tensors (a restricted unpickler; :mod:`evals.features.torch_weights`);
* an ``.npz`` with the same key names and torch layouts
  (``Mixed_5b.branch1x1.conv.weight`` [out, in, kh, kw], ``...bn.running_var``,
  ``fc.weight`` [1008, 2048], ...). ``python -m evals.fid_inception W.pth --to-npz
  W.npz`` writes one.

A missing, extra or mis-shaped key is reported by name, with the file.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from evals.features.base import GenerationEvalError, check_images
from evals.features.torch_weights import (
    IGNORED_SUFFIXES,
    WEIGHTS_FILE,
    FIDWeightsError,
    read_state_dict,
)

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3


# ----------------------------------------------------------------------------- network


def _flax():
    # flax/jax are imported on first use: the files-mode CLI starts without them.
    import flax.linen as nn
    import jax

    return nn, jax


def build_network() -> Any:
    """The FID InceptionV3 as a flax module: ``apply(vars, x)`` with x [N, 299, 299, 3]
    in [-1, 1] returns (pool3 [N, 2048], logits [N, 1008], the FC bias included)."""
    nn, jax = _flax()
    hi = jax.lax.Precision.HIGHEST  # FIDs must not depend on TF32/bf16 matmul defaults

    class BasicConv(nn.Module):
        """Conv (no bias) -> BatchNorm (running statistics) -> ReLU; torch's BasicConv2d."""

        features: int
        kernel: tuple[int, int]
        strides: int = 1
        padding: tuple[int, int] = (0, 0)

        @nn.compact
        def __call__(self, x):
            (ph, pw), s = self.padding, self.strides
            x = nn.Conv(self.features, self.kernel, strides=(s, s),
                        padding=((ph, ph), (pw, pw)), use_bias=False, precision=hi,
                        name="conv")(x)
            x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
            return nn.relu(x)

    def conv(name, features, kernel=(1, 1), strides=1, padding=(0, 0)):
        return BasicConv(features, kernel, strides, padding, name=name)

    def avg_pool_3x3(x):
        # TF's average pool: the padded zeros are not counted (count_include_pad=False)
        return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)

    def cat(*xs):
        return jax.numpy.concatenate(xs, axis=-1)

    class BlockA(nn.Module):  # Mixed_5b/c/d
        pool_features: int

        @nn.compact
        def __call__(self, x):
            b1 = conv("branch1x1", 64)(x)
            b5 = conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(conv("branch5x5_1", 48)(x))
            b3 = conv("branch3x3dbl_1", 64)(x)
            b3 = conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
            b3 = conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
            bp = conv("branch_pool", self.pool_features)(avg_pool_3x3(x))
            return cat(b1, b5, b3, bp)

    class BlockB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
        @nn.compact
        def __call__(self, x):
            b3 = conv("branch3x3", 384, (3, 3), strides=2)(x)
            bd = conv("branch3x3dbl_1", 64)(x)
            bd = conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
            bd = conv("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
            return cat(b3, bd, nn.max_pool(x, (3, 3), (2, 2)))

    class BlockC(nn.Module):  # Mixed_6b/c/d/e: factorised 7x7
        channels_7x7: int

        @nn.compact
        def __call__(self, x):
            c = self.channels_7x7
            row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
            b1 = conv("branch1x1", 192)(x)
            b7 = conv("branch7x7_1", c)(x)
            b7 = conv("branch7x7_2", c, **row)(b7)
            b7 = conv("branch7x7_3", 192, **col)(b7)
            bd = conv("branch7x7dbl_1", c)(x)
            bd = conv("branch7x7dbl_2", c, **col)(bd)
            bd = conv("branch7x7dbl_3", c, **row)(bd)
            bd = conv("branch7x7dbl_4", c, **col)(bd)
            bd = conv("branch7x7dbl_5", 192, **row)(bd)
            bp = conv("branch_pool", 192)(avg_pool_3x3(x))
            return cat(b1, b7, bd, bp)

    class BlockD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
        @nn.compact
        def __call__(self, x):
            b3 = conv("branch3x3_2", 320, (3, 3), strides=2)(conv("branch3x3_1", 192)(x))
            b7 = conv("branch7x7x3_1", 192)(x)
            b7 = conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
            b7 = conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
            b7 = conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
            return cat(b3, b7, nn.max_pool(x, (3, 3), (2, 2)))

    class BlockE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool)
        max_pool: bool

        @nn.compact
        def __call__(self, x):
            row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
            b1 = conv("branch1x1", 320)(x)
            b3 = conv("branch3x3_1", 384)(x)
            b3 = cat(conv("branch3x3_2a", 384, **row)(b3), conv("branch3x3_2b", 384, **col)(b3))
            bd = conv("branch3x3dbl_1", 448)(x)
            bd = conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
            bd = cat(conv("branch3x3dbl_3a", 384, **row)(bd),
                     conv("branch3x3dbl_3b", 384, **col)(bd))
            if self.max_pool:  # the 2015 graph's quirk in its last block
                pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
            else:
                pooled = avg_pool_3x3(x)
            return cat(b1, b3, bd, conv("branch_pool", 192)(pooled))

    class FIDInceptionV3(nn.Module):
        """Stem, Mixed_5b..Mixed_7c, spatial mean (pool3) and the 1008-way FC."""

        @nn.compact
        def __call__(self, x):
            x = conv("Conv2d_1a_3x3", 32, (3, 3), strides=2)(x)
            x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)
            x = conv("Conv2d_2b_3x3", 64, (3, 3), padding=(1, 1))(x)
            x = nn.max_pool(x, (3, 3), (2, 2))
            x = conv("Conv2d_3b_1x1", 80)(x)
            x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)
            x = nn.max_pool(x, (3, 3), (2, 2))
            for name, pf in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
                x = BlockA(pf, name=name)(x)
            x = BlockB(name="Mixed_6a")(x)
            for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                             ("Mixed_6e", 192)):
                x = BlockC(c7, name=name)(x)
            x = BlockD(name="Mixed_7a")(x)
            x = BlockE(False, name="Mixed_7b")(x)
            x = BlockE(True, name="Mixed_7c")(x)
            pool3 = x.mean(axis=(1, 2))
            return pool3, nn.Dense(NUM_LOGITS, precision=hi, name="fc")(pool3)

    return FIDInceptionV3()


@functools.cache
def variable_shapes() -> Mapping[tuple[str, ...], tuple[int, ...]]:
    """Flax variable path ('params'|'batch_stats', module..., leaf) -> shape (read-only)."""
    nn, jax = _flax()
    net = build_network()
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    tree = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[tuple(k.key for k in path)] = tuple(leaf.shape)
    return types.MappingProxyType(flat)


# flax leaf -> (torch suffix, the layout change from torch's array to flax's)
_LEAF_TO_TORCH: dict[tuple[str, str], tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    ("params", "kernel"): ("weight", lambda a: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T),
    ("params", "scale"): ("weight", lambda a: a),
    ("params", "bias"): ("bias", lambda a: a),
    ("batch_stats", "mean"): ("running_mean", lambda a: a),
    ("batch_stats", "var"): ("running_var", lambda a: a),
}
# flax shape -> the torch shape of the same array ([kh, kw, in, out] -> [out, in, kh, kw])
_FLAX_TO_TORCH_SHAPE = {"kernel": lambda s: (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]}


def torch_key(path: tuple[str, ...]) -> str:
    """The state-dict key of a flax variable path, e.g. ('params', 'Mixed_5b', 'branch1x1',
    'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'."""
    suffix, _ = _LEAF_TO_TORCH[(path[0], path[-1])]
    return ".".join((*path[1:-1], suffix))


def params_from_state_dict(state: Mapping[str, np.ndarray], source: str = "the state dict"
                           ) -> dict[str, Any]:
    """Flax variables ``{'params', 'batch_stats'}`` from a pytorch-fid state dict.

    Every key the network needs must be there with its shape, and no other key
    (``num_batches_tracked`` aside): a different network's file is refused by name.
    """
    shapes = variable_shapes()
    variables: dict[str, Any] = {}
    missing, wrong = [], []
    expected = set()
    for path, shape in shapes.items():
        key = torch_key(path)
        expected.add(key)
        if key not in state:
            missing.append(key)
            continue
        arr = np.asarray(state[key])
        want = _FLAX_TO_TORCH_SHAPE.get(path[-1], lambda s: s)(shape)
        if arr.shape != want:
            wrong.append(f"{key} is {list(arr.shape)}, expected {list(want)}")
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            wrong.append(f"{key} is {arr.dtype}, expected floats")
            continue
        leaf = _LEAF_TO_TORCH[(path[0], path[-1])][1](arr.astype(np.float32))
        node = variables
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.ascontiguousarray(leaf)
    extra = sorted(k for k in state if k not in expected and not k.endswith(IGNORED_SUFFIXES))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_few(missing)})")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped ({_few(wrong)})")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s) ({_few(extra)})")
    if problems:
        raise FIDWeightsError(
            f"{source} does not hold the FID Inception weights (pytorch-fid's {WEIGHTS_FILE}"
            f" or an .npz of the same keys): {'; '.join(problems)}")
    return variables


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def load_variables(path: str) -> dict[str, Any]:
    """The network's flax variables from a weights file (see :func:`read_state_dict`)."""
    return params_from_state_dict(read_state_dict(path), source=path)


# ----------------------------------------------------------------------------- preprocessing


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of 1-D bilinear resizing with half-pixel centres (torch's
    ``interpolate(mode='bilinear', align_corners=False)``, no antialiasing): output
    pixel i reads input position ``(i + 0.5) * in/out - 0.5``, clamped to the edges."""
    if in_size < 1 or out_size < 1:
        raise GenerationEvalError(f"cannot resize {in_size} pixels to {out_size}")
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    w = np.zeros((out_size, in_size), np.float64)
    np.add.at(w, (np.arange(out_size), i0), 1.0 - frac)
    np.add.at(w, (np.arange(out_size), i1), frac)
    return w.astype(np.float32)


def preprocess(images: Any) -> Any:
    """uint8 (or [0, 255] float) images [N, H, W, 3] -> network input [N, 299, 299, 3] in
    [-1, 1]: /255, bilinear resize (:func:`bilinear_matrix`), then 2x - 1 (pytorch-fid's
    order). Works on numpy or traced jax arrays."""
    _, jax = _flax()
    jnp = jax.numpy
    x = jnp.asarray(images, jnp.float32) / 255.0
    h, w = x.shape[1:3]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):  # resizing 299 -> 299 is the identity
        wh = jnp.asarray(bilinear_matrix(h, INPUT_SIZE))
        ww = jnp.asarray(bilinear_matrix(w, INPUT_SIZE))
        hi = jax.lax.Precision.HIGHEST
        x = jnp.einsum("oh,nhwc->nowc", wh, x, precision=hi)
        x = jnp.einsum("pw,nowc->nopc", ww, x, precision=hi)
    return 2.0 * x - 1.0


# ----------------------------------------------------------------------------- extractor


class FIDInceptionExtractor:
    """Feature extractor of published FIDs: the FID Inception (see the module docstring).

    ``weights``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or an ``.npz``
    of its keys; ``variables`` (flax variables) instead, for tests. Features are the
    2048-d pool3, probabilities the 1008-way softmax without the FC bias (IS as
    published). Its 1008 classes are the 2015 graph's own indices, not a dataset's
    labels, so no class-consistency accuracy is computed from them.
    """

    name = "fid_inception"
    comparable_to_published = True
    predicts_dataset_classes = False

    def __init__(self, weights: str | None = None, batch_size: int = 32,
                 variables: Mapping[str, Any] | None = None):
        if (weights is None) == (variables is None):
            raise GenerationEvalError("give the FID Inception weights file (or variables)")
        _, jax = _flax()
        self.weights = weights
        loaded = load_variables(weights) if weights is not None else variables
        self.variables = jax.device_put(loaded)  # once, not with every batch
        self.batch_size = batch_size
        net = build_network()

        def run(variables, images):
            pool3, logits = net.apply(variables, preprocess(images))
            # IS reads the logits before the bias is added (softmax/logits/MatMul)
            unbiased = logits - variables["params"]["fc"]["bias"]
            return pool3, jax.nn.softmax(unbiased, axis=-1)

        self._run = jax.jit(run)

    def _batches(self, images: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        x = check_images(images)
        bs = self.batch_size
        for i in range(0, len(x), bs):
            chunk = x[i:i + bs]
            n = len(chunk)
            if n < bs and len(x) > bs:  # pad the tail: one compilation per image size
                chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), chunk.dtype)])
            yield chunk, n

    def features_and_probs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pool3 features [N, 2048] and softmax probabilities [N, 1008] (float64)."""
        feats, probs = [], []
        for chunk, n in self._batches(images):
            f, p = self._run(self.variables, chunk)
            feats.append(np.asarray(f, np.float64)[:n])
            probs.append(np.asarray(p, np.float64)[:n])
        if not feats:
            return np.zeros((0, FEATURE_DIM)), np.zeros((0, NUM_LOGITS))
        return np.concatenate(feats), np.concatenate(probs)

    def features(self, images: np.ndarray) -> np.ndarray:
        """pool3 features [N, 2048]."""
        return self.features_and_probs(images)[0]

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 1008]."""
        return self.features_and_probs(images)[1]
