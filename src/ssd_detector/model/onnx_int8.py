"""INT8 ONNX files: the exported FP32 graph rewritten in ONNX's QDQ form (QuantizeLinear and
DequantizeLinear pairs around each convolution), calibrated on the user's images, so that ONNX
Runtime, TensorRT or OpenVINO run the convolutions in INT8 with standard operators only.

The rewrite, in order:
1. every BatchNormalization that follows a convolution is folded into its weights and bias (the
   INT8 weights must be the folded ones, or the normalization would stay an FP32 step);
2. a Relu after a convolution whose output is quantized is dropped: its output is quantized with
   zero point 0, so the quantization itself clips negatives (what ONNX Runtime's own quantizer
   does, and what lets ONNX Runtime fuse each convolution into one QLinearConv);
3. the activations around the convolutions are calibrated on the images with MXNet
   (onnx_calibration: by default each range holds 99.99% of the values, or all of them, naive);
4. activations become uint8 (asymmetric), weights int8 per output channel, symmetric, on 7 bits
   by default (127 levels: x86 CPUs without VNNI multiply uint8 by int8 pairwise into 16 bits,
   which 8-bit weights can overflow; ``weight_bits=8`` for CPUs with VNNI and other runtimes),
   biases int32 with the scale of input times weight;
5. an INT8 convolution on the image reads its uint8 pixels as they are, the normalization folded
   into it (onnx_image_input), and each feature map's INT8 class and box predictors become one
   convolution (onnx_predictors).

Convolutions reading fewer than ``min_channels`` channels (16 by default: mobilenet-0.25's first
8-channel layers and the RGB convolution before them) stay FP32: ONNX Runtime 1.20's INT8 kernels
work on vectors of channels, and there they ran 1.5x (the 3-channel input) to 10x (a depthwise
layer over 8 channels) slower than its FP32 ones (scripts/ort_profile.py, batch 8). The
convolution on the image is the exception when only INT8 convolutions follow it (mobilenet-1.0,
VGG, ResNet): FP32, it would move the change from FP32 to INT8 layouts (a reorder, a quantize and a
transpose) onto its output, which is larger than the image; INT8, it made the file about 10%
faster at batch 8 on mobilenet-1.0@300, where on mobilenet-0.25@256 the whole INT8 stem was 10%
slower (docs/experiments.md).

The class predictors (the convolutions feeding the class probabilities) are INT8 by default
(``int8``), with their logits made relative to the background's and floored where no class can
reach the detection threshold (onnx_class_logits): held-out mAP within 0.006 of FP32 on the four
models measured, where plain INT8 outputs had lost up to 0.095. The other choices: ``fp32`` keeps
them FP32; ``int32-output`` computes them in INT8 with their 32-bit sums as output (ConvInteger,
then the scale), as quantize's default, but ONNX Runtime 1.20's ConvInteger took as long as all
the QLinearConv of the backbone (mobilenet-1.0@300, batch 8). Input normalization, the heads'
reshapes, softmax and the detection tail stay FP32.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from . import artifact
from .onnx_calibration import CALIBRATIONS, DEFAULT_CALIBRATION, PERCENTILE, activation_ranges
from .onnx_class_logits import logit_floor, relative_logit_ranges, relative_to_background
from .onnx_image_input import fold_normalization
from .onnx_predictors import merge_predictors
from .quantize import CLASS_HEADS, class_head_layers

LOG = logging.getLogger(__name__)

# The class predictors are INT8, their logits relative to the background's (see the module's docstring).
DEFAULT_CLASS_HEADS = "int8"
DEFAULT_WEIGHT_BITS = 7  # symmetric int8 weights in [-63, 63] (see the module's docstring)
WEIGHT_BITS = (7, 8)
# Convolutions reading fewer channels stay FP32 (mobilenet-0.25's 8-channel stem): ONNX Runtime's
# INT8 kernels work on whole channel vectors, and with 3 or 8 channels they ran 1.5 to 10 times
# slower than its FP32 ones (see the module's docstring for the convolution on the image).
DEFAULT_MIN_CHANNELS = 16


class Graph:
    """A mutable view of an ONNX graph: initializers as numpy arrays, producers and consumers."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def producer(self) -> dict[str, Any]:
        return {output: node for node in self.graph.node for output in node.output}

    def consumers(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                found[name].append(node)
        return found

    def remove(self, node: Any) -> None:
        self.graph.node.remove(node)

    def write_weights(self) -> None:
        """Initializers from self.weights, those no node reads dropped."""
        from onnx import numpy_helper

        used = {name for node in self.graph.node for name in node.input}
        del self.graph.initializer[:]
        self.graph.initializer.extend(numpy_helper.from_array(value, name)
                                      for name, value in self.weights.items() if name in used)


def fold_batchnorms(graph: Graph) -> int:
    """Folds each BatchNormalization fed by a convolution alone into that convolution; -> the count."""
    producer, consumers = graph.producer(), graph.consumers()
    folded = 0
    for bn in [n for n in graph.graph.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(consumers[bn.input[0]]) != 1 or len(bn.output) != 1:
            continue
        if not all(name in graph.weights for name in [*bn.input[1:5], conv.input[1]]):
            continue
        gamma, beta, mean, var = (graph.weights[name].astype(np.float64) for name in bn.input[1:5])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)  # (C,)
        weight = graph.weights[conv.input[1]]  # (C, Cin / group, kh, kw)
        bias = graph.weights[conv.input[2]] if len(conv.input) > 2 else np.zeros(len(factor), np.float32)
        weight_name, bias_name = f"{conv.input[1]}_folded", f"{conv.output[0]}_folded_bias"
        graph.weights[weight_name] = (weight * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
        graph.weights[bias_name] = ((bias - mean) * factor + beta).astype(np.float32)
        conv.input[1:] = [weight_name, bias_name]
        conv.output[0] = bn.output[0]
        graph.remove(bn)
        folded += 1
    return folded


def drop_relus(graph: Graph, convs: set[str]) -> int:
    """Drops each Relu fed by one of convs (convolutions whose outputs are quantized) alone."""
    producer, consumers = graph.producer(), graph.consumers()
    dropped = 0
    for relu in [n for n in graph.graph.node if n.op_type == "Relu"]:
        conv = producer.get(relu.input[0])
        if conv is None or conv.op_type != "Conv" or conv.name not in convs or len(consumers[relu.input[0]]) != 1:
            continue
        conv.output[0] = relu.output[0]
        graph.remove(relu)
        dropped += 1
    return dropped


def _weight_int8(weight: np.ndarray, bits: int = DEFAULT_WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(C, ...) float -> int8 values in [-(2^(bits-1) - 1), 2^(bits-1) - 1] and the per-channel
    scales (C,)."""
    levels = 2 ** (bits - 1) - 1
    peak = np.abs(weight.reshape(len(weight), -1)).max(axis=1)
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    values = np.clip(np.round(weight / scale.reshape(-1, *[1] * (weight.ndim - 1))), -levels, levels)
    return values.astype(np.int8), scale


def _int32_output(graph: Graph, conv: Any, x_scale: np.float32, values: np.ndarray, w_scale: np.ndarray) -> list:
    """A convolution computed in INT8 with its 32-bit sums as output, as quantize's int32-output:
    ConvInteger on the uint8 input and the weights (as uint8 around 128: ONNX Runtime's
    ConvInteger takes uint8 weights and one zero point), then a cast, the per-channel scale of
    input times weight, and the FP32 bias. -> the nodes replacing conv."""
    from onnx import helper

    x, weight, out = conv.input[0], conv.input[1], conv.output[0]
    channels = len(values)
    graph.weights[f"{weight}_uint8"] = (values.astype(np.int16) + 128).astype(np.uint8)
    graph.weights[f"{weight}_zero128"] = np.array(128, np.uint8)
    graph.weights[f"{out}_sum_scale"] = (x_scale * w_scale).astype(np.float32).reshape(1, channels, 1, 1)
    nodes = [helper.make_node("ConvInteger", [f"{x}_q", f"{weight}_uint8", f"{x}_zero", f"{weight}_zero128"],
                              [f"{out}_int32"], name=f"{conv.name}_int", **{
                                  a.name: helper.get_attribute_value(a) for a in conv.attribute}),
             helper.make_node("Cast", [f"{out}_int32"], [f"{out}_sums"], name=f"{conv.name}_cast", to=1),
             helper.make_node("Mul", [f"{out}_sums", f"{out}_sum_scale"],
                              [f"{out}_scaled" if len(conv.input) > 2 else out], name=f"{conv.name}_scale")]
    if len(conv.input) > 2:
        graph.weights[f"{out}_bias4"] = graph.weights[conv.input[2]].reshape(1, channels, 1, 1)
        nodes.append(helper.make_node("Add", [f"{out}_scaled", f"{out}_bias4"], [out], name=f"{conv.name}_bias"))
    return nodes


def input_channels(graph: Graph, conv: Any) -> int:
    """The channels a convolution reads: its weight's (C, Cin / group, kh, kw) times its group."""
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    return int(graph.weights[conv.input[1]].shape[1]) * group


def convolutions_reached(graph: Graph, tensors: list[str]) -> set[str]:
    """The convolutions that read tensors through other operators only (Relu, pooling, ...)."""
    consumers = graph.consumers()
    found: set[str] = set()
    pending, seen = list(tensors), set(tensors)
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.op_type == "Conv":
                found.add(node.name)
                continue
            fresh = [o for o in node.output if o not in seen]
            seen.update(fresh)
            pending.extend(fresh)
    return found


def narrow_convolutions(graph: Graph, convs: list[Any], min_channels: int) -> set[str]:
    """The convolutions that stay FP32 for reading fewer than min_channels channels, but for a
    convolution on the image whose next convolutions are all INT8: FP32, it would only move the
    change from FP32 to INT8 layouts onto its output, larger than the image (see the module's
    docstring)."""
    narrow = {n.name for n in convs if input_channels(graph, n) < min_channels}
    by_name = {n.name: n for n in convs}
    for name in convolutions_reached(graph, [i.name for i in graph.graph.input]) & narrow:
        if not convolutions_reached(graph, list(by_name[name].output)) & narrow:
            narrow.discard(name)
    return narrow


def quantized_activations(quantized: list[Any], with_output: set[str]) -> list[str]:
    """The tensors with a QuantizeLinear/DequantizeLinear pair: each INT8 convolution's input, and
    its output where it is INT8 too."""
    return sorted({n.input[0] for n in quantized} | {n.output[0] for n in quantized if n.name in with_output})


@dataclass(frozen=True)
class DetectionFacts:
    """What the rewrite needs of the graph's detection: the class predictors' channels per
    anchor (the classes and the background) and MultiBoxDetection's score threshold."""
    classes_plus_one: int
    threshold: float


@dataclass(frozen=True)
class Int8Choices:
    """What export-onnx --int8 lets a user choose (the module's docstring says why each default)."""
    class_heads: str = DEFAULT_CLASS_HEADS
    weight_bits: int = DEFAULT_WEIGHT_BITS
    min_channels: int = DEFAULT_MIN_CHANNELS
    calibration: str = DEFAULT_CALIBRATION

    def check(self) -> None:
        """Refuses choices this rewrite does not make, naming the option."""
        if self.class_heads not in CLASS_HEADS:
            raise UserError(f"--class-heads {self.class_heads!r}: expected one of {', '.join(CLASS_HEADS)}")
        if self.weight_bits not in WEIGHT_BITS:
            raise UserError(f"--weight-bits {self.weight_bits}: expected one of {', '.join(map(str, WEIGHT_BITS))}")
        if not 0 <= self.min_channels <= 4096:
            raise UserError(f"--int8-min-channels {self.min_channels}: expected 0 (every convolution INT8) to 4096")
        if self.calibration not in CALIBRATIONS:
            raise UserError(f"--calibration {self.calibration!r}: expected one of {', '.join(CALIBRATIONS)}")


def quantize_graph(model: Any, model_dir: Path, images: np.ndarray, detection: DetectionFacts,
                   choices: Int8Choices = Int8Choices()) -> dict:
    """Rewrites the exported FP32 model (an onnx ModelProto) in place, calibrated on images
    (K, 3, S, S) uint8; -> what was done."""
    from onnx import helper

    choices.check()
    class_heads, weight_bits = choices.class_heads, choices.weight_bits
    graph = Graph(model.graph)
    for index, node in enumerate(graph.graph.node):  # the exporter leaves some names empty
        node.name = node.name or f"{node.op_type}_{index}"
    folded = fold_batchnorms(graph)
    symbol = artifact.load_symbol(model_dir)
    class_convs = set(class_head_layers(json.loads(symbol.tojson())["nodes"]))
    convs = [n for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in graph.weights]
    heads = {n.name for n in convs if n.output[0] in class_convs}  # no BatchNorm after them: names kept
    narrow = narrow_convolutions(graph, convs, choices.min_channels)
    quantized = [n for n in convs if n.name not in narrow and (class_heads != "fp32" or n.name not in heads)]
    with_output = {n.name for n in quantized if class_heads == "int8" or n.name not in heads}
    dropped = drop_relus(graph, with_output)
    image = fold_normalization(graph, quantized)  # the image itself as the first convolution's input
    relative = [n for n in quantized if n.name in heads and n.name in with_output]
    for conv in relative:  # INT8 class outputs: logits relative to the background (onnx_class_logits)
        relative_to_background(graph.weights, conv, detection.classes_plus_one)
    head_outputs = sorted(n.output[0] for n in relative)
    activations = quantized_activations(quantized, with_output)
    measured = [a for a in activations if a not in head_outputs and not (image and a == image.name)]
    ranges = activation_ranges(model_dir, symbol, measured, images, choices.calibration)
    if image:
        ranges[image.name] = image.range()
    floor = logit_floor(detection.threshold, detection.classes_plus_one - 1)
    if relative:
        ranges.update(relative_logit_ranges(model_dir, symbol, head_outputs, images, detection.classes_plus_one,
                                            floor))
    # Each INT8 class predictor and its box predictor as one convolution (onnx_predictors).
    shared = {n.input[0] for n in relative}  # only convolutions reading a class predictor's input can be its box one
    boxes = [n for n in quantized if n.input[0] in shared and n.name in with_output and n.name not in heads
             and not convolutions_reached(graph, list(n.output))]
    merged = merge_predictors(graph, relative, boxes, ranges)
    present = {n.name for n in graph.graph.node}
    int8_count, quantized = len(quantized), [n for n in quantized if n.name in present]
    activations = quantized_activations(quantized, with_output)

    made: list[Any] = []
    by_output: dict[str, list[Any]] = defaultdict(list)  # Q/DQ nodes to place after a tensor's producer
    rename: dict[str, str] = {}
    for name in activations:
        scale, zero = ranges[name].scale_zero()
        graph.weights[f"{name}_scale"], graph.weights[f"{name}_zero"] = np.array(scale), np.array(zero)
        source = name if image and name == image.name else f"{name}_q"  # the image is uint8 already
        quantize = [] if source == name else [helper.make_node("QuantizeLinear", [name, f"{name}_scale", f"{name}_zero"],
                                                               [source], name=f"{name}_Q")]
        by_output[name] = [*quantize, helper.make_node("DequantizeLinear", [source, f"{name}_scale", f"{name}_zero"],
                                                       [f"{name}_dq"], name=f"{name}_DQ")]
        rename[name] = f"{name}_dq"
    wide = []  # class predictors with 32-bit outputs: ConvInteger, then scaled to float
    for conv in quantized:
        x_scale = ranges[conv.input[0]].scale_zero()[0]
        values, w_scale = _weight_int8(graph.weights[conv.input[1]], weight_bits)
        weight = conv.input[1]
        if conv.name not in with_output:
            wide.append((conv, _int32_output(graph, conv, x_scale, values, w_scale)))
            continue
        graph.weights[f"{weight}_int8"], graph.weights[f"{weight}_scale"] = values, w_scale
        graph.weights[f"{weight}_zero"] = np.zeros(len(values), np.int8)
        made.append(helper.make_node("DequantizeLinear", [f"{weight}_int8", f"{weight}_scale", f"{weight}_zero"],
                                     [f"{weight}_dq"], name=f"{weight}_DQ", axis=0))
        inputs = [conv.input[0], f"{weight}_dq"]
        if len(conv.input) > 2:
            bias = conv.input[2]
            b_scale = (x_scale * w_scale).astype(np.float32)
            limit = np.iinfo(np.int32).max
            graph.weights[f"{bias}_int32"] = np.clip(np.round(graph.weights[bias] / b_scale), -limit, limit).astype(
                np.int32)
            graph.weights[f"{bias}_scale"], graph.weights[f"{bias}_zero"] = b_scale, np.zeros(len(values), np.int32)
            made.append(helper.make_node("DequantizeLinear", [f"{bias}_int32", f"{bias}_scale", f"{bias}_zero"],
                                         [f"{bias}_dq"], name=f"{bias}_DQ", axis=0))
            inputs.append(f"{bias}_dq")
        conv.input[:] = inputs
    # Every reader of a quantized activation reads its dequantized copy; nodes stay in topological
    # order: the weights' DequantizeLinear first, each activation's pair right after its producer.
    for merge in merged:  # the split of each merged output, after its Q/DQ pair
        by_output[merge.output].extend(merge.after)
    nodes = list(graph.graph.node)
    for node in [*nodes, *(n for merge in merged for n in merge.after)]:
        node.input[:] = [rename.get(name, name) for name in node.input]
    for conv, replacement in wide:
        at = nodes.index(conv)
        nodes[at:at + 1] = replacement
    ordered = list(made)
    for value in graph.graph.input:
        ordered.extend(by_output.get(value.name, []))
    for node in nodes:
        ordered.append(node)
        for output in node.output:
            ordered.extend(by_output.get(output, []))
    del graph.graph.node[:]
    graph.graph.node.extend(ordered)
    graph.write_weights()
    calibrated = "naive" if choices.calibration == "naive" else f"percentile {PERCENTILE:g}"
    summary = {"format": "QDQ", "calibration": calibrated, "calibration_images": int(len(images)),
               "class_heads": class_heads, "int8_convolutions": len(quantized), "int32_output_convolutions": len(wide),
               "fp32_convolutions": len(convs) - int8_count, "fp32_narrow_convolutions": len(narrow),
               "merged_predictors": len(merged),
               "min_channels": choices.min_channels, "batchnorms_folded": folded, "relus_dropped": dropped,
               "weight_bits": weight_bits,
               **({"image_input": f"uint8 pixels into {image.conv}, zero point {image.zero}"} if image else {}),
               **({"class_logits": "relative to the background", "class_logit_floor": round(floor, 4) if np.isfinite(floor) else None}
                  if relative else {})}
    LOG.info("INT8: %s", json.dumps(summary))
    return summary
