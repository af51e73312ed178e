"""COCO-style AP@[.5:.95] through pycocotools, on detections and truths held in memory.

Boxes go to pycocotools in source pixels ([x, y, width, height]); VOC's difficult objects become
COCO's crowd regions, which pycocotools also neither requires nor penalizes a detection on.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

from .truth import ImageTruth


def _xywh(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized corners (N, 4) -> pixel [x, y, w, h] (N, 4)."""
    scale = np.array([width, height, width, height], np.float64)
    pixels = boxes.astype(np.float64) * scale
    return np.column_stack([pixels[:, 0], pixels[:, 1], pixels[:, 2] - pixels[:, 0], pixels[:, 3] - pixels[:, 1]])


def coco_dicts(images: Sequence[ImageTruth], detections: Sequence[np.ndarray],
               num_classes: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """-> pycocotools' ground-truth dataset and result list (class ids 0.. become category ids 1..)."""
    dataset: dict[str, Any] = {"images": [], "annotations": [],
                               "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    results: list[dict[str, Any]] = []
    for index, (image, rows) in enumerate(zip(images, detections)):
        dataset["images"].append({"id": index + 1, "width": image.width, "height": image.height})
        for box, cls, difficult in zip(_xywh(image.boxes, image.width, image.height), image.classes,
                                       image.difficult):
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1, "image_id": index + 1, "category_id": int(cls) + 1,
                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": int(bool(difficult))})
        for row, box in zip(rows, _xywh(rows[:, 2:6], image.width, image.height)):
            results.append({"image_id": index + 1, "category_id": int(row[0]) + 1, "bbox": [float(v) for v in box],
                            "score": float(row[1])})
    return dataset, results


def coco_map(images: Sequence[ImageTruth], detections: Sequence[np.ndarray], num_classes: int) -> dict[str, Any]:
    """AP@[.5:.95], AP@.5, AP@.75 and AP by COCO size; -1 where pycocotools has nothing to score."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = coco_dicts(images, detections, num_classes)
    empty = {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "small": -1.0, "medium": -1.0, "large": -1.0}
    if not dataset["annotations"]:
        return {k: -1.0 for k in empty}
    if not results:  # pycocotools cannot load an empty result list; nothing found scores 0
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [float(v) for v in evaluation.stats]
    return {"map": stats[0], "map_50": stats[1], "map_75": stats[2], "small": stats[3], "medium": stats[4],
            "large": stats[5]}
