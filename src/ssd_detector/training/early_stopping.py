"""Validation mAP's decisions: which epochs are validated (`validation_interval`), and the
built-in's early stopping: stop once the best figure has not improved, by more than a relative
tolerance, for `patience` epochs, but never before `min_epochs`."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Hyperparameters
from .checkpoint import LoopState


@dataclass(frozen=True)
class Verdict:
    improved: bool  # a new best model: save it
    stop: bool  # end training after this epoch


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = False
    min_epochs: int = 10
    patience: int = 5
    tolerance: float = 0.0  # relative: 0.01 asks for 1 % more than the best so far

    @classmethod
    def from_hyperparameters(cls, hp: Hyperparameters) -> "EarlyStopping":
        return cls(hp.early_stopping, hp.early_stopping_min_epochs, hp.early_stopping_patience,
                   hp.early_stopping_tolerance)

    def observe(self, state: LoopState, epoch: int, value: float, epochs: int = 1) -> Verdict:
        """Records epoch's validation mAP in state (the best figure, its epoch, the epochs since
        it) and says what follows; ``epochs`` have passed since the previous figure. The first
        figure is always an improvement."""
        best = state.best_map
        improved = value > best and (best <= 0 or (value - best) / best > self.tolerance)
        if improved:
            state.best_map, state.best_epoch = value, epoch
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += epochs
        stop = (self.enabled and epoch + 1 >= self.min_epochs
                and state.epochs_without_improvement >= self.patience)
        return Verdict(improved, stop)


def validates(epoch: int, interval: int, end: int) -> bool:
    """Whether epoch ``epoch`` is validated: every ``interval``-th epoch (counted from 1) and
    the last before ``end``, so the job's final weights always get their figure."""
    return (epoch + 1) % interval == 0 or epoch + 1 >= end


def epochs_since_validation(epoch: int, interval: int) -> int:
    """Epochs that passed from the validation before epoch ``epoch``'s to its own: the previous
    one validated is the latest multiple of ``interval`` before it (counted from 1)."""
    return epoch % interval + 1
