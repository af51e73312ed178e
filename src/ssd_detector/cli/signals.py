"""SIGTERM from a command's first line: as PID 1 of a container a process ignores SIGTERM unless
it handles it. Every command handles it (`train` until its loop takes over, and a stop is not a
failure there; `serve` hands it to gunicorn, which installs its own)."""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from ..errors import Stopped

EXIT_TERMINATED = 128 + signal.SIGTERM  # a tool stopped by SIGTERM, as a shell reports it
# A SIGTERM that arrives during an import is sent again this much later, until no import runs.
IMPORT_RETRY_SECONDS = 0.05


def stop_on_sigterm(reason: str) -> None:
    """SIGTERM raises Stopped(reason), but never inside an import."""
    def stop(signum: int, frame: FrameType | None) -> None:
        if importing(frame):
            # Raised inside an import (cv2's initialization, numpy's under it), the exception becomes
            # an ImportError and leaves half-made extension modules that can crash the interpreter
            # at exit: the stop waits until the import is done.
            resend = threading.Timer(IMPORT_RETRY_SECONDS, os.kill, (os.getpid(), signal.SIGTERM))
            resend.daemon = True
            resend.start()
            return
        raise Stopped(reason)
    signal.signal(signal.SIGTERM, stop)


def importing(frame: FrameType | None) -> bool:
    """Whether frame, or a frame that called it, is the import machinery's."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
