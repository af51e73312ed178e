"""The evaluation's figures against independent computations: VOC07 as the devkit defines it,
written out plainly here, and COCO AP on cases whose value follows from the definition."""
from __future__ import annotations

import numpy as np
import pytest

from ssd_detector.evaluation.coco import coco_map
from ssd_detector.evaluation.evaluate import metrics, mistakes
from ssd_detector.evaluation.truth import ImageTruth


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def devkit_voc07(truths: list[ImageTruth], detections: list[np.ndarray], num_classes: int) -> float:
    """VOC2007 devkit: per class, detections by score, greedy match at IoU >= 0.5 with the best
    overlapping object; difficult matches ignored; 11-point interpolated AP; mean over classes with
    objects."""
    aps = []
    for cls in range(num_classes):
        positives = sum(int(((t.classes == cls) & ~t.difficult).sum()) for t in truths)
        if positives == 0:
            continue
        found = [(row[1], i, row[2:6]) for i, rows in enumerate(detections) for row in rows if int(row[0]) == cls]
        found.sort(key=lambda f: -f[0])
        used = [np.zeros(len(t.classes), bool) for t in truths]
        tp, fp = [], []
        for _, i, box in found:
            t = truths[i]
            best, best_j = 0.0, -1
            for j in range(len(t.classes)):
                if t.classes[j] == cls and iou(box, t.boxes[j]) > best:
                    best, best_j = iou(box, t.boxes[j]), j
            if best >= 0.5:
                if t.difficult[best_j]:
                    continue
                if not used[i][best_j]:
                    used[i][best_j] = True
                    tp.append(1)
                    fp.append(0)
                    continue
            tp.append(0)
            fp.append(1)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        recall = ctp / positives if len(tp) else np.zeros(0)
        precision = ctp / np.maximum(ctp + cfp, 1e-12) if len(tp) else np.zeros(0)
        ap = 0.0
        for t in np.arange(0, 1.1, 0.1):
            p = precision[recall >= t].max() if (recall >= t).any() else 0.0
            ap += p / 11
        aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def truth(boxes, classes, difficult=None, size=(200, 100)) -> ImageTruth:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    classes = np.array(classes, np.int64)
    difficult = np.zeros(len(classes), bool) if difficult is None else np.array(difficult, bool)
    return ImageTruth("x", size[0], size[1], boxes, classes, difficult)


def rows(*detections) -> np.ndarray:
    return np.array(detections, np.float32).reshape(-1, 6)


