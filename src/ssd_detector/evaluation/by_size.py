"""VOC mean AP overall and per object size, with COCO's size bounds (in pixels of the image).

For one size, ground-truth boxes of other sizes are treated as difficult (a detection on them is
neither right nor wrong) and only detections of that size are scored, so a size's AP says how
well objects of that size are found without blaming it for the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .voc_map import VOCMeanAP

# Upper bounds of box area in pixels: small below 32x32, medium below 96x96, large above.
SIZES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, float("inf")))


def pixel_areas(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalized corners (N, 4) -> areas (N,) in pixels of a width x height image."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None) * width * height


@dataclass
class SizedMeanAP:
    num_classes: int
    overlap_threshold: float = 0.5
    voc07: bool = True
    overall: VOCMeanAP = field(init=False)
    by_size: dict[str, VOCMeanAP] = field(init=False)
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.overall = VOCMeanAP(self.num_classes, self.overlap_threshold, self.voc07)
        self.by_size = {name: VOCMeanAP(self.num_classes, self.overlap_threshold, self.voc07) for name, _, _ in SIZES}
        self.counts = {name: 0 for name, _, _ in SIZES}

    def update(self, det_boxes: np.ndarray, det_classes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
               gt_classes: np.ndarray, gt_difficult: np.ndarray | None, width: int, height: int) -> None:
        """One width x height image: detections (D, 4) normalized, (D,), (D,); ground truth (G, 4)
        normalized, (G,), (G,) or None."""
        difficult = np.zeros(len(gt_classes), bool) if gt_difficult is None else gt_difficult.astype(bool)
        self.overall.update(det_boxes, det_classes, det_scores, gt_boxes, gt_classes, difficult)
        gt_area, det_area = pixel_areas(gt_boxes, width, height), pixel_areas(det_boxes, width, height)
        for name, low, high in SIZES:
            inside = (gt_area >= low) & (gt_area < high)
            self.counts[name] += int((inside & ~difficult).sum())
            shown = (det_area >= low) & (det_area < high)
            self.by_size[name].update(det_boxes[shown], det_classes[shown], det_scores[shown], gt_boxes, gt_classes,
                                      difficult | ~inside)

    def value(self) -> float:
        return self.overall.value()

    def size_values(self) -> dict[str, float | None]:
        """AP per size; None for a size with no ground-truth object."""
        return {name: (metric.value() if self.counts[name] else None) for name, metric in self.by_size.items()}
