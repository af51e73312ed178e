"""The update step on a two-parameter network: the update worked out by hand, the same update
whatever the split across devices, clipping's counts and effect, the weight average, the stop flag."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from ssd_detector.training.averaging import WeightAverage
from ssd_detector.training.distributed import World
from ssd_detector.training.step import UpdateStep

RATE = 0.1


class TwoParams(gluon.Block):
    """cls = a * mean pixel, box = b * mean pixel, per image."""

    def __init__(self) -> None:
        super().__init__(prefix="two_")
        with self.name_scope():
            self.a = self.params.get("a", shape=(1,), init=mx.init.Constant(1.0))
            self.b = self.params.get("b", shape=(1,), init=mx.init.Constant(2.0))

    def forward(self, x: mx.nd.NDArray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        mean = x.astype("float32").reshape((0, -1)).mean(axis=1)  # (B, 3, S, S) -> (B,)
        return mean * self.a.data(x.context), mean * self.b.data(x.context)


def linear_loss(cls_pred, box_pred, cls_targets, box_targets, num_positive):
    """Sums weighted by the targets, over the job's positives: gradients easy to write down."""
    return ((cls_pred * cls_targets.sum(axis=1)).sum() / num_positive,
            (box_pred * box_targets.sum(axis=(1, 2))).sum() / num_positive)


def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.stack([np.full((3, 2, 2), v, np.uint8) for v in (10, 20, 30, 40)])  # means 10..40
    cls_targets = np.array([[1, 0], [0, 0], [2, 1], [1, 1]], np.float32)  # 5 positives
    box_targets = np.ones((4, 2, 4), np.float32) * np.array([1, 2, 3, 4], np.float32)[:, None, None]
    return images, cls_targets, box_targets


def make_step(contexts: list[mx.Context], max_norm: float = 0.0, decay: float = 0.0) -> UpdateStep:
    net = TwoParams()
    net.initialize(ctx=contexts)
    world = World()
    trainer = world.trainer(net.collect_params(), "sgd", {"learning_rate": RATE},
                            kvstore="device" if len(contexts) > 1 else None,
                            update_on_kvstore=False if max_norm > 0 else None)
    average = WeightAverage(net.collect_params(), decay) if decay else None
    return UpdateStep(net, linear_loss, trainer, contexts, world, max_norm, average)


def weights(step: UpdateStep) -> tuple[float, float]:
    return float(step.net.a.data().asscalar()), float(step.net.b.data().asscalar())


# By hand: d/da = sum(mean_i * sum(cls_i)) / 5 = (10*1 + 30*3 + 40*2) / 5 = 36;
# d/db = sum(mean_i * 8 * i-th box value) / 5 = 8 * (10 + 40 + 90 + 160) / 5 = 480.
GRAD_A, GRAD_B = 36.0, 480.0


def test_one_update_is_the_optimizers_step_on_the_gradient_worked_out_by_hand():
    step = make_step([mx.cpu()])
    result = step(*batch())
    assert weights(step) == pytest.approx((1.0 - RATE * GRAD_A, 2.0 - RATE * GRAD_B), rel=1e-5)
    # The losses before the update: a * 36 and b * 480.
    assert result.cross_entropy == pytest.approx(GRAD_A)
    assert result.smooth_l1 == pytest.approx(2.0 * GRAD_B)
    assert result.stop is False
    assert step.clipped == 0 and step.largest_norm == 0.0  # not clipping: nothing counted


def test_the_update_does_not_depend_on_the_split_across_devices():
    one, two = make_step([mx.cpu()]), make_step([mx.cpu(0), mx.cpu(1)])
    one(*batch())
    result = two(*batch())
    assert weights(two) == pytest.approx(weights(one), rel=1e-6)
    assert result.cross_entropy == pytest.approx(GRAD_A)  # the devices' shares add up to the batch's loss


def test_clipping_scales_the_gradient_to_the_limit_and_counts_the_update():
    norm = float(np.hypot(GRAD_A, GRAD_B))
    step = make_step([mx.cpu()], max_norm=norm / 2)
    step(*batch())
    assert step.clipped == 1 and step.largest_norm == pytest.approx(norm, rel=1e-5)
    assert weights(step) == pytest.approx((1.0 - RATE * GRAD_A / 2, 2.0 - RATE * GRAD_B / 2), rel=1e-5)
    step.reset_counts()
    assert step.clipped == 0 and step.largest_norm == 0.0


def test_clipping_leaves_a_gradient_within_the_limit_as_it_is_on_every_device():
    step = make_step([mx.cpu(0), mx.cpu(1)], max_norm=1e6)
    step(*batch())
    assert step.clipped == 0 and step.largest_norm == pytest.approx(np.hypot(GRAD_A, GRAD_B), rel=1e-5)
    assert weights(step) == pytest.approx((1.0 - RATE * GRAD_A, 2.0 - RATE * GRAD_B), rel=1e-5)
    a_copies = [float(d.asscalar()) for d in step.net.a.list_data()]
    assert a_copies[0] == a_copies[1]


def test_the_weight_average_moves_after_each_update():
    step = make_step([mx.cpu()], decay=0.5)
    step(*batch())
    assert step.average is not None and step.average.updates == 1
    with step.average.applied():  # first update: decay min(0.5, 1/10) = 0.1 of the start
        assert float(step.net.a.data().asscalar()) == pytest.approx(0.1 * 1.0 + 0.9 * (1.0 - RATE * GRAD_A), rel=1e-5)


def test_the_stop_flag_travels_with_the_step():
    assert make_step([mx.cpu()])(*batch(), stop_flag=True).stop is True
