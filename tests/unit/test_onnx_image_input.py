"""The image's normalization folded into the first INT8 convolution (onnx_image_input): the
folded convolution on the raw pixels computes what the original computes on the normalized image
padded with the zero point's pixels instead of the mean colour, and graphs of another shape are
left alone."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from ssd_detector.model.onnx_image_input import fold_normalization  # noqa: E402
from ssd_detector.model.onnx_int8 import Graph  # noqa: E402

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def normalized_stem(scale_op: str = "Div", cast_to: int = onnx.TensorProto.FLOAT, group: int = 1,
                    mean_shape: tuple[int, ...] = (1, 3, 1, 1), input_type: int = onnx.TensorProto.UINT8
                    ) -> tuple[Graph, dict]:
    """data uint8 (2, 3, 9, 9) -> Cast -> Sub mean -> Div std (or Mul 1 / std) -> Conv 3x3, stride 2, pad 1."""
    rng = np.random.default_rng(5)
    weights = {"mean": MEAN.reshape(mean_shape).astype(np.float32),
               "scale": (STD if scale_op == "Div" else 1 / STD).reshape(1, 3, 1, 1).astype(np.float32),
               "w": rng.normal(size=(6, 3 // group, 3, 3)).astype(np.float32),
               "b": rng.normal(size=6).astype(np.float32)}
    nodes = [helper.make_node("Cast", ["data"], ["f"], name="cast", to=cast_to),
             helper.make_node("Sub", ["f", "mean"], ["centred"], name="sub"),
             helper.make_node(scale_op, ["centred", "scale"], ["normalized"], name="scale"),
             helper.make_node("Conv", ["normalized", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1], group=group)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("data", input_type, [2, 3, 9, 9])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return Graph(graph), weights


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    return mx.nd.Convolution(mx.nd.array(x), mx.nd.array(w), mx.nd.array(b), kernel=(3, 3), stride=(2, 2),
                             pad=(pad, pad), num_filter=len(w)).asnumpy()


@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_the_folded_convolution_reads_the_pixels_and_pads_with_the_zero_point(scale_op: str):
    view, weights = normalized_stem(scale_op)
    image = fold_normalization(view, [n for n in view.graph.node if n.op_type == "Conv"])
    assert image is not None and (image.name, image.conv, image.zero) == ("data", "conv", 114)
    assert [n.op_type for n in view.graph.node] == ["Conv"] and view.graph.node[0].input[0] == "data"
    scale, zero = image.range().scale_zero()
    assert (scale, zero) == (np.float32(1.0), np.uint8(114)), "the pixels are the uint8 input as they are"

    pixels = np.random.default_rng(6).integers(0, 256, (2, 3, 9, 9)).astype(np.float64)
    folded = view.graph.node[0]
    got = conv(pixels - image.zero, view.weights[folded.input[1]], view.weights[folded.input[2]], pad=1)
    # The original, on the image padded with the zero point's pixels rather than the mean colour.
    padded = np.pad(pixels, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=image.zero)
    want = conv((padded - MEAN.reshape(1, 3, 1, 1)) / STD.reshape(1, 3, 1, 1), weights["w"], weights["b"], pad=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Away from the padding it is the original itself.
    original = conv((pixels - MEAN.reshape(1, 3, 1, 1)) / STD.reshape(1, 3, 1, 1), weights["w"], weights["b"], pad=1)
    np.testing.assert_allclose(got[:, :, 1:-1, 1:-1], original[:, :, 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[:, :, 0], original[:, :, 0], atol=1e-3), "the padded border differs"


@pytest.mark.parametrize("change", [{"cast_to": onnx.TensorProto.DOUBLE}, {"group": 3}, {"mean_shape": (3, 1)},
                                    {"input_type": onnx.TensorProto.FLOAT}])
def test_other_graphs_are_left_alone(change: dict):
    view, _ = normalized_stem(**change)
    before = [n.op_type for n in view.graph.node]
    assert fold_normalization(view, [n for n in view.graph.node if n.op_type == "Conv"]) is None
    assert [n.op_type for n in view.graph.node] == before


def test_a_convolution_that_stays_fp32_keeps_its_normalization():
    view, _ = normalized_stem()
    assert fold_normalization(view, []) is None
    assert len(view.graph.node) == 4
