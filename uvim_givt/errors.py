"""The one family of errors a user can cause and fix, and the one path that reports them.

Every command runs through :func:`run_command`, which prints a user error as one
``error: ...`` line (no traceback unless ``--verbose``) and exits with status 2. Each kind
also derives from the built-in exception it refines, so ``except ValueError`` keeps
working. Kept free of heavy imports: the files-mode evaluators start in a fraction of a
second.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any


class UserError(Exception):
    """A bad flag, file, config value, checkpoint or data item; the message names it."""


class ConfigError(UserError, ValueError):
    """A config file, argument or override that cannot be used as given."""


class DataError(UserError, ValueError):
    """A data source, file or example that cannot be read as given."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing or does not match what is asked of it."""


class EvalError(UserError, ValueError):
    """Inputs of an evaluator (prediction/ground-truth files, a run) that cannot be scored."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the command exits with
    :data:`EXIT_PREEMPTED` (128 + SIGTERM, as a process killed by it would)."""


EXIT_PREEMPTED = 143


# ------------------------------------------------------------- the one reporting path
_USER_ERRORS = ("DataError", "UserError", "ConfigError", "CheckpointError", "EvalError")
# OSErrors a user causes and fixes outside the program: a full disk, a read-only or
# foreign folder.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
EXIT_USER_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag or value reported like every other user error: one
    ``error: ...`` line (pointing at ``--help``), exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _bounded(kind: type, lo: float, strict: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < lo or (strict and value == lo):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {lo:g}")
        return value
    parse.__name__ = f"{'positive' if strict else 'non-negative'} {kind.__name__}"
    return parse


# argparse ``type=`` for flags with a range: a bad value is one line, exit 2.
positive_int = _bounded(int, 0, strict=True)
non_negative_int = _bounded(int, 0, strict=False)
positive_float = _bounded(float, 0.0, strict=True)
non_negative_float = _bounded(float, 0.0, strict=False)


def add_verbose_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="on an error, print the full traceback too")


def storage_errno(e: BaseException) -> int | None:
    """The errno of a full disk / read-only / permission failure behind ``e`` (orbax and
    tensorstore report it inside a ValueError's text as ``os_error_code='28'``), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return e.errno
        m = re.search(r"os_error_code='?(\d+)", str(e))
        if m and int(m.group(1)) in _STORAGE_ERRNOS:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


def missing_config_key(e: BaseException) -> str | None:
    """A config without a key the code reads (``cfg.givt.label_smoothing`` on a task config
    written before the key existed): ml_collections raises a bare ``AttributeError:
    "'label_smoothing'"`` deep in a traceback; this names the key and the line that read
    it, in one line (with ml_collections' "Did you mean" when it has one). None for any
    other error, and for names no config key could have (``_private``, dict methods such as
    ``copy``: a bug in the code that asked)."""
    if not isinstance(e, AttributeError | KeyError):
        return None
    frames = traceback.extract_tb(e.__traceback__)
    package = sys.modules.get("ml_collections")
    lookups = ("__getattr__", "__getitem__")
    if package is None or len(frames) < 2 or frames[-1].name not in lookups:
        return None
    home = os.path.dirname(os.path.abspath(package.__file__)) + os.sep

    def inside(frame: traceback.FrameSummary) -> bool:
        return os.path.abspath(frame.filename).startswith(home)

    if not inside(frames[-1]):
        return None  # raised by the lookup itself, not by code it called back into
    message: Any = e
    while isinstance(message, BaseException) and message.args:
        message = message.args[0]  # AttributeError(KeyError("'key'\nDid you mean ...?"))
    first, _, hint = str(message).partition("\n")
    key = first.strip("'\"")
    if not key or key.startswith("_") or hasattr(dict, key):
        return None
    caller = next(f for f in reversed(frames) if not inside(f))
    where = caller.filename
    try:
        if not os.path.relpath(where).startswith(os.pardir):
            where = os.path.relpath(where)
    except ValueError:  # another drive (Windows): keep the absolute path
        pass
    line = f" ({caller.line.strip()})" if caller.line and caller.line.strip() else ""
    hint = f" ({hint.strip()})" if hint.strip() else ""
    return (f"the config has no key {key!r}{hint}, which {where}:{caller.lineno} reads"
            f"{line}: add it to the config (configs/ has every key the library reads; "
            "--verbose: the traceback)")


def user_error_message(e: BaseException) -> str | None:
    """The one line for an error the user can fix, or None for a bug (a traceback).

    Besides :class:`UserError`: a storage ``OSError`` (disk full, read-only) and a user
    error raised inside a tf.data function, which TensorFlow re-raises as an ``OpError``
    whose text holds the original message among ~100 lines of its own traceback.
    """
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and storage_errno(e) is not None:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror} (nothing after this was saved)"
    missing = missing_config_key(e)
    if missing:
        return missing
    if type(e).__module__.startswith("tensorflow") and hasattr(e, "message"):
        text = str(e.message)
        for name in _USER_ERRORS:
            m = re.search(rf"{name}: (.*?)(?:\n|$)", text)
            if m:
                return m.group(1)
    return None


def run_command(fn: Callable[[], Any], verbose: bool = False) -> int:
    """Runs ``fn`` and returns its exit status (``fn``'s int result, else 0): a user error
    prints ``error: ...`` on one line and returns 2 (with ``verbose``, after the
    traceback); Ctrl-C says how to resume and returns 130; SIGTERM during training (a
    checkpoint was saved) says so and returns 143."""
    try:
        status = fn()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        message = user_error_message(e)
        if message is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def run_cli(parse: Callable[[Sequence[str] | None], argparse.Namespace],
            command: Callable[[argparse.Namespace], Any],
            argv: Sequence[str] | None = None) -> int:
    """A command line's ``main``: parses ``argv`` with ``parse`` (e.g. a parser's
    ``parse_args``) and runs ``command(args)`` through :func:`run_command`, with the
    traceback when the arguments ask ``--verbose``; returns the exit status."""
    args = parse(argv)
    return run_command(lambda: command(args), getattr(args, "verbose", False))
