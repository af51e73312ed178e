"""SSD's loss: softmax cross-entropy with 3:1 hard-negative mining, plus smooth L1 on positives.

Both terms are divided by the number of positive anchors, which the caller passes in so that
distributed training can use the count over every worker's batch. weighted=True takes each
positive's weight from a fifth column of the box target (targets.positive_weights).
"""
from __future__ import annotations

from mxnet import gluon

NEGATIVE_MINING_RATIO = 3.0


class SSDLoss(gluon.HybridBlock):
    def __init__(self, negative_mining_ratio: float = NEGATIVE_MINING_RATIO, weighted: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.ratio = negative_mining_ratio
        self.weighted = weighted

    def hybrid_forward(self, F, cls_pred, box_pred, cls_target, box_target, num_positive):
        """cls_pred (B, N, C + 1), box_pred (B, N * 4), cls_target (B, N) with 0 = background,
        box_target (B, N, 4), or (B, N, 5) if weighted, num_positive (1,) -> (class loss, box loss),
        each (1,)."""
        log_prob = F.log_softmax(cls_pred, axis=-1)
        ce = -F.pick(log_prob, cls_target, axis=-1)  # (B, N)
        positive = cls_target > 0
        if self.weighted:
            weight = F.reshape(F.slice_axis(box_target, axis=-1, begin=4, end=5), (0, 0))  # (B, N, 1) -> (B, N)
            box_target = F.slice_axis(box_target, axis=-1, begin=0, end=4)
            positive_weight = positive * weight
        else:
            positive_weight = positive
        # Keep, per image, the ratio x (its positives) negatives of highest loss: one descending
        # sort gives the loss of the last one kept, which serves as a threshold.
        # Which negatives are kept is a choice, not a function to differentiate.
        negative_ce = F.stop_gradient(F.where(positive, F.zeros_like(ce) - 1, ce))  # positives sort last
        ordered = F.sort(negative_ce, axis=1, is_ascend=False)  # (B, N)
        keep = F.sum(positive, axis=1) * self.ratio  # (B,)
        last = F.clip(keep - 1, 0, 1e9)  # index of the last negative kept (pick clips past the end)
        threshold = F.expand_dims(F.pick(ordered, last, axis=1, mode="clip"), -1)  # (B, 1)
        hard_negative = F.broadcast_mul(F.broadcast_greater_equal(negative_ce, threshold),
                                        F.expand_dims(keep > 0, -1)) * (1 - positive)
        cls_loss = F.sum(ce * (positive_weight + hard_negative)) / F.maximum(num_positive, 1)
        box_pred = F.reshape(box_pred, (0, -1, 4))  # (B, N * 4) -> (B, N, 4)
        diff = F.smooth_l1(box_pred - box_target, scalar=1.0)
        # An element-wise product: the backward of broadcast_mul is several times slower on the CPU.
        box_weight = F.repeat(F.expand_dims(positive_weight, -1), repeats=4, axis=-1)  # (B, N) -> (B, N, 4)
        box_loss = F.sum(diff * box_weight) / F.maximum(num_positive, 1)
        return cls_loss, box_loss
