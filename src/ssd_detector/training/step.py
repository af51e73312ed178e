"""One update of the network, as a plain object: the loss on a batch split across this process's
devices, normalized by the positive anchors of the whole job's batch (so the update does not
depend on how the batch is split among devices and workers), the gradients summed across them,
clipped to ``max_gradient_norm`` when asked, the optimizer's step, then the weight average."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .averaging import WeightAverage
from .clipping import clip_global_norm
from .distributed import World


@dataclass
class StepResult:
    cross_entropy: float  # this worker's share of the job's loss
    smooth_l1: float
    stop: bool  # SIGTERM reached one of the workers: all of them stop after this step


class UpdateStep:
    """``step(images, cls_targets, box_targets, stop_flag)`` trains ``net`` on one batch.

    The counts of clipped updates and the largest gradient norm accumulate until ``reset_counts``
    (the loop reports them per epoch)."""

    def __init__(self, net: gluon.Block, loss: Callable[..., Any], trainer: gluon.Trainer,
                 contexts: Sequence[mx.Context], world: World, max_gradient_norm: float = 0.0,
                 average: WeightAverage | None = None) -> None:
        self.net, self.loss, self.trainer = net, loss, trainer
        self.contexts = list(contexts)
        self.world = world
        self.max_gradient_norm = max_gradient_norm
        self.average = average
        # What clipping reads every step, listed once (clip_global_norm skips frozen layers).
        self._clip_params = list(net.collect_params().values()) if max_gradient_norm > 0 else []
        self.clipped = 0  # updates whose gradient was scaled down since reset_counts
        self.largest_norm = 0.0

    def reset_counts(self) -> None:
        self.clipped, self.largest_norm = 0, 0.0

    def __call__(self, images: np.ndarray, cls_targets: np.ndarray, box_targets: np.ndarray,
                 stop_flag: bool = False) -> StepResult:
        # The positives of every worker's batch and the stop flag travel in one allreduce.
        local = np.array([(cls_targets > 0).sum(), float(stop_flag)], np.float64)
        job_positive, stops = self.world.allreduce_sum(local)
        num_positive = float(max(1.0, job_positive))
        contexts = self.contexts[:len(images)]
        xs = gluon.utils.split_and_load(images, contexts, even_split=False)
        cts = gluon.utils.split_and_load(cls_targets, contexts, even_split=False)
        bts = gluon.utils.split_and_load(box_targets, contexts, even_split=False)
        with autograd.record():
            parts = []
            for x, ct, bt in zip(xs, cts, bts):
                cls_pred, box_pred = self.net(x)
                parts.append(self.loss(cls_pred, box_pred, ct, bt, mx.nd.array([num_positive], ctx=x.context)))
            totals = [cls_loss + box_loss for cls_loss, box_loss in parts]
        autograd.backward(totals)
        norm = self._update()
        if self.average is not None:
            self.average.update()
        ce = sum(float(c.asscalar()) for c, _ in parts)
        l1 = sum(float(b.asscalar()) for _, b in parts)
        if norm is not None:  # read after the losses: the step is done by then
            value = float(norm.asscalar())
            self.clipped += value > self.max_gradient_norm
            self.largest_norm = max(self.largest_norm, value)
        return StepResult(ce, l1, bool(stops > 0))

    def _update(self) -> mx.nd.NDArray | None:
        """The optimizer's step on the summed gradients; with clipping, the gradients are summed
        first, clipped, then applied. Returns the norm before clipping (not read here)."""
        scale = self.world.gradient_scale()
        if self.max_gradient_norm <= 0:
            self.trainer.step(scale)
            return None
        self.trainer.allreduce_grads()
        # The optimizer applies the summed gradients times world.gradient_factor(): clip that gradient.
        norm = clip_global_norm(self._clip_params, self.max_gradient_norm, self.world.gradient_factor())
        self.trainer.update(scale)
        return norm
