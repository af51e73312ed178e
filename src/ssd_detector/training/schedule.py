"""Learning rate: the built-in's step schedule, in epochs, after a short linear warm-up."""
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
