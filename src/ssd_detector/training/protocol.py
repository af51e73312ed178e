"""How a host's launcher and the Horovod workers it starts talk, both sides in one place.

The launcher gives each worker three paths in its environment: a reason file (the worker writes
why it failed there instead of the job's failure file), a joined file (created once Horovod is
up, then touched as the worker makes progress, so the launcher can tell a hang from slow work),
and, when the host's workers share Pipe-mode streams, the folder of the worker's own FIFOs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..sagemaker_env import Paths
from . import distributed

REASON_FILE_VAR = "SSD_WORKER_REASON_FILE"  # where a worker writes why it failed
JOINED_FILE_VAR = "SSD_WORKER_JOINED_FILE"  # a worker creates it once Horovod is up, then touches it as it works
PIPE_DIR_VAR = "SSD_PIPE_DIR"  # where a worker finds its FIFOs (set by the launcher for shared streams)
PROGRESS_EVERY = 5.0  # a worker touches its joined file at most this often (seconds)


# ------------------------------------------------------------------------- the launcher's side
def shared_pipe_dir(scratch: Path, local_rank: int) -> Path:
    """The folder of a worker's own copies of the host's FIFOs."""
    return scratch / "pipes" / str(local_rank)


@dataclass(frozen=True)
class WorkerFiles:
    """One worker's files, as its launcher sees them."""
    reason_file: Path
    joined_file: Path
    pipe_dir: Path | None = None

    @classmethod
    def in_scratch(cls, scratch: Path, rank: int, local_rank: int, shared_pipes: bool) -> "WorkerFiles":
        return cls(scratch / f"reason-{rank}", scratch / f"joined-{rank}",
                   shared_pipe_dir(scratch, local_rank) if shared_pipes else None)

    def environment(self) -> dict[str, str]:
        """What the worker's environment carries of them."""
        env = {REASON_FILE_VAR: str(self.reason_file), JOINED_FILE_VAR: str(self.joined_file)}
        if self.pipe_dir is not None:
            env[PIPE_DIR_VAR] = str(self.pipe_dir)
        return env

    def reason(self) -> str:
        """Why the worker failed, in its words; empty when it wrote nothing."""
        return self.reason_file.read_text().strip() if self.reason_file.exists() else ""

    def reason_is_consequence(self) -> bool:
        """Whether the worker only failed because another one had (its collectives lost a peer,
        or a peer found the data problem and reports it)."""
        reason = self.reason()
        return distributed.PEER_LOST_TEXT in reason or distributed.PEER_FAILED_TEXT in reason

    def joined(self) -> bool:
        return self.joined_file.exists()

    def quiet_seconds(self, now: float) -> float:
        """Seconds since the worker last showed progress (OSError while the file is replaced)."""
        return now - self.joined_file.stat().st_mtime


# --------------------------------------------------------------------------- the worker's side
def failure_file(paths: Paths, environ: Mapping[str, str] | None = None) -> Path:
    """Where this process reports its failure: its launcher's reason file for a worker, else
    the job's failure file."""
    env = os.environ if environ is None else environ
    return Path(env[REASON_FILE_VAR]) if env.get(REASON_FILE_VAR) else paths.failure_file


def pipe_folder(paths: Paths, environ: Mapping[str, str] | None = None) -> Path:
    """Where this process finds its FIFOs: SageMaker's, or its own copies when the host's workers
    share the streams."""
    env = os.environ if environ is None else environ
    return Path(env[PIPE_DIR_VAR]) if env.get(PIPE_DIR_VAR) else paths.data_dir


def mark_joined(environ: Mapping[str, str] | None = None) -> None:
    """Horovod is up in this worker (and, called again, it is still making progress)."""
    env = os.environ if environ is None else environ
    if env.get(JOINED_FILE_VAR):
        Path(env[JOINED_FILE_VAR]).touch()


_last_progress = [0.0]


def mark_progress() -> None:
    """A worker's sign of life for its launcher (a training or validation batch done); cheap
    enough to call every batch."""
    now = time.monotonic()
    if now - _last_progress[0] >= PROGRESS_EVERY:
        _last_progress[0] = now
        mark_joined()
