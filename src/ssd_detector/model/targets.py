"""Training targets for SSD: match anchors to objects and encode the box offsets.

Matching and encoding follow MXNet's MultiBoxTarget: every object takes its best anchor first
(greedily, highest overlap first), then every other anchor whose best overlap reaches the
threshold (MultiBoxTarget's ``overlap_threshold``, the job's ``match_threshold``) takes that
object. With ``topk`` (the job's ``match_topk``) each object also takes its k best-overlapping
anchors that overlap it by at least TOPK_MIN_OVERLAP and overlap no other object more: a small
object overlaps few anchors at the threshold, so by the threshold alone it trains on one or two
positives where a large one has a dozen. Offsets are centre/size deltas divided by the variances,
which MXNet's MultiBoxDetection decodes. Runs in numpy, in the data workers.
"""
from __future__ import annotations

import numpy as np

from ..boxes import box_iou

VARIANCES = (0.1, 0.1, 0.2, 0.2)
# The least IoU at which one of an object's k best anchors still becomes its positive.
TOPK_MIN_OVERLAP = 0.15


def corner_to_centre(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) corners -> (N, 4) centre x, centre y, width, height."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return np.concatenate([boxes[:, :2] + wh / 2, wh], axis=1)


def encode(matched: np.ndarray, anchors: np.ndarray, variances=VARIANCES) -> np.ndarray:
    """Object boxes (N, 4) matched to anchors (N, 4), both corners -> (N, 4) offsets."""
    g, a = corner_to_centre(matched), corner_to_centre(anchors)
    v = np.asarray(variances, np.float32)
    xy = (g[:, :2] - a[:, :2]) / a[:, 2:] / v[:2]
    wh = np.log(np.maximum(g[:, 2:], 1e-12) / a[:, 2:]) / v[2:]
    return np.concatenate([xy, wh], axis=1).astype(np.float32)


def decode(offsets: np.ndarray, anchors: np.ndarray, variances=VARIANCES) -> np.ndarray:
    """Inverse of encode -> (N, 4) corners."""
    a = corner_to_centre(anchors)
    v = np.asarray(variances, np.float32)
    xy = offsets[:, :2] * v[:2] * a[:, 2:] + a[:, :2]
    wh = np.exp(offsets[:, 2:] * v[2:]) * a[:, 2:]
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)


def match(anchors: np.ndarray, boxes: np.ndarray, overlap_threshold: float, topk: int = 0) -> np.ndarray:
    """-> (N_anchors,) index of the matched object, or -1."""
    matches = np.full(anchors.shape[0], -1, np.int64)
    if boxes.shape[0] == 0:
        return matches
    iou = box_iou(anchors, boxes)  # (A, M)
    # Bipartite step: each object takes its best free anchor, best overall overlap first.
    work = iou.copy()
    for _ in range(boxes.shape[0]):
        a, m = np.unravel_index(np.argmax(work), work.shape)
        if work[a, m] <= 1e-12:
            break
        matches[a] = m
        work[a, :] = -1
        work[:, m] = -1
    # Threshold step: the remaining anchors take their best object when it overlaps enough.
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(iou.shape[0]), best]
    free = (matches < 0) & (best_iou >= overlap_threshold)
    matches[free] = best[free]
    if topk > 0:
        k = min(topk, iou.shape[0])
        top = np.argpartition(-iou, k - 1, axis=0)[:k]  # (k, M) anchor indices, each object's k best
        objects = np.broadcast_to(np.arange(boxes.shape[0]), top.shape)  # (k, M)
        # An anchor goes only to its best object, so none is taken twice when objects share it.
        take = (matches[top] < 0) & (best[top] == objects) & (iou[top, objects] >= TOPK_MIN_OVERLAP)
        matches[top[take]] = objects[take]
    return matches


def positive_weights(matches: np.ndarray, balance: float) -> np.ndarray:
    """(N,) float32 loss weights from match's output: 0 where unmatched; a positive of an object
    with n positives gets n^-balance, all scaled so that the positives still sum to their count
    (the loss keeps its scale; only its share between large and small objects changes)."""
    positive = matches >= 0
    weights = np.zeros(matches.shape[0], np.float32)
    if positive.any():
        counts = np.bincount(matches[positive]).astype(np.float64)
        raw = counts[matches[positive]] ** -balance
        weights[positive] = raw * (positive.sum() / raw.sum())
    return weights


def make_targets(anchors: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, overlap_threshold: float,
                 variances=VARIANCES, topk: int = 0, balance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """-> (class target (N,) float32: 0 background, c + 1 for class c; box target (N, 4) float32,
    zero where unmatched). With balance > 0 the box target is (N, 5): positive_weights last, which
    SSDLoss(weighted=True) reads."""
    matches = match(anchors, boxes, overlap_threshold, topk)
    positive = matches >= 0
    cls_target = np.zeros(anchors.shape[0], np.float32)
    cls_target[positive] = class_ids[matches[positive]] + 1
    box_target = np.zeros((anchors.shape[0], 5 if balance > 0 else 4), np.float32)
    if positive.any():
        box_target[positive, :4] = encode(boxes[matches[positive]], anchors[positive], variances)
    if balance > 0:
        box_target[:, 4] = positive_weights(matches, balance)
    return cls_target, box_target


class TargetEncoder:
    """Picklable per-sample target maker handed to the data loader's workers."""

    def __init__(self, anchors: np.ndarray, overlap_threshold: float, variances=VARIANCES, topk: int = 0,
                 balance: float = 0.0) -> None:
        self.anchors = anchors
        self.overlap_threshold = overlap_threshold
        self.variances = variances
        self.topk = topk
        self.balance = balance

    def __call__(self, boxes: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return make_targets(self.anchors, boxes, class_ids, self.overlap_threshold, self.variances, self.topk,
                            self.balance)
