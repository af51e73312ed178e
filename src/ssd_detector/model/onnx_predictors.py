"""The class and box predictors of a feature map as one INT8 convolution.

SSD reads each feature map with two 3x3 convolutions side by side: the class predictor
(anchors x (classes + 1) channels) and the box predictor (anchors x 4). In an INT8 file both are
INT8 with INT8 outputs, and ONNX Runtime then runs two narrow convolutions (16 to 36 output
channels) over the same input. The rewrite makes them one convolution whose output channels are
the class channels then the box channels, split after it: one pass over the input, twice as many
channels per pass (about 3% of the INT8 file's time on mobilenet-1.0@300 at batch 8).

One output takes one uint8 scale, and the class range is kept as it is (its floor is what makes
INT8 class outputs accurate, onnx_class_logits). The box channels' weights and bias are
multiplied by ``alpha`` so that their calibrated range, times alpha, fits inside the class range
and fills as much of it as it can; a Mul by ``1 / alpha`` after the split gives the box offsets
back. Their step is then the class range's step over alpha rather than their own range's: at
most a few hundredths of a variance unit (an offset of 0.1 there is 1% of the anchor's size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_calibration import Range


@dataclass(frozen=True)
class Merged:
    """One merged pair: the convolution kept (the class predictor's node), its new output, the
    box predictor's scale alpha, and the nodes to place after the output (the caller places them:
    the graph's node list is not reordered here, so the caller's references to nodes stay live)."""
    conv: str
    output: str
    alpha: float
    after: list[Any]


def _attributes(conv: Any) -> str:
    return repr(sorted((a.name, str(a)) for a in conv.attribute))


def box_scale(classes: Range, boxes: Range) -> float:
    """The largest alpha with alpha * boxes inside classes (both widened to hold 0, as their
    uint8 scales are); 1 when boxes is only 0."""
    low, high = min(classes.low, 0.0), max(classes.high, 0.0)
    limits = [high / boxes.high] if boxes.high > 0 else []
    limits += [low / boxes.low] if boxes.low < 0 else []
    alpha = min(limits, default=1.0)
    return alpha if math.isfinite(alpha) and alpha > 0 else 1.0


def merge_predictors(graph: Any, class_convs: list[Any], others: list[Any], ranges: dict[str, Range]) -> list[Merged]:
    """For each of class_convs (INT8 class predictors with INT8 outputs) and the one of others
    (INT8 convolutions with INT8 outputs that feed no convolution) that reads the same input with
    the same attributes (its box predictor): one convolution in their place (graph:
    onnx_int8.Graph, its weights FP32 still), ranges[output] set; -> the merges."""
    from onnx import helper

    merged: list[Merged] = []
    for conv in class_convs:
        boxes = [n for n in others if n.input[0] == conv.input[0] and _attributes(n) == _attributes(conv)
                 and len(n.input) == len(conv.input)]
        if len(boxes) != 1:
            continue
        box = boxes[0]
        class_out, box_out = conv.output[0], box.output[0]
        alpha = box_scale(ranges[class_out], ranges[box_out])
        weight, output = f"{conv.input[1]}_with_boxes", f"{class_out}_with_boxes"
        graph.weights[weight] = np.concatenate([graph.weights[conv.input[1]], alpha * graph.weights[box.input[1]]])
        inputs = [conv.input[0], weight]
        if len(conv.input) > 2:
            inputs.append(f"{conv.input[2]}_with_boxes")
            graph.weights[inputs[2]] = np.concatenate([graph.weights[conv.input[2]], alpha * graph.weights[box.input[2]]])
        channels = [len(graph.weights[conv.input[1]]), len(graph.weights[box.input[1]])]
        graph.weights[f"{output}_split"] = np.array(channels, np.int64)
        graph.weights[f"{output}_unscale"] = np.array(1 / alpha, np.float32)
        conv.input[:], conv.output[0] = inputs, output
        graph.remove(box)
        scaled = f"{box_out}_scaled"
        after = [helper.make_node("Split", [output, f"{output}_split"], [class_out, scaled], name=f"{conv.name}_split",
                                  axis=1),
                 helper.make_node("Mul", [scaled, f"{output}_unscale"], [box_out], name=f"{conv.name}_unscale")]
        ranges[output] = ranges[class_out]
        merged.append(Merged(conv.name, output, alpha, after))
    return merged
