"""Task plugins: panoptic, depth, imagenet."""

import uvim_givt  # noqa: F401  (first: the quiet TensorFlow start-up, see uvim_givt.quiet)
