"""Errors a user can cause (bad flags, bad files). The CLI prints their message on one line, exit code 2."""

import sys


class SeqpredError(Exception):
    """Base of every error caused by user input; its message names the field and the bad value."""


class ConfigError(SeqpredError):
    """A configuration value or key is invalid."""


class DataError(SeqpredError):
    """A corpus, tokenizer or dataset problem (missing, empty, unreadable)."""


class CheckpointError(SeqpredError):
    """A checkpoint or run directory is missing, corrupt or does not match the requested config."""


class TrainingDiverged(SeqpredError):
    """The loss or a gradient became NaN or Inf; the last good checkpoint was kept."""


#: Exit codes of every ``seqpred`` subcommand: 2 for a user error, 130 when interrupted.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def report_error(message: object) -> int:
    """Print the one-line ``seqpred: error: ...`` for a user error on stderr; returns :data:`EXIT_USAGE`."""
    print(f"seqpred: error: {message}", file=sys.stderr)
    return EXIT_USAGE
