"""Learning rate after a short linear warm-up: the built-in's step schedule in epochs, or a cosine
decay to zero over the job (the ``lr_schedule`` hyperparameter)."""
from __future__ import annotations

import math
from typing import Sequence

from mxnet import lr_scheduler

# Warm-up length: one epoch, but never more than this many updates.
MAX_WARMUP_UPDATES = 200
WARMUP_START_FRACTION = 0.1


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_samples / batch_size))


class StepWithWarmup(lr_scheduler.LRScheduler):
    """lr = base * factor^(steps passed); step epochs become updates with the real batch count.

    During the first ``warmup`` updates lr rises linearly from a tenth of its value.
    """

    def __init__(self, base_lr: float, step_epochs: Sequence[int], factor: float, updates_per_epoch: int,
                 warmup: int | None = None) -> None:
        super().__init__(base_lr=base_lr)
        self.step_epochs = list(step_epochs)
        self.step_updates = [e * updates_per_epoch for e in step_epochs]
        self.factor = factor
        self.warmup = min(updates_per_epoch, MAX_WARMUP_UPDATES) if warmup is None else warmup

    def __call__(self, num_update: int) -> float:
        passed = sum(1 for s in self.step_updates if num_update >= s)
        lr = self.base_lr * self.factor ** passed
        if num_update < self.warmup:
            start = WARMUP_START_FRACTION
            lr *= start + (1 - start) * num_update / self.warmup
        return lr

    def rebase(self, updates_done: int, epochs_done: int, updates_per_epoch: int) -> None:
        """The epochs still ahead with a corrected batch count (Pipe mode learns the real one
        after its first epoch); steps already passed stay passed."""
        self.step_updates = [min(s, updates_done) if e <= epochs_done
                             else updates_done + (e - epochs_done) * updates_per_epoch
                             for s, e in zip(self.step_updates, self.step_epochs)]

    def end_at(self, old_end: int, new_end: int, updates_done: int, epochs_done: int,
               updates_per_epoch: int) -> None:
        """The job now ends after epoch new_end - 1 instead of old_end - 1: steps still ahead move
        earlier by the difference, keeping their distance from the end (a step that would fall
        into the past comes at the next epoch); steps already passed stay passed."""
        shift = new_end - old_end
        self.step_epochs = [e if e <= epochs_done else max(epochs_done, e + shift) for e in self.step_epochs]
        self.rebase(updates_done, epochs_done, updates_per_epoch)


class CosineWithWarmup(StepWithWarmup):
    """lr = base * (1 + cos(pi * done / total)) / 2 over the job's updates, after the same warm-up;
    no steps (the step hyperparameters do not apply)."""

    def __init__(self, base_lr: float, epochs: int, updates_per_epoch: int, warmup: int | None = None) -> None:
        super().__init__(base_lr, (), 1.0, updates_per_epoch, warmup)
        self.total_updates = max(1, epochs * updates_per_epoch)
        self.epochs = epochs

    def __call__(self, num_update: int) -> float:
        progress = min(1.0, num_update / self.total_updates)
        lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if num_update < self.warmup:
            start = WARMUP_START_FRACTION
            lr *= start + (1 - start) * num_update / self.warmup
        return lr

    def rebase(self, updates_done: int, epochs_done: int, updates_per_epoch: int) -> None:
        """The end of the decay moves with a corrected batch count (Pipe mode's first epoch)."""
        self.total_updates = max(1, updates_done + (self.epochs - epochs_done) * updates_per_epoch)

    def end_at(self, old_end: int, new_end: int, updates_done: int, epochs_done: int,
               updates_per_epoch: int) -> None:
        """The decay reaches zero at the new end instead (a time budget shortened the job)."""
        self.epochs = new_end
        self.rebase(updates_done, epochs_done, updates_per_epoch)


def make_schedule(kind: str, base_lr: float, epochs: int, step_epochs: Sequence[int], factor: float,
                  updates_per_epoch: int) -> StepWithWarmup:
    """The schedule the ``lr_schedule`` hyperparameter names ("step" or "cosine")."""
    if kind == "cosine":
        return CosineWithWarmup(base_lr, epochs, updates_per_epoch)
    if kind == "step":
        return StepWithWarmup(base_lr, step_epochs, factor, updates_per_epoch)
    raise ValueError(f"lr_schedule {kind!r} is not one of step, cosine")
