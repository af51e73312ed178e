"""An exponential moving average of the trained weights (the ``ema_decay`` hyperparameter).

After every update the average moves towards the weights: ``avg = d * avg + (1 - d) * w``, with
``d = min(ema_decay, (1 + t) / (10 + t))`` at update t, so that the first updates, far from the
random start, are not outweighed by it. Validation and the saved model use the average; the
optimizer keeps training the weights themselves. Only trained parameters are averaged (frozen
layers and batch-norm statistics, which are running averages already, are left as they are).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import mxnet as mx
from mxnet import gluon

UPDATES_KEY = "__updates__"
WARMUP = 10  # (1 + t) / (WARMUP + t) bounds the decay of the first updates


class WeightAverage:
    def __init__(self, params: gluon.ParameterDict, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay {decay} must be in (0, 1)")
        self.decay = decay
        self._params = {name: p for name, p in params.items() if p.grad_req != "null"}
        self._average = {name: p.list_data()[0].copy() for name, p in self._params.items()}
        self.updates = 0

    def restart(self) -> None:
        """The average starts again from the current weights."""
        for name, param in self._params.items():
            self._average[name][:] = param.list_data()[0]
        self.updates = 0

    def update(self) -> None:
        """Moves the average towards the current weights (call after each optimizer step)."""
        decay = min(self.decay, (1 + self.updates) / (WARMUP + self.updates))
        for name, param in self._params.items():
            average = self._average[name]
            average *= decay
            average += (1 - decay) * param.list_data()[0]
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the network's parameters hold the average (on every device); the
        trained weights are back after it."""
        kept = {name: p.list_data()[0].copy() for name, p in self._params.items()}
        try:
            for name, param in self._params.items():
                param.set_data(self._average[name])
            yield
        finally:
            for name, param in self._params.items():
                param.set_data(kept[name])

    def save(self, path: Path) -> None:
        arrays = {name: value.as_in_context(mx.cpu()) for name, value in self._average.items()}
        arrays[UPDATES_KEY] = mx.nd.array([self.updates], dtype="float64")
        mx.nd.save(str(path), arrays)

    def load(self, path: Path) -> None:
        """Restores a saved average; refuses one of other parameters."""
        arrays = mx.nd.load(str(path))
        if not isinstance(arrays, dict) or UPDATES_KEY not in arrays \
                or set(arrays) - {UPDATES_KEY} != set(self._average):
            raise ValueError(f"{path} is not a weight average of this network")
        for name, value in self._average.items():
            if arrays[name].shape != value.shape:
                raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, the network's {value.shape}")
            value[:] = arrays[name].as_in_context(value.context)
        self.updates = int(arrays[UPDATES_KEY].asscalar())


def averaged(average: WeightAverage | None) -> AbstractContextManager:
    """The weight average in the network inside the block, when there is one."""
    return average.applied() if average is not None else nullcontext()
