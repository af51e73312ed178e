"""The uint8 image as the quantized input of an INT8 file's first convolution.

The exported graph normalizes the image in FP32 before its first convolution: a Cast, minus the
mean colour, over the standard deviation. When that convolution is INT8, the rewrite folds the
normalization into its weights and bias instead, and the convolution reads the image's pixels as
they are, as its uint8 input (scale 1, zero point ``Z``: the mean colour's channels averaged and
rounded). The Cast, the two FP32 operations and a QuantizeLinear over the whole image are gone
(2.8% of the INT8 file's time in the profile of mobilenet-1.0@300 at batch 8; 1% to 6% faster
timed, docs/experiments.md), and the image is no
longer rounded to 255 steps over its normalized range (0.0187 per step there, against 1/57 for
one pixel level).

The one difference: the convolution's padding is pixels of value ``Z`` where it was the mean
colour (0 once normalized). On ImageNet's mean colour, ``Z`` is 114: the border reads as
(-0.17, -0.04, +0.18) standard deviations instead of 0, in the outputs whose window overlaps the
padding (the first row and column at stride 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_calibration import ACTIVATION_LEVELS, Range

FLOAT, UINT8 = 1, 2  # onnx.TensorProto's element types


@dataclass(frozen=True)
class ImageInput:
    """The graph input the first INT8 convolution now reads, and its zero point."""
    name: str
    conv: str
    zero: int

    def range(self) -> Range:
        """The uint8 range of scale 1 and zero point self.zero."""
        return Range(float(-self.zero), float(ACTIVATION_LEVELS - self.zero))


def _only_reader(consumers: dict[str, list[Any]], tensor: str, op_types: tuple[str, ...]) -> Any | None:
    readers = consumers.get(tensor, [])
    if len(readers) == 1 and readers[0].op_type in op_types and readers[0].input[0] == tensor:
        return readers[0]
    return None


def _chain(consumers: dict[str, list[Any]], name: str) -> tuple[Any, Any, Any, Any] | None:
    """Cast to float, Sub, Div or Mul, then Conv, each the only reader of the one before, from the
    graph input name; or None."""
    cast = _only_reader(consumers, name, ("Cast",))
    if cast is None or next((a.i for a in cast.attribute if a.name == "to"), None) != FLOAT:
        return None
    sub = _only_reader(consumers, cast.output[0], ("Sub",))
    scale = _only_reader(consumers, sub.output[0], ("Div", "Mul")) if sub is not None else None
    conv = _only_reader(consumers, scale.output[0], ("Conv",)) if scale is not None else None
    return (cast, sub, scale, conv) if conv is not None else None


def _per_channel(weights: dict[str, np.ndarray], name: str, channels: int) -> np.ndarray | None:
    """A constant of one value per image channel (shaped (C,), (C, 1, 1) or (1, C, 1, 1)), or None."""
    value = weights.get(name)
    if value is None or value.size != channels or (value.ndim > 1 and value.shape[-2:] != (1, 1)):
        return None
    return value.astype(np.float64).reshape(channels)


def fold_normalization(graph: Any, convs: list[Any]) -> ImageInput | None:
    """Where a uint8 graph input goes through Cast to float, Sub of a per-channel constant and Div (or
    Mul) by another into one of convs (the INT8 convolutions) alone: folds the two into the
    convolution's weights and bias (graph: onnx_int8.Graph), which then reads the input itself,
    and drops the three nodes; -> what was done, or None where the graph does not match."""
    consumers = graph.consumers()
    quantized = {n.name for n in convs}
    for value in graph.graph.input:
        chain = _chain(consumers, value.name)
        if chain is None or value.type.tensor_type.elem_type != UINT8:
            continue
        cast, sub, scale, conv = chain
        if conv.name not in quantized or conv.input[1] not in graph.weights:
            continue
        weight = graph.weights[conv.input[1]]  # (O, C, kh, kw)
        if next((a.i for a in conv.attribute if a.name == "group"), 1) != 1:
            continue
        channels = weight.shape[1]
        mean = _per_channel(graph.weights, sub.input[1], channels)
        factor = _per_channel(graph.weights, scale.input[1], channels)
        if mean is None or factor is None:
            continue
        if scale.op_type == "Div":
            factor = 1.0 / factor
        zero = int(np.clip(round(float(mean.mean())), 0, ACTIVATION_LEVELS))
        # conv(w, (x - mean) * f) = conv(w * f, x - zero) + sum over (c, kh, kw) of w * f * (zero - mean)
        folded = weight.astype(np.float64) * factor.reshape(1, channels, 1, 1)
        bias = graph.weights[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(len(weight))
        bias = bias + (folded * (zero - mean).reshape(1, channels, 1, 1)).sum(axis=(1, 2, 3))
        weight_name, bias_name = f"{conv.input[1]}_image", f"{conv.output[0]}_image_bias"
        graph.weights[weight_name], graph.weights[bias_name] = folded.astype(np.float32), bias.astype(np.float32)
        conv.input[:] = [value.name, weight_name, bias_name]
        for node in (cast, sub, scale):
            graph.remove(node)
        return ImageInput(value.name, conv.name, zero)
    return None
