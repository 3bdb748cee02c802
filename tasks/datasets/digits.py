"""`digits`: scikit-learn's handwritten digits with the features of TFDS `imagenet2012`.

The 1,797 real 8x8 scans (values 0..16, 10 classes) that ship inside scikit-learn
(`sklearn.datasets.load_digits`, no download) are scaled to 0..255 and upsampled with
bicubic interpolation (OpenCV `INTER_CUBIC`, clipped to 0..255) to `image_size` squared, grey
replicated to RGB, JPEG-encoded (quality 95) as ImageNet's images are. A fixed-seed,
per-class (stratified) hold-out of `validation_percent` percent forms `validation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from uvim_givt.data.embedded_builder import EmbeddedBuilder, encode_jpeg

_VERSION = tfds.core.Version("1.0.0")
NUM_EXAMPLES = 1797
CLASS_NAMES = [str(i) for i in range(10)]


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """Output size, share held out for validation, and the seed of the hold-out."""

    image_size: int = 32
    validation_percent: int = 20
    seed: int = 0


def split_indices(labels: np.ndarray, validation_percent: int, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded train/validation indices (each sorted)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        val.append(members[: int(round(len(members) * validation_percent / 100))])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return {"train": train_idx, "validation": val_idx}


def upsample_digit(image_8x8: np.ndarray, size: int) -> np.ndarray:
    """0..16 8x8 -> uint8 RGB [size, size, 3], bicubic."""
    scaled = image_8x8.astype(np.float32) * (255.0 / 16.0)
    big = cv2.resize(scaled, (size, size), interpolation=cv2.INTER_CUBIC)
    big = np.clip(np.round(big), 0, 255).astype(np.uint8)
    return np.repeat(big[..., None], 3, axis=-1)


class Digits(EmbeddedBuilder):
    """Handwritten digits from scikit-learn, features as `imagenet2012`."""

    name = "digits"
    VERSION = _VERSION
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DigitsConfig(name="default", version=_VERSION, description="32x32 RGB, 20% validation."),
        DigitsConfig(name="64px", version=_VERSION, image_size=64, description="64x64 RGB."),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        """Features mirror imagenet2012 (image jpeg, label, file_name); imagenette's subset."""
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's 8x8 handwritten digits, upsampled; 10 classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """Two splits of the bundled data, held out by a fixed seed."""
        del dl_manager
        from sklearn.datasets import load_digits  # heavy import, only needed when building

        data = load_digits()
        images, labels = data.images, data.target.astype(np.int64)
        cfg = self.builder_config
        splits = split_indices(labels, cfg.validation_percent, cfg.seed)
        return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

    def _generate_examples(  # type: ignore[override]
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[str, dict]]:
        size = self.builder_config.image_size
        for i in indices:
            file_name = f"digit_{int(i):04d}.jpg"
            yield (
                file_name,
                {
                    "image": encode_jpeg(upsample_digit(images[i], size)),
                    "label": int(labels[i]),
                    "file_name": file_name,
                },
            )
