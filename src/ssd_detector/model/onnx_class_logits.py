"""INT8 outputs for the class predictors of an INT8 ONNX file: each predictor rewritten to give
its classes' logits relative to the background's, so that one uint8 scale can hold them.

A class predictor's output channels are, per anchor, the logits of the background and then of
each class (``(A * (C + 1), ...)``, channel ``a * (C + 1) + k``). The detection reads them only
through a softmax over the C + 1 logits of an anchor, which is unchanged when the same number is
taken from all of them. The rewrite takes the background's weights and bias from each class's
(so the background logit is exactly 0 and class k's is ``l_k - l_background``) before the
weights are quantized. This alone does not narrow the range: on a trained mobilenet-1.0@300 the
differences reached -1,055 (anchors sure of the background). But a class whose difference lies
below ``ln(threshold)`` can never be detected (its probability is below MultiBoxDetection's
threshold), so the range is floored at ``ln(threshold * FLOOR_SHARE / C)``: a difference clipped
up to the floor still scores under the threshold, and the C clipped classes together add at most
``FLOOR_SHARE * threshold`` to the softmax's denominator, which is at least 1. What is left
(about -9 to +5) fits 255 steps of 0.06. The top of the range is the largest difference seen on
the calibration images. A threshold of 0 keeps no floor: the range is then the smallest to the
largest difference seen.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from ..errors import UserError
from .onnx_calibration import Range, extremes, layer_outputs

# The most the clipped classes of an anchor may add to its softmax's denominator, as a share of
# the detection threshold (see the module's docstring).
FLOOR_SHARE = 0.05


def logit_floor(threshold: float, num_classes: int) -> float:
    """The lowest class-minus-background logit worth representing; -inf when threshold is 0."""
    if threshold <= 0:
        return -math.inf
    return math.log(threshold * FLOOR_SHARE / max(num_classes, 1))


def relative_to_background(weights: dict[str, np.ndarray], conv: Any, classes_plus_one: int) -> None:
    """Rewrites conv's weight and bias (in weights) so that its output channels hold each class's
    logit minus the background's, the background's being 0."""
    weight = weights[conv.input[1]]  # (A * (C + 1), Cin, kh, kw)
    if len(weight) % classes_plus_one:
        raise UserError(f"class predictor {conv.name}: {len(weight)} filters are not a multiple of "
                        f"{classes_plus_one} (the classes and the background)")
    anchors = len(weight) // classes_plus_one
    per_anchor = weight.reshape(anchors, classes_plus_one, *weight.shape[1:])  # -> (A, C + 1, Cin, kh, kw)
    relative = per_anchor - per_anchor[:, :1]
    weights[f"{conv.input[1]}_relative"] = relative.reshape(weight.shape).astype(np.float32)  # -> (A * (C + 1), ...)
    conv.input[1] = f"{conv.input[1]}_relative"
    if len(conv.input) > 2:
        bias = weights[conv.input[2]].reshape(anchors, classes_plus_one)  # (A * (C + 1),) -> (A, C + 1)
        weights[f"{conv.input[2]}_relative"] = (bias - bias[:, :1]).reshape(-1).astype(np.float32)
        conv.input[2] = f"{conv.input[2]}_relative"


def relative_logit_ranges(model_dir: Path, symbol: mx.sym.Symbol, names: list[str], images: np.ndarray,
                          classes_plus_one: int, floor: float) -> dict[str, Range]:
    """The range of each named class predictor's class-minus-background logits over images
    (K, 3, S, S), run through the artifact's graph with MXNet, its low end raised to floor."""
    def difference(logits: mx.nd.NDArray) -> mx.nd.NDArray:
        per_anchor = logits.reshape((0, -4, -1, classes_plus_one, -2))  # (B, A * (C + 1), H, W) -> (B, A, C+1, H, W)
        return mx.nd.broadcast_sub(per_anchor.slice_axis(axis=2, begin=1, end=None),
                                   per_anchor.slice_axis(axis=2, begin=0, end=1))

    low, high = extremes(layer_outputs(model_dir, symbol, names), images, difference)
    return {name: Range(max(float(low[i]), floor), max(float(high[i]), 0.0)) for i, name in enumerate(names)}
