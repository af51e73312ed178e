"""PASCAL VOC mean average precision, as the VOC devkit computes it.

A detection is a true positive when its IoU with an unmatched ground-truth box of its class
reaches the overlap threshold; a match with a ``difficult`` box counts as neither true nor false
positive, and difficult boxes are not counted as positives. ``voc07`` selects the 11-point
interpolated AP of VOC2007 (what the built-in algorithm reports), otherwise the area under the
precision/recall curve (VOC2010 and later).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..boxes import box_iou


@dataclass
class VOCMeanAP:
    num_classes: int
    overlap_threshold: float = 0.5
    voc07: bool = True
    _scores: list[list[np.ndarray]] = field(default_factory=list)
    _hits: list[list[np.ndarray]] = field(default_factory=list)
    _positives: np.ndarray = field(default=None)  # type: ignore[arg-type]  # set in __post_init__

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores = [[] for _ in range(self.num_classes)]
        self._hits = [[] for _ in range(self.num_classes)]  # 1 true positive, 0 false, -1 ignored
        self._positives = np.zeros(self.num_classes, np.int64)

    def update(self, det_boxes: np.ndarray, det_classes: np.ndarray, det_scores: np.ndarray,
               gt_boxes: np.ndarray, gt_classes: np.ndarray, gt_difficult: np.ndarray | None = None) -> None:
        """One image: detections (D, 4), (D,), (D,) and ground truth (G, 4), (G,), (G,)."""
        if gt_difficult is None:
            gt_difficult = np.zeros(len(gt_classes), bool)
        gt_difficult = gt_difficult.astype(bool)
        for cls in range(self.num_classes):
            gt_mask = gt_classes == cls
            gts, difficult = gt_boxes[gt_mask], gt_difficult[gt_mask]
            self._positives[cls] += int((~difficult).sum())
            det_mask = det_classes == cls
            if not det_mask.any():
                continue
            order = np.argsort(-det_scores[det_mask], kind="stable")
            boxes, scores = det_boxes[det_mask][order], det_scores[det_mask][order]
            hits = np.zeros(len(boxes), np.int8)
            if len(gts):
                iou = box_iou(boxes, gts)  # (D_c, G_c)
                taken = np.zeros(len(gts), bool)
                for i in range(len(boxes)):
                    j = int(np.argmax(iou[i]))
                    if iou[i, j] >= self.overlap_threshold:
                        if difficult[j]:
                            hits[i] = -1
                        elif not taken[j]:
                            hits[i] = 1
                            taken[j] = True
            self._scores[cls].append(scores)
            self._hits[cls].append(hits)

    def curve(self, cls: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Recall and precision of class cls after each of its detections, best score first;
        None for a class with no (non-difficult) ground truth."""
        if self._positives[cls] == 0:
            return None
        if not self._scores[cls]:
            return np.zeros(0), np.zeros(0)
        scores = np.concatenate(self._scores[cls])
        hits = np.concatenate(self._hits[cls])
        order = np.argsort(-scores, kind="stable")
        hits = hits[order]
        hits = hits[hits >= 0]  # matches with difficult boxes are ignored
        tp = np.cumsum(hits == 1)
        fp = np.cumsum(hits == 0)
        recall = tp / self._positives[cls]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return recall, precision

    def average_precisions(self) -> np.ndarray:
        """AP per class; NaN for a class with no (non-difficult) ground truth."""
        aps = np.full(self.num_classes, np.nan)
        for cls in range(self.num_classes):
            curve = self.curve(cls)
            if curve is None:
                continue
            recall, precision = curve
            if not recall.size:
                aps[cls] = 0.0
                continue
            aps[cls] = _ap_voc07(recall, precision) if self.voc07 else _ap_area(recall, precision)
        return aps

    @property
    def positives(self) -> np.ndarray:
        """Non-difficult ground-truth objects per class."""
        return self._positives.copy()

    def value(self) -> float:
        """Mean AP over the classes that have ground truth (0 when none has)."""
        aps = self.average_precisions()
        valid = aps[~np.isnan(aps)]
        return float(valid.mean()) if valid.size else 0.0


def _ap_voc07(recall: np.ndarray, precision: np.ndarray) -> float:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        above = precision[recall >= t]
        ap += (above.max() if above.size else 0.0) / 11.0
    return float(ap)


def _ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))