CASES = {
    "no detections": ([truth([[0.1, 0.1, 0.5, 0.5]], [0])], [rows()]),
    "a class with no objects, and false positives of it": (
        [truth([[0.1, 0.1, 0.5, 0.5]], [0])],
        [rows([0, 0.9, 0.1, 0.1, 0.5, 0.5], [2, 0.8, 0.6, 0.6, 0.9, 0.9])]),
    "duplicates": (
        [truth([[0.1, 0.1, 0.5, 0.5], [0.6, 0.1, 0.9, 0.4]], [0, 0])],
        [rows([0, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 0.85, 0.11, 0.1, 0.5, 0.52], [0, 0.5, 0.6, 0.1, 0.9, 0.4])]),
    "difficult objects": (
        [truth([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], [1, 1], [False, True]),
         truth([[0.2, 0.2, 0.4, 0.4]], [1])],
        [rows([1, 0.95, 0.6, 0.6, 0.9, 0.9], [1, 0.7, 0.1, 0.1, 0.5, 0.5]), rows([1, 0.8, 0.5, 0.5, 0.7, 0.7])]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_voc07_matches_the_devkit(case: str):
    truths, detections = CASES[case]
    report, _ = metrics(truths, detections, 3, {})
    assert report["voc07_map"] == pytest.approx(devkit_voc07(truths, detections, 3), abs=0.005)


def test_voc07_on_a_random_set_matches_the_devkit():
    rng = np.random.default_rng(0)
    truths, detections = [], []
    for _ in range(30):
        g = rng.integers(0, 5)
        corners = rng.uniform(0, 0.6, (g, 2))
        boxes = np.column_stack([corners, corners + rng.uniform(0.1, 0.4, (g, 2))])
        truths.append(truth(boxes, rng.integers(0, 4, g), rng.random(g) < 0.1))
        noisy = boxes + rng.normal(0, 0.03, boxes.shape) if g else np.zeros((0, 4))
        extra = rng.uniform(0, 1, (3, 4))
        extra[:, 2:] = extra[:, :2] + 0.2
        found = np.concatenate([noisy, extra])
        detections.append(np.column_stack([rng.integers(0, 4, len(found)), rng.random(len(found)), found])
                          .astype(np.float32))
    report, _ = metrics(truths, detections, 4, {})
    assert report["voc07_map"] == pytest.approx(devkit_voc07(truths, detections, 4), abs=0.005)
    assert 0 < report["voc12_map"] <= 1 and report["objects"] == sum(len(t.classes) for t in truths)


def test_coco_ap_from_its_definition():
    """Perfect boxes: AP 1 at every IoU. A box at IoU 0.6 with its object counts at the IoU
    thresholds 0.50, 0.55, 0.60 of the ten: AP@[.5:.95] = 0.3."""
    one = [truth([[0.1, 0.1, 0.5, 0.5]], [0], size=(100, 100))]
    assert coco_map(one, [rows([0, 0.9, 0.1, 0.1, 0.5, 0.5])], 1)["map"] == pytest.approx(1.0)
    # (0.1, 0.1, 0.5, 0.5) against (0.1, 0.1, 0.5, 0.34): IoU = 0.24 / 0.4 = 0.6
    shifted = coco_map(one, [rows([0, 0.9, 0.1, 0.1, 0.5, 0.34])], 1)
    assert shifted["map"] == pytest.approx(0.3, abs=1e-6) and shifted["map_50"] == pytest.approx(1.0)
    assert coco_map(one, [rows()], 1)["map"] == 0.0
    assert coco_map([truth([], [])], [rows()], 1)["map"] == -1.0  # nothing to score


def test_coco_sizes_use_source_pixels():
    """A 20 x 20 pixel object is small in a 100 x 100 image (area 400 < 32^2)."""
    small = [truth([[0.1, 0.1, 0.3, 0.3]], [0], size=(100, 100))]
    result = coco_map(small, [rows([0, 0.9, 0.1, 0.1, 0.3, 0.3])], 1)
    assert result["small"] == pytest.approx(1.0) and result["large"] == -1.0


def test_mistakes_count_misses_and_confident_false_positives():
    t = truth([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], [0, 1])
    assert mistakes(t, rows([0, 0.9, 0.1, 0.1, 0.5, 0.5], [1, 0.8, 0.6, 0.6, 0.9, 0.9])) == 0
    assert mistakes(t, rows([0, 0.9, 0.1, 0.1, 0.5, 0.5])) == 1
    assert mistakes(t, rows([0, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 0.9, 0.1, 0.1, 0.5, 0.5])) == 2  # duplicate + miss
    assert mistakes(t, rows([0, 0.2, 0.1, 0.1, 0.5, 0.5])) == 2  # not confident: both missed


def test_coco_ap_equals_pycocotools_run_directly_from_files(tmp_path):
    """The same detections and truths written as COCO JSON files and scored by pycocotools'
    own file-based entry points (no code of ours in between)."""
    import contextlib
    import io
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(5)
    truths, detections = [], []
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": str(c)} for c in range(3)]}
    results = []
    for index in range(12):
        width, height = 320, 240
        g = int(rng.integers(1, 5))
        corners = rng.uniform(0, 0.6, (g, 2))
        boxes = np.column_stack([corners, corners + rng.uniform(0.05, 0.4, (g, 2))])
        classes = rng.integers(0, 3, g)
        truths.append(truth(boxes, classes, size=(width, height)))
        found = np.clip(boxes + rng.normal(0, 0.02, boxes.shape), 0, 1)
        scores = rng.random(g)
        detections.append(np.column_stack([classes, scores, found]).astype(np.float32))
        gt["images"].append({"id": index + 1, "width": width, "height": height})
        for (x0, y0, x1, y1), cls in zip(boxes, classes):
            w, h = (x1 - x0) * width, (y1 - y0) * height
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": index + 1,
                                      "category_id": int(cls) + 1, "bbox": [x0 * width, y0 * height, w, h],
                                      "area": w * h, "iscrowd": 0})
        for (x0, y0, x1, y1), cls, score in zip(detections[-1][:, 2:6], classes, detections[-1][:, 1]):
            results.append({"image_id": index + 1, "category_id": int(cls) + 1, "score": float(score),
                            "bbox": [float(x0) * width, float(y0) * height, float(x1 - x0) * width,
                                     float(y1 - y0) * height]})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ours = coco_map(truths, detections, 3)
    assert ours["map"] == pytest.approx(evaluation.stats[0], abs=1e-4)
    assert ours["map_50"] == pytest.approx(evaluation.stats[1], abs=1e-4)
