"""The one family of errors a user can cause and fix.

Every command catches :class:`UserError` (and only it) at the top and prints its
message on one line, without a traceback. Each kind also derives from the
built-in exception it refines, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


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
