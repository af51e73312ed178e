"""Per-size VOC mAP: each size scored on its own objects and detections."""
import numpy as np
import pytest

from ssd_detector.evaluation.by_size import SizedMeanAP, pixel_areas

W, H = 320, 240


def _norm(*boxes):
    return np.array(boxes, np.float32) / np.array([W, H, W, H], np.float32)


def test_areas_in_pixels():
    assert np.allclose(pixel_areas(_norm([0, 0, 10, 20], [5, 5, 105, 55]), W, H), [200, 5000])


def test_each_size_counts_its_own_objects():
    metric = SizedMeanAP(2)
    gt = _norm([10, 10, 30, 30], [50, 50, 110, 110], [100, 20, 300, 220])  # small, medium, large
    classes = np.array([0, 1, 0])
    # The small and the large object are found; the medium one is missed, and a false small
    # detection of class 1 is made.
    det = _norm([10, 10, 30, 30], [100, 20, 300, 220], [200, 10, 220, 30])
    metric.update(det, np.array([0, 0, 1]), np.array([0.9, 0.8, 0.7]), gt, classes, None, W, H)
    sizes = metric.size_values()
    assert metric.counts == {"small": 1, "medium": 1, "large": 1}
    assert sizes["small"] == pytest.approx(1.0)  # class 1 has no small object: only class 0 counts
    assert sizes["medium"] == 0.0
    assert sizes["large"] == pytest.approx(1.0)
    assert 0 < metric.value() < 1


def test_a_size_without_objects_has_no_value():
    metric = SizedMeanAP(1)
    metric.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0), _norm([0, 0, 200, 200]), np.array([0]), None, W, H)
    assert metric.size_values() == {"small": None, "medium": None, "large": 0.0}
