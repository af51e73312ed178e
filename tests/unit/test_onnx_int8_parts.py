"""The INT8 ONNX rewrite's parts on small hand-made graphs: BatchNorm folding keeps the function,
a Relu goes only where the quantization clips for it, the class logits made relative to the
background keep every probability, and the quantization steps themselves."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from ssd_detector.errors import UserError  # noqa: E402
from ssd_detector.model.onnx_calibration import Range, percentile_range  # noqa: E402
from ssd_detector.model.onnx_class_logits import FLOOR_SHARE, logit_floor, relative_to_background  # noqa: E402
from ssd_detector.model.onnx_int8 import (Graph, _weight_int8, convolutions_reached, drop_relus, fold_batchnorms,  # noqa: E402
                                          input_channels, narrow_convolutions)


def conv_bn_relu(rng: np.random.Generator, extra_reader: bool = False) -> tuple[object, dict]:
    """x (1, 4, 3, 3) -> 1x1 Conv (6 channels, no bias) -> BatchNormalization -> Relu -> y."""
    weights = {"w": rng.normal(size=(6, 4, 1, 1)).astype(np.float32),
               "gamma": rng.uniform(0.5, 2, 6).astype(np.float32), "beta": rng.normal(size=6).astype(np.float32),
               "mean": rng.normal(size=6).astype(np.float32), "var": rng.uniform(0.1, 3, 6).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn",
                              epsilon=1e-3),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    if extra_reader:  # the BatchNorm's output (the Relu's input) read by another node too
        nodes.append(helper.make_node("Identity", ["b"], ["b2"], name="other"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return graph, weights


def conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    out = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])  # (N, C, H, W) x (O, C) -> (N, O, H, W)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def test_batchnorm_folded_into_the_convolution_computes_the_same():
    rng = np.random.default_rng(3)
    graph, weights = conv_bn_relu(rng)
    view = Graph(graph)
    assert fold_batchnorms(view) == 1
    assert [n.op_type for n in graph.node] == ["Conv", "Relu"] and graph.node[0].output[0] == "b"
    x = rng.normal(size=(1, 4, 3, 3)).astype(np.float32)
    expected = (conv1x1(x, weights["w"]) - weights["mean"].reshape(1, -1, 1, 1)) / np.sqrt(
        weights["var"].reshape(1, -1, 1, 1) + 1e-3) * weights["gamma"].reshape(1, -1, 1, 1) + weights["beta"].reshape(
        1, -1, 1, 1)
    conv = graph.node[0]
    got = conv1x1(x, view.weights[conv.input[1]], view.weights[conv.input[2]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    view.write_weights()
    assert {i.name for i in graph.initializer} == set(conv.input[1:]), "the BatchNorm's parameters dropped"


def test_nothing_is_folded_when_the_convolutions_output_is_read_elsewhere():
    rng = np.random.default_rng(4)
    graph, _ = conv_bn_relu(rng)
    graph.node.append(helper.make_node("Identity", ["c"], ["c2"], name="reader"))  # reads the Conv's output
    assert fold_batchnorms(Graph(graph)) == 0 and len(graph.node) == 4


def test_a_relu_goes_only_after_a_quantized_convolution_it_alone_reads():
    rng = np.random.default_rng(5)
    graph, _ = conv_bn_relu(rng)
    view = Graph(graph)
    fold_batchnorms(view)
    assert drop_relus(view, set()) == 0, "the Conv's output is not quantized: the Relu must stay"
    assert drop_relus(view, {"conv"}) == 1
    assert [n.op_type for n in graph.node] == ["Conv"] and graph.node[0].output[0] == "y"
    graph, _ = conv_bn_relu(rng, extra_reader=True)
    view = Graph(graph)
    assert fold_batchnorms(view) == 1 and drop_relus(view, {"conv"}) == 0, "another node reads the Relu's input"


def test_activation_scales_hold_zero_exactly_and_relu_outputs_get_zero_point_zero():
    scale, zero = Range(0.0, 6.0).scale_zero()
    assert zero == 0 and np.isclose(scale * 255, 6.0)
    scale, zero = Range(-1.0, 3.0).scale_zero()
    assert np.isclose(scale * 255, 4.0) and zero == round(1 / scale)
    scale, zero = Range(0.5, 2.0).scale_zero()  # widened to hold 0
    assert zero == 0 and np.isclose(scale * 255, 2.0)
    assert Range(0.0, 0.0).scale_zero() == (np.float32(1.0), np.uint8(0))


def test_weights_per_channel_on_seven_bits():
    weight = np.array([[[[0.25, -1.0]]], [[[0.02, 0.005]]], [[[0.0, 0.0]]]], np.float32)  # (3, 1, 1, 2)
    values, scale = _weight_int8(weight)
    assert values.dtype == np.int8 and np.abs(values).max() == 63
    assert list(values[0, 0, 0]) == [16, -63] and list(values[1, 0, 0]) == [63, 16] and not values[2].any()
    np.testing.assert_allclose(values * scale.reshape(-1, 1, 1, 1), weight, atol=float(scale.max()) / 2)
    values, scale = _weight_int8(weight, bits=8)
    assert np.abs(values).max() == 127 and list(values[0, 0, 0]) == [32, -127]


def test_input_channels_count_every_group():
    """What --int8-min-channels compares: a depthwise convolution over 8 channels reads 8, not 1."""
    weights = {"full": np.zeros((8, 3, 3, 3), np.float32), "depthwise": np.zeros((8, 1, 3, 3), np.float32)}
    nodes = [helper.make_node("Conv", ["x", "full"], ["a"], name="full"),
             helper.make_node("Conv", ["a", "depthwise"], ["b"], name="depthwise", group=8)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    view = Graph(graph)
    assert [input_channels(view, n) for n in graph.node] == [3, 8]


def test_percentile_ranges_drop_only_the_rare_ends():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(0, 1, 1_000_000), [-400.0, 900.0]])  # two outliers
    low, high = values.min(), values.max()
    counts = np.histogram(values, 2048, (low, high))[0]
    cut = percentile_range(counts, low, high, keep=99.99)
    bin_width = (high - low) / 2048
    # About 50 values lie beyond each true 0.005% quantile (about +-4.06); the cuts land at the
    # outer edge of the bins holding them.
    assert -4.06 - bin_width <= cut.low <= -3.9 and 3.9 <= cut.high <= 4.06 + bin_width
    assert percentile_range(counts, low, high, keep=100.0) == Range(low, high)


def softmax_per_anchor(logits: np.ndarray, classes_plus_one: int) -> np.ndarray:
    n, channels, h, w = logits.shape
    per_anchor = logits.reshape(n, channels // classes_plus_one, classes_plus_one, h, w)  # -> (N, A, C+1, H, W)
    e = np.exp(per_anchor - per_anchor.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


def test_class_logits_relative_to_the_background_keep_every_probability():
    rng = np.random.default_rng(6)
    anchors, classes_plus_one = 3, 4
    weights = {"w": rng.normal(size=(anchors * classes_plus_one, 5, 1, 1)).astype(np.float32),
               "b": rng.normal(size=anchors * classes_plus_one).astype(np.float32)}
    conv = helper.make_node("Conv", ["x", "w", "b"], ["cls"], name="cls_conv")
    original = dict(weights)
    relative_to_background(weights, conv, classes_plus_one)
    x = rng.normal(size=(2, 5, 3, 3)).astype(np.float32)
    before = conv1x1(x, original["w"], original["b"])
    after = conv1x1(x, weights[conv.input[1]], weights[conv.input[2]])
    # (N, A * (C + 1), H, W) -> (N, A, C + 1, H, W): the background logit is exactly 0, the others moved.
    per_anchor = after.reshape(2, anchors, classes_plus_one, 3, 3)
    assert np.all(per_anchor[:, :, 0] == 0) and not np.allclose(after, before)
    np.testing.assert_allclose(softmax_per_anchor(after, classes_plus_one),
                               softmax_per_anchor(before, classes_plus_one), rtol=1e-5, atol=1e-6)
    assert conv.input[1:] == ["w_relative", "b_relative"] and np.array_equal(original["w"], weights["w"])


def test_class_logits_need_whole_anchors():
    weights = {"w": np.zeros((10, 2, 1, 1), np.float32)}
    with pytest.raises(UserError, match="cls_conv: 10 filters are not a multiple of 4"):
        relative_to_background(weights, helper.make_node("Conv", ["x", "w"], ["y"], name="cls_conv"), 4)


@pytest.mark.parametrize("threshold,num_classes", [(0.01, 5), (0.01, 80), (0.3, 1), (1e-6, 20)])
def test_a_class_clipped_to_the_floor_stays_below_the_threshold(threshold: float, num_classes: int):
    floor = logit_floor(threshold, num_classes)
    # Probability of a class at the floor: at most e^floor (the background's term is e^0 = 1).
    assert np.exp(floor) < threshold
    # All classes at the floor add at most FLOOR_SHARE * threshold to a denominator of at least 1.
    assert num_classes * np.exp(floor) == pytest.approx(FLOOR_SHARE * threshold)
    assert logit_floor(0.0, num_classes) == -np.inf


def stem(second_reads: int) -> Graph:
    """data (1, 3, 8, 8) -> Conv (3 -> second_reads) -> Relu -> Conv (second_reads -> 32) -> Conv (32 -> 32)."""
    rng = np.random.default_rng(7)
    weights = {"w0": rng.normal(size=(second_reads, 3, 3, 3)), "w1": rng.normal(size=(32, second_reads, 1, 1)),
               "w2": rng.normal(size=(32, 32, 1, 1))}
    nodes = [helper.make_node("Conv", ["data", "w0"], ["c0"], name="image_conv"),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="second"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="third")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("c2", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return Graph(graph)


def test_the_image_convolution_stays_fp32_only_before_other_narrow_ones():
    wide = stem(second_reads=32)
    convs = [n for n in wide.graph.node if n.op_type == "Conv"]
    assert convolutions_reached(wide, ["data"]) == {"image_conv"}
    assert narrow_convolutions(wide, convs, 16) == set(), "followed by INT8 convolutions only: INT8"
    narrow = stem(second_reads=8)
    convs = [n for n in narrow.graph.node if n.op_type == "Conv"]
    assert narrow_convolutions(narrow, convs, 16) == {"image_conv", "second"}
    assert narrow_convolutions(narrow, convs, 4) == set() == narrow_convolutions(narrow, convs, 0)
