"""Command line: check an FID Inception weights file, optionally convert it to ``.npz``.

::

    python -m evals.fid_inception W.pth [--to-npz W.npz]

Reads pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or an ``.npz`` of its
keys) without torch, checks that every array the network needs is there with its shape
(a missing, extra or mis-shaped key is reported by name), and with ``--to-npz`` writes
the state dict as an ``.npz`` that needs no unpickling. The network and its extractor
are :mod:`evals.features.fid_inception`'s, the file reading
:mod:`evals.features.torch_weights`'.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from evals.features.fid_inception import params_from_state_dict, variable_shapes
from evals.features.torch_weights import WEIGHTS_FILE, read_state_dict, write_npz
from uvim_givt.errors import ArgumentParser, add_verbose_argument, run_cli


def build_parser() -> argparse.ArgumentParser:
    """Check a weights file (every key and shape) and optionally convert it to .npz."""
    p = ArgumentParser(prog="python -m evals.fid_inception",
                       description="Check FID Inception weights; optionally write them as .npz.")
    p.add_argument("weights", help=f"pytorch-fid's {WEIGHTS_FILE} or an .npz of its keys")
    p.add_argument("--to-npz", help="write the state dict here as .npz (no pickle needed)")
    add_verbose_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    return run_cli(build_parser().parse_args, _main, argv)


def _main(args: argparse.Namespace) -> int:
    state = read_state_dict(args.weights)
    params_from_state_dict(state, source=args.weights)  # every key and shape, or an error
    n = sum(int(np.prod(s)) for s in variable_shapes().values())
    print(f"{args.weights}: all {len(variable_shapes())} FID Inception arrays present "
          f"({n:,} numbers)")
    if args.to_npz:
        write_npz(state, args.to_npz)
        print(f"wrote {args.to_npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
