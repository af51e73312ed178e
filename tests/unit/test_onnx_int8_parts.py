"""The INT8 ONNX rewrite's parts on small hand-made graphs: BatchNorm folding keeps the function,
a Relu goes only where the quantization clips for it, and the quantization steps themselves."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from ssd_detector.model.onnx_calibration import Range, percentile_range  # noqa: E402
from ssd_detector.model.onnx_int8 import Graph, _weight_int8, drop_relus, fold_batchnorms, input_channels  # noqa: E402


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
