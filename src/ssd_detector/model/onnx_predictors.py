"""The class and box predictors of a feature map as one INT8 convolution.

SSD reads each feature map with two 3x3 convolutions side by side: the class predictor
(anchors x (classes + 1) channels) and the box predictor (anchors x 4). In an INT8 file both are
INT8 with INT8 outputs, and ONNX Runtime then runs two narrow convolutions (16 to 36 output
channels) over the same input. The rewrite makes them one convolution whose output channels are
the class channels then the box channels, split after it: one pass over the input, twice as many
channels per pass (the predictors' time went from 7.8 to 6.4 ms in a profile of mobilenet-1.0@300
at batch 8; 1% to 3% faster timed, docs/experiments.md).

One output takes one uint8 scale, and the class range is kept as it is (its floor is what makes
INT8 class outputs accurate, onnx_class_logits). The box channels are mapped onto it: their
weights times ``alpha`` and their bias times ``alpha`` plus ``shift``, so that their calibrated
range lands exactly on the class range; after the split, a Mul by ``1 / alpha`` and an Add of
``-shift / alpha`` give the box offsets back. Their step is then their own range over 255, as if
they had a uint8 output of their own (only 0 is no longer exact, which a box offset does not need).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_calibration import Range


@dataclass(frozen=True)
class Merged:
    """One merged pair: the convolution kept (the class predictor's node), its new output, the
    box channels' mapping (alpha * offset + shift), and the nodes to place after the output (the
    caller places them: the node list is not reordered here, so the caller's node references stay live)."""
    conv: str
    output: str
    alpha: float
    shift: float
    after: list[Any]


def _attributes(conv: Any) -> str:
    return repr(sorted((a.name, str(a)) for a in conv.attribute))


def box_mapping(classes: Range, boxes: Range) -> tuple[float, float]:
    """(alpha, shift) with alpha * boxes + shift equal to classes widened to hold 0 (as its uint8
    scale is); (1, 0) when boxes is a single value."""
    low, high = min(classes.low, 0.0), max(classes.high, 0.0)
    if not boxes.high > boxes.low or not high > low:
        return 1.0, 0.0
    alpha = (high - low) / (boxes.high - boxes.low)
    return alpha, low - alpha * boxes.low


def merge_predictors(graph: Any, class_convs: list[Any], others: list[Any], ranges: dict[str, Range]) -> list[Merged]:
    """For each of class_convs (INT8 class predictors with INT8 outputs) and the one of others
    (INT8 convolutions with INT8 outputs that feed no convolution) that reads the same input with
    the same attributes (its box predictor): one convolution in their place (graph:
    onnx_int8.Graph, its weights FP32 still), ranges[output] set; -> the merges."""
    from onnx import helper

    merged: list[Merged] = []
    for conv in class_convs:
        boxes = [n for n in others if n.input[0] == conv.input[0] and _attributes(n) == _attributes(conv)]
        if len(boxes) != 1:
            continue
        box = boxes[0]
        class_out, box_out = conv.output[0], box.output[0]
        alpha, shift = box_mapping(ranges[class_out], ranges[box_out])
        weight, output = f"{conv.input[1]}_with_boxes", f"{class_out}_with_boxes"
        graph.weights[weight] = np.concatenate([graph.weights[conv.input[1]],
                                                alpha * graph.weights[box.input[1]]]).astype(np.float32)
        channels = [len(graph.weights[conv.input[1]]), len(graph.weights[box.input[1]])]
        biases = [graph.weights[n.input[2]] if len(n.input) > 2 else np.zeros(c, np.float32)
                  for n, c in zip((conv, box), channels)]
        graph.weights[f"{output}_bias"] = np.concatenate([biases[0], alpha * biases[1] + shift]).astype(np.float32)
        inputs = [conv.input[0], weight, f"{output}_bias"]
        graph.weights[f"{output}_split"] = np.array(channels, np.int64)
        graph.weights[f"{output}_unscale"] = np.array(1 / alpha, np.float32)
        graph.weights[f"{output}_unshift"] = np.array(-shift / alpha, np.float32)
        conv.input[:], conv.output[0] = inputs, output
        graph.remove(box)
        scaled, unscaled = f"{box_out}_mapped", f"{box_out}_unscaled"
        after = [helper.make_node("Split", [output, f"{output}_split"], [class_out, scaled], name=f"{conv.name}_split",
                                  axis=1),
                 helper.make_node("Mul", [scaled, f"{output}_unscale"], [unscaled], name=f"{conv.name}_unscale"),
                 helper.make_node("Add", [unscaled, f"{output}_unshift"], [box_out], name=f"{conv.name}_unshift")]
        ranges[output] = ranges[class_out]
        merged.append(Merged(conv.name, output, alpha, shift, after))
    return merged
