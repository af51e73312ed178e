"""The SSD network: base features, class and box heads, and the detection head for export.

``SSD`` returns raw predictions for training. ``SSDDetector`` wraps it with softmax, box
decoding and per-class non-maximum suppression (MXNet's MultiBoxDetection), giving
(B, N, 6) rows of [class_id, score, xmin, ymin, xmax, ymax] with -1 rows for suppressed
anchors, the built-in's output. Both take (B, 3, S, S) RGB in 0..255: normalization by the
ImageNet mean and std is the first layer, so callers (training batches, serving) send pixels.
"""
from __future__ import annotations

from typing import Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from ..data.transforms import MEAN_RGB, STD_RGB
from .anchors import AnchorLayout, generate_anchors, make_layout
from .backbones import build_features
from .targets import VARIANCES


def feature_sizes(features: gluon.HybridBlock, image_size: int) -> tuple[int, ...]:
    """Spatial size of each feature map at image_size, by shape inference (no computation)."""
    data = mx.sym.var("data")
    outputs = features(data)
    _, shapes, _ = mx.sym.Group(outputs).infer_shape(data=(1, 3, image_size, image_size))
    return tuple(int(s[2]) for s in shapes)


def layout_for(base_network: str, image_size: int, anchor_sizes: Sequence[float] = ()) -> AnchorLayout:
    """The anchor layout a network would get, from its feature maps alone (no weights, no heads):
    checks anchor_sizes before any training starts."""
    features = build_features(base_network, image_size)
    return make_layout(base_network, image_size, feature_sizes(features, image_size), anchor_sizes)


class SSD(gluon.HybridBlock):
    def __init__(self, base_network: str, num_classes: int, image_size: int,
                 anchor_sizes: Sequence[float] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_network = base_network
        self.num_classes = num_classes
        self.image_size = image_size
        with self.name_scope():
            self.features = build_features(base_network, image_size)
            self.layout: AnchorLayout = make_layout(base_network, image_size,
                                                    feature_sizes(self.features, image_size), anchor_sizes)
            self.class_heads = nn.HybridSequential(prefix="class_")
            self.box_heads = nn.HybridSequential(prefix="box_")
            for anchors in self.layout.anchors_per_location:
                with self.class_heads.name_scope():
                    self.class_heads.add(nn.Conv2D(anchors * (num_classes + 1), 3, padding=1))
                with self.box_heads.name_scope():
                    self.box_heads.add(nn.Conv2D(anchors * 4, 3, padding=1))
            self.mean = self.params.get_constant("mean", MEAN_RGB.reshape(1, 3, 1, 1))  # (3,) -> NCHW broadcast
            self.std = self.params.get_constant("std", STD_RGB.reshape(1, 3, 1, 1))  # (3,) -> NCHW broadcast
        self.anchors = generate_anchors(self.layout)  # (N, 4) numpy, for the data workers

    def materialize(self, ctx: mx.Context | None = None) -> None:
        """Runs one zero batch so that every deferred parameter shape is known (needed before
        weights are loaded or copied)."""
        ctx = ctx or self.mean.list_ctx()[0]
        self(mx.nd.zeros((1, 3, self.image_size, self.image_size), ctx=ctx))

    def hybrid_forward(self, F, x, mean, std):
        """x: (B, 3, S, S) 0..255 -> class logits (B, N, C + 1), box offsets (B, N * 4)."""
        x = F.broadcast_div(F.broadcast_sub(F.cast(x, "float32"), mean), std)
        feats = self.features(x)
        classes, boxes = [], []
        for feat, cls_head, box_head in zip(feats, self.class_heads, self.box_heads):
            # (B, A * K, F, F) -> (B, F, F, A * K) -> (B, F * F * A * K): anchor order of generate_anchors
            classes.append(F.flatten(F.transpose(cls_head(feat), (0, 2, 3, 1))))
            boxes.append(F.flatten(F.transpose(box_head(feat), (0, 2, 3, 1))))
        cls_pred = F.reshape(F.concat(*classes, dim=1), (0, -1, self.num_classes + 1))  # (B, N, C + 1)
        box_pred = F.concat(*boxes, dim=1)  # (B, N * 4)
        return cls_pred, box_pred


NET_PREFIX = "ssd_"


def build_ssd(base_network: str, num_classes: int, image_size: int, anchor_sizes: Sequence[float] = ()) -> SSD:
    """An SSD with the fixed prefix that makes parameter names the same in every process."""
    return SSD(base_network, num_classes, image_size, anchor_sizes, prefix=NET_PREFIX)


def short_parameter_names(net: SSD) -> dict[str, gluon.Parameter]:
    """Parameters by name without the network prefix, e.g. ``conv1_1_weight`` (VGG-16),
    ``resnetv10_stage1_conv0_weight``, ``class_conv0_weight``; what freeze_layer_pattern matches."""
    out = {}
    for name, param in net.collect_params().items():
        short = name[len(net.prefix):] if name.startswith(net.prefix) else name
        out[short[len("features_"):] if short.startswith("features_") else short] = param
    return out


class SSDDetector(gluon.HybridBlock):
    """SSD plus decoding and NMS: (B, 3, S, S) pixels -> (B, N, 6) detections."""

    def __init__(self, ssd: SSD, nms_threshold: float = 0.45, nms_topk: int = 400,
                 score_threshold: float = 0.01, **kwargs) -> None:
        super().__init__(prefix="", **kwargs)
        self.ssd = ssd
        self.nms_threshold = nms_threshold
        self.nms_topk = nms_topk
        self.score_threshold = score_threshold
        with self.name_scope():
            self.anchor_boxes = self.params.get_constant("anchors", ssd.anchors[np.newaxis])  # (1, N, 4)
        try:
            contexts = ssd.mean.list_ctx()
        except RuntimeError:  # the SSD is not initialized yet
            contexts = [mx.cpu()]
        self.anchor_boxes.initialize(ctx=contexts)

    def hybrid_forward(self, F, x, anchor_boxes):
        cls_pred, box_pred = self.ssd(x)
        cls_prob = F.transpose(F.softmax(cls_pred, axis=-1), (0, 2, 1))  # (B, N, C + 1) -> (B, C + 1, N)
        return F.contrib.MultiBoxDetection(cls_prob, box_pred, anchor_boxes, clip=True,
                                           threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                                           force_suppress=False, variances=VARIANCES, nms_topk=self.nms_topk)
