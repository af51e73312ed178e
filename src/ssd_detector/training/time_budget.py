"""Fitting a job into a time budget (the ``time_budget_seconds`` hyperparameter).

After every epoch the job predicts how many more epochs fit in the seconds left, keeping back what
the end of the job takes (one more validation pass and the final evaluation). When fewer fit than
the job has left, its end moves earlier, and the learning-rate schedule with it (``end_at``): a
step schedule's drops still ahead keep their distance from the end, a cosine reaches zero at the
new end. So a job given too many epochs for the machine still ends with its low-rate epochs,
instead of being stopped before them. The first epoch is slower (hybridization, cold caches), so a
later estimate may move the end later again, never beyond ``epochs``, and never once the job has
reached its end: its last epoch was validated and saved as the last, and faster epochs on a
machine whose load varies must not turn that into one more validation pass.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .checkpoint import LoopState
from .distributed import World

LOG = logging.getLogger(__name__)

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


class Schedule(Protocol):
    """What the end needs of a learning-rate schedule (schedule.StepWithWarmup)."""
    step_epochs: list[int]

    def end_at(self, old_end: int, new_end: int, updates_done: int, epochs_done: int,
               updates_per_epoch: int) -> None: ...


class JobEnd:
    """The epoch the job ends before: ``epochs``, or earlier when the time budget moved it. The
    end is kept in the loop state (``end_epoch``, 0 for ``epochs``), so a checkpoint keeps it;
    every move of the end moves the learning-rate schedule with it."""

    def __init__(self, epochs: int, schedule: Schedule, budget: TimeBudget | None, world: World) -> None:
        self.epochs = epochs
        self.schedule = schedule
        self.budget = budget
        self.world = world
        self.epoch_mark = budget.started if budget is not None else 0.0  # when the latest epoch ended

    def planned(self, state: LoopState) -> int:
        return state.end_epoch or self.epochs

    def resume(self, state: LoopState, updates_done: int, updates_per_epoch: int) -> None:
        """At the start of a run: a resumed job keeps its budget's end; without a budget it runs
        every epoch."""
        if state.end_epoch and self.budget is not None:
            self.move(state, self.epochs, min(state.end_epoch, self.epochs), updates_done, updates_per_epoch)
        else:
            state.end_epoch = 0

    def move(self, state: LoopState, old_end: int, end: int, updates_done: int, updates_per_epoch: int) -> None:
        """The job ends before ``end`` instead of ``old_end`` from now on."""
        self.schedule.end_at(old_end, end, updates_done, state.next_epoch, updates_per_epoch)
        state.end_epoch = end

    def fit(self, state: LoopState, epoch: int, now: float, validation_seconds: float, updates_done: int,
            updates_per_epoch: int) -> None:
        """After epoch ``epoch`` (validated and saved, ``state.next_epoch`` past it): moves the end
        earlier when the epochs left do not fit the budget, or later again when faster epochs leave
        room (never past ``epochs``). Rank 0's clock decides for every worker."""
        if self.budget is None:
            return
        epoch_seconds, self.epoch_mark = now - self.epoch_mark, now
        planned = self.planned(state)
        end = self.budget.end_after(now, epoch_seconds, validation_seconds, epoch + 1, planned, self.epochs)
        end = round(self.world.broadcast_float(float(end)))
        if end == planned or (end > planned and epoch + 1 >= planned):
            return
        self.move(state, planned, end, updates_done, updates_per_epoch)
        if not self.world.is_root:
            return
        steps = [e for e in self.schedule.step_epochs if e > epoch]
        LOG.warning("time_budget_seconds=%d: %s (%.1f s an epoch, %.0f s used); %s",
                    self.budget.seconds,
                    "every epoch fits again" if end == self.epochs
                    else f"epochs {end} to {self.epochs - 1} do not fit, the job ends after epoch {end - 1}"
                    if end > epoch + 1 else f"no further epoch fits, the job ends after epoch {epoch}",
                    seconds_per_epoch(self.budget.epoch_seconds), now - self.budget.started,
                    f"learning-rate steps now at epochs {','.join(map(str, steps))}" if steps
                    else "no learning-rate step ahead")
