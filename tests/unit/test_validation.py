"""Validation on a fixed data list with a fake detector: VOC07 mAP of its rows, suppressed rows
and padding ignored, the weight average applied during it, rank 0's figure for everyone."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from ssd_detector.data.loader import Batch
from ssd_detector.training.averaging import WeightAverage
from ssd_detector.training.distributed import World
from ssd_detector.training.validation import Validator

TRUTH = np.array([[[0, 0.1, 0.1, 0.4, 0.4, 0], [1, 0.5, 0.5, 0.9, 0.9, 0]],
                  [[1, 0.2, 0.2, 0.6, 0.6, 0], [-1, -1, -1, -1, -1, -1]]], np.float32)  # (B, M, 6)


def batches(epoch: int) -> list[Batch]:
    return [Batch(images=np.zeros((2, 3, 4, 4), np.uint8), labels=TRUTH, indices=np.arange(2))]


def detector_of(rows: np.ndarray):
    """A detector answering the same rows (B, N, 6) for every batch."""
    return lambda x: mx.nd.array(rows[:x.shape[0]])


def test_a_detector_that_finds_every_object_scores_one_and_suppressed_rows_are_ignored():
    rows = np.array([[[0, 0.9, 0.1, 0.1, 0.4, 0.4], [1, 0.8, 0.5, 0.5, 0.9, 0.9], [-1, -1, -1, -1, -1, -1]],
                     [[1, 0.7, 0.2, 0.2, 0.6, 0.6], [-1, -1, -1, -1, -1, -1], [-1, -1, -1, -1, -1, -1]]],
                    np.float32)
    validator = Validator(detector_of(rows), [mx.cpu()], World(), 2, 0.5, batches)
    assert validator(0) == pytest.approx(1.0)


def test_a_box_below_the_overlap_threshold_is_a_miss():
    rows = np.array([[[0, 0.9, 0.1, 0.1, 0.4, 0.4], [1, 0.8, 0.5, 0.5, 0.9, 0.9]],
                     [[1, 0.7, 0.4, 0.4, 0.8, 0.8], [-1, -1, -1, -1, -1, -1]]], np.float32)  # IoU 0.14
    validator = Validator(detector_of(rows), [mx.cpu()], World(), 2, 0.5, batches)
    assert validator(0) == pytest.approx((1.0 + 6 / 11) / 2)  # class 1: recall 0.5 (VOC07's 11 points)
    assert Validator(detector_of(rows), [mx.cpu()], World(), 2, 0.1, batches)(0) == pytest.approx(1.0)


def test_validation_runs_on_the_weight_average_and_puts_the_weights_back():
    param = gluon.Parameter("w", shape=(1,))
    param.initialize(mx.init.Constant(1.0))
    params = gluon.ParameterDict()
    params._params["w"] = param
    average = WeightAverage(params, 0.5)
    param.set_data(mx.nd.array([3.0]))  # trained on; the average still holds 1
    seen = []

    def detector(x):
        seen.append(float(param.data().asscalar()))
        return mx.nd.array(np.full((x.shape[0], 1, 6), -1, np.float32))

    Validator(detector, [mx.cpu()], World(), 2, 0.5, batches, average)(0)
    assert seen == [1.0] and float(param.data().asscalar()) == 3.0


class Rank1(World):
    rank = 1

    def broadcast_array(self, values: np.ndarray) -> np.ndarray:
        return np.array([0.25])  # rank 0's figure


def test_every_worker_reports_rank_0s_figure():
    rows = np.full((2, 1, 6), -1, np.float32)
    assert Validator(detector_of(rows), [mx.cpu()], Rank1(), 2, 0.5, batches)(0) == 0.25
