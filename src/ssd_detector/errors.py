"""The two error families of a job: a user's mistake, and everything else."""
from __future__ import annotations

import sys
from typing import Any


def shown(value: Any, limit: int = 60) -> str:
    """repr(value) for an error message, shortened when long: a 5,000-digit number is named by
    its start and length, not pasted whole."""
    try:
        text = repr(value)
    except ValueError:  # an int too large for repr under Python's digit limit
        return f"<integer of more than {sys.get_int_max_str_digits()} digits>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class UserError(Exception):
    """A mistake in what the user supplied (hyperparameters, channels, data).

    The message is shown to the user as it is (in the failure file for training), so it
    must name the bad value and say what would be accepted.
    """


class HyperparameterError(UserError):
    """A hyperparameter has a bad name, value or combination."""


class DataError(UserError):
    """A channel's data cannot be used for training or validation."""


class Stopped(Exception):
    """SIGTERM arrived before the training loop took over its handling: the job stops, which is
    not a failure (SageMaker's StopTrainingJob, `docker stop`)."""


class JobFailed(Exception):
    """A failure already described for the user (e.g. a worker process of a distributed job
    died): the reason goes to the failure file as it is, with this exit code."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
