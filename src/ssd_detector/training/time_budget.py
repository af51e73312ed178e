"""Fitting a job into a time budget (the ``time_budget_seconds`` hyperparameter).

After every epoch the job predicts how many more epochs fit in the seconds left, keeping back what
the end of the job takes (one more validation pass and the final evaluation). When fewer fit than
the job has left, its end moves earlier, and the learning-rate schedule with it (``end_at``): a
step schedule's drops still ahead keep their distance from the end, a cosine reaches zero at the
new end. So a job given too many epochs for the machine still ends with its low-rate epochs,
instead of being stopped before them. The first epoch is slower (hybridization, cold caches), so a
later estimate may move the end later again, never beyond ``epochs``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

# Epoch times: the first epoch (hybridization, cold caches) is left out once others exist; the
# prediction takes the slower of the latest epoch and the mean of the last few.
RECENT_EPOCHS = 3
# Kept back for the end of the job beyond one validation pass (saving, the final report).
END_SECONDS = 10.0


def seconds_per_epoch(epoch_seconds: Sequence[float]) -> float:
    """A cautious estimate of the next epoch's length from the lengths so far."""
    if not epoch_seconds:
        raise ValueError("no epoch has run yet")
    recent = list(epoch_seconds[1:] or epoch_seconds)
    window = recent[-RECENT_EPOCHS:]
    return max(recent[-1], sum(window) / len(window))


def fitting_end(budget: float, elapsed: float, epoch_seconds: Sequence[float], next_epoch: int, end: int,
                final_seconds: float) -> int:
    """The epoch the job ends before (at most ``end``, its ``epochs``) to finish within ``budget``
    seconds: ``elapsed`` have passed, epochs took ``epoch_seconds``, the end of the job takes
    ``final_seconds``. Returns ``next_epoch`` when no further epoch fits."""
    left = budget - elapsed - final_seconds
    fit = max(0, math.floor(left / seconds_per_epoch(epoch_seconds)))
    return max(next_epoch, min(end, next_epoch + fit))


@dataclass
class TimeBudget:
    """The budget of one process's run and the epoch times it has seen."""

    seconds: float
    started: float  # time.monotonic() when the job started
    epoch_seconds: list[float] = field(default_factory=list)

    def end_after(self, now: float, epoch_seconds: float, validation_seconds: float, next_epoch: int,
                  end: int, most: int) -> int:
        """Records an epoch that took ``epoch_seconds`` (its validation included) and returns the
        epoch the job is to end before, now ``end``, at most ``most``. The end moves later only
        with an epoch to spare, so that noise in the epoch times does not move it back and forth."""
        self.epoch_seconds.append(epoch_seconds)
        final = validation_seconds + END_SECONDS
        fits = fitting_end(self.seconds, now - self.started, self.epoch_seconds, next_epoch, most, final)
        if fits <= end:
            return fits
        spare = seconds_per_epoch(self.epoch_seconds)
        return max(end, fitting_end(self.seconds, now - self.started, self.epoch_seconds, next_epoch, most,
                                    final + spare))
