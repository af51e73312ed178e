"""SIGTERM during training: the loop is told, finishes the current batch, saves a checkpoint and
exits cleanly (SageMaker's stop and managed spot training's interruption send it)."""
from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

LOG = logging.getLogger(__name__)


class StopRequested:
    """Set by SIGTERM; the loop checks it between batches."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        LOG.warning("SIGTERM received: finishing the current batch, then saving and exiting")
        self.flag = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
