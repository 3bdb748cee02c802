"""Evaluators: PQ, depth metrics, generation metrics, the leaderboard."""

import uvim_givt  # noqa: F401  (first: the quiet TensorFlow start-up, see uvim_givt.quiet)
