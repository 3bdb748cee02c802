"""TFDS builders of the embedded default datasets; importing registers them with TFDS.

After `import uvim_givt.data.builders`, `tfds.builder('synthetic_panoptic')`,
`tfds.builder('synthetic_depth')` and `tfds.builder('digits')` work like any TFDS dataset
(built locally, nothing is downloaded; see `uvim_givt.data.embedded.ensure_built`).
"""

from uvim_givt.data.builders.digits import Digits, DigitsConfig
from uvim_givt.data.builders.synthetic_depth import SyntheticDepth, SyntheticDepthConfig
from uvim_givt.data.builders.synthetic_panoptic import (
    CATEGORIES,
    SyntheticPanoptic,
    SyntheticPanopticConfig,
    export_coco_format,
)

# Embedded dataset -> the real TFDS dataset whose features it mirrors.
REAL_COUNTERPARTS: dict[str, str] = {
    "synthetic_panoptic": "coco/2017_panoptic",
    "synthetic_depth": "nyu_depth_v2",
    "digits": "imagenet2012",
}

BUILDERS = {b.name: b for b in (SyntheticPanoptic, SyntheticDepth, Digits)}


def register() -> None:
    """No-op kept for explicitness: importing this package already registered the builders."""


__all__ = [
    "BUILDERS",
    "CATEGORIES",
    "REAL_COUNTERPARTS",
    "Digits",
    "DigitsConfig",
    "SyntheticDepth",
    "SyntheticDepthConfig",
    "SyntheticPanoptic",
    "SyntheticPanopticConfig",
    "export_coco_format",
    "register",
]
