"""How a job ends on error: a reason in the failure file and the exit code SageMaker reads.

A user's mistake (UserError) writes its message and exits 1; anything else writes
"internal error" with the traceback's last frames and exits 2. The first failure wins:
an existing failure file is never overwritten.
"""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Callable

from .errors import JobFailed, Stopped, UserError

LOG = logging.getLogger(__name__)

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
# SageMaker shows the first 1024 characters as the job's FailureReason.
FAILURE_REASON_CHARS = 1024


def write_failure(path: Path, reason: str) -> bool:
    """Writes reason unless a failure was already recorded; returns whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(reason.rstrip() + "\n")
    except FileExistsError:
        LOG.info("failure file %s already holds the first failure; not overwriting", path)
        return False
    return True


def internal_error_reason(exc: BaseException, frames: int = 5) -> str:
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-frames))
    return f"internal error: {type(exc).__name__}: {exc}\n\n{tail}"


def run_job(job: Callable[[], None], failure_file: Path) -> int:
    """Runs job and turns any exception into the failure file and an exit code."""
    try:
        job()
    except UserError as exc:
        LOG.error("%s", exc)
        write_failure(failure_file, str(exc))
        return EXIT_USER_ERROR
    except JobFailed as exc:
        LOG.error("%s", exc.reason)
        write_failure(failure_file, exc.reason)
        return exc.exit_code
    except Stopped as exc:
        LOG.warning("stopped: %s", exc)
        return 0
    except KeyboardInterrupt:
        write_failure(failure_file, "job interrupted")
        return EXIT_INTERNAL_ERROR
    except Exception as exc:  # every other failure is reported, never lost
        reason = internal_error_reason(exc)
        LOG.error("%s", reason)
        write_failure(failure_file, reason)
        return EXIT_INTERNAL_ERROR
    return 0

