"""``python -m evals.leaderboard``: see :mod:`evals.leaderboard.cli`."""

import sys

from evals.leaderboard.cli import main

if __name__ == "__main__":
    sys.exit(main())
