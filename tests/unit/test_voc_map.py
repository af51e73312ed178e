"""VOC mAP by hand: the eleven-point figure, difficult objects, duplicates, empty classes."""
import numpy as np
import pytest

from ssd_detector.evaluation.voc_map import VOCMeanAP

BOX_A = [0.1, 0.1, 0.4, 0.4]
BOX_B = [0.5, 0.5, 0.9, 0.9]


def test_perfect_detections_score_one():
    metric = VOCMeanAP(2)
    gt = np.array([BOX_A, BOX_B], np.float32)
    metric.update(gt, np.array([0, 1]), np.array([0.9, 0.8]), gt, np.array([0, 1]))
    assert metric.value() == pytest.approx(1.0)


def test_voc07_eleven_points_by_hand():
    # One class, two objects in two images; detections: hit (0.9), miss (0.8), hit (0.7).
    metric = VOCMeanAP(1)
    metric.update(np.array([BOX_A, BOX_B], np.float32), np.array([0, 0]), np.array([0.9, 0.8]),
                  np.array([BOX_A], np.float32), np.array([0]))
    metric.update(np.array([BOX_B], np.float32), np.array([0]), np.array([0.7]),
                  np.array([BOX_B], np.float32), np.array([0]))
    # recall/precision after each: (0.5, 1), (0.5, 0.5), (1, 2/3): 6 points at 1.0, 5 at 2/3.
    assert metric.value() == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    area = VOCMeanAP(1, voc07=False)
    area._scores, area._hits, area._positives = metric._scores, metric._hits, metric._positives
    assert area.value() == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_difficult_objects_are_ignored_and_duplicates_are_false_positives():
    metric = VOCMeanAP(1)
    gt = np.array([BOX_A, BOX_B], np.float32)
    detections = np.array([BOX_A, BOX_A, BOX_B], np.float32)
    metric.update(detections, np.array([0, 0, 0]), np.array([0.9, 0.8, 0.7]), gt, np.array([0, 0]),
                  np.array([False, True]))
    # The difficult box neither counts as a positive nor penalizes its detection; the duplicate
    # of BOX_A is a false positive after the hit: precision at recall 1 is 1.
    assert metric.value() == pytest.approx(1.0)
    assert metric._positives.tolist() == [1]


def test_class_without_ground_truth_is_left_out():
    metric = VOCMeanAP(3)
    metric.update(np.array([BOX_A], np.float32), np.array([2]), np.array([0.5]),
                  np.array([BOX_A], np.float32), np.array([0]))
    aps = metric.average_precisions()
    assert aps[0] == 0.0 and np.isnan(aps[1]) and np.isnan(aps[2])
    assert metric.value() == 0.0
