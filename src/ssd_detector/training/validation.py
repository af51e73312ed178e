"""Validation: VOC07 11-point mAP of the detector (decoding and NMS included, as the artifact runs
it) over the whole validation set, at ``overlap_threshold``, difficult objects ignored, with the
weight average in the network when ``ema_decay`` keeps one.

Every worker runs it (no slower than rank 0 alone, and no worker idles in a collective
meanwhile); rank 0's figure is everyone's, as batch-norm statistics may differ between workers.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..data.loader import Batch
from ..evaluation.voc_map import VOCMeanAP
from .averaging import WeightAverage, averaged
from .distributed import World
from .protocol import mark_progress

Detector = Callable[[mx.nd.NDArray], mx.nd.NDArray]  # (B, 3, S, S) uint8 -> (B, N, 6) rows


class Validator:
    """``validator(epoch)`` -> the job's validation mAP after that epoch; ``batches(epoch)`` gives
    the validation batches of that epoch's pass."""

    def __init__(self, detector: Detector, contexts: Sequence[mx.Context], world: World, num_classes: int,
                 overlap_threshold: float, batches: Callable[[int], Iterable[Batch]],
                 average: WeightAverage | None = None) -> None:
        self.detector = detector
        self.contexts = list(contexts)
        self.world = world
        self.num_classes = num_classes
        self.overlap_threshold = overlap_threshold
        self.batches = batches
        self.average = average

    def __call__(self, epoch: int = 0) -> float:
        with averaged(self.average):
            value = self.score(epoch)
        return self.world.broadcast_float(value)

    def score(self, epoch: int) -> float:
        """This worker's mAP over the batches of ``epoch``'s pass."""
        metric = VOCMeanAP(self.num_classes, self.overlap_threshold, voc07=True)
        for batch in self.batches(epoch):
            mark_progress()
            contexts = self.contexts[:len(batch.images)]
            xs = gluon.utils.split_and_load(batch.images, contexts, even_split=False)
            detections = np.concatenate([self.detector(x).asnumpy() for x in xs])  # (B, N, 6)
            for rows, label in zip(detections, batch.labels):
                rows = rows[rows[:, 0] >= 0]
                label = label[label[:, 0] >= 0]
                metric.update(rows[:, 2:6], rows[:, 0].astype(np.int64), rows[:, 1],
                              label[:, 1:5], label[:, 0].astype(np.int64), label[:, 5] > 0)
        return metric.value()
