"""Progress of long commands: a tqdm bar (rate, time left) on a terminal, and a log line every
few seconds when stderr is not one (CloudWatch, CI logs); nothing with quiet."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

LOG = logging.getLogger(__name__)
# Seconds between log lines when stderr is not a terminal.
LOG_EVERY = 30.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, what: str, total: int | None = None, unit: str = "items", quiet: bool = False,
                 every: float = LOG_EVERY) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar: Any = None
        self.quiet = quiet
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=f" {unit}", dynamic_ncols=True, file=sys.stderr)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            LOG.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.what}: {self.done}"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
            text += f", {rate:.1f} {self.unit}/s, {format_seconds(elapsed)} elapsed"
            text += f", {format_seconds(left)} left" if rate > 0 else ""
        else:
            text += f" {self.unit}, {rate:.1f} {self.unit}/s, {format_seconds(elapsed)} elapsed"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and self.done:
            LOG.info("%s", self.line())
