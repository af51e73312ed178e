"""A feature map's class and box predictors as one INT8 convolution (onnx_predictors): the merged
convolution, split and the box part mapped back, computes both predictors; the box range is
mapped onto the class range; predictors that differ are left apart."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from ssd_detector.model.onnx_calibration import Range  # noqa: E402
from ssd_detector.model.onnx_int8 import Graph  # noqa: E402
from ssd_detector.model.onnx_predictors import box_mapping, merge_predictors  # noqa: E402


def predictors(box_pads: int = 1) -> Graph:
    """x (1, 5, 6, 6) -> class predictor (2 anchors x 3 = 6 channels) and box predictor (2 x 4)."""
    rng = np.random.default_rng(8)
    weights = {"wc": rng.normal(size=(6, 5, 3, 3)), "bc": rng.normal(size=6),
               "wb": rng.normal(size=(8, 5, 3, 3)), "bb": rng.normal(size=8)}
    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["cls"], name="class", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["x", "wb", "bb"], ["box"], name="box", kernel_shape=[3, 3],
                              pads=[box_pads] * 4)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5, 6, 6])],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("cls", "box")],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return Graph(graph)


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return mx.nd.Convolution(mx.nd.array(x), mx.nd.array(w), mx.nd.array(b), kernel=(3, 3), pad=(1, 1),
                             num_filter=len(w)).asnumpy()


def test_the_merged_convolution_computes_both_predictors():
    view = predictors()
    original = {k: view.weights[k].copy() for k in ("wc", "bc", "wb", "bb")}
    classes, ranges = Range(-9.2, 5.0), {"cls": Range(-9.2, 5.0), "box": Range(-2.0, 3.0)}
    class_conv, box_conv = view.graph.node
    [merge] = merge_predictors(view, [class_conv], [box_conv], ranges)
    assert [n.name for n in view.graph.node] == ["class"], "the box predictor's node is gone"
    assert merge.alpha == pytest.approx(14.2 / 5.0) and merge.shift == pytest.approx(-9.2 + 2.0 * 14.2 / 5.0)
    assert ranges[merge.output] == classes
    assert [n.op_type for n in merge.after] == ["Split", "Mul", "Add"]
    split, unscale, unshift = merge.after
    assert split.output[0] == "cls" and unscale.input[0] == split.output[1] and unshift.input[0] == unscale.output[0]
    assert list(unshift.output) == ["box"]
    assert list(view.weights[split.input[1]]) == [6, 8]

    x = np.random.default_rng(9).normal(size=(1, 5, 6, 6))
    conv = view.graph.node[0]
    out = conv3x3(x, view.weights[conv.input[1]], view.weights[conv.input[2]])  # (1, 14, 6, 6)
    np.testing.assert_allclose(out[:, :6], conv3x3(x, original["wc"], original["bc"]), rtol=1e-4, atol=1e-4)
    boxes = out[:, 6:] * view.weights[unscale.input[1]] + view.weights[unshift.input[1]]
    np.testing.assert_allclose(boxes, conv3x3(x, original["wb"], original["bb"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("boxes", [Range(-2.0, 3.0), Range(-20.0, 1.0), Range(0.5, 40.0), Range(-7.0, -1.0)])
def test_the_box_range_lands_on_the_class_range(boxes: Range):
    """Mapped onto the class range (widened to 0, as its uint8 scale is), the box channels keep
    255 steps over their own range."""
    alpha, shift = box_mapping(Range(-9.2, 5.0), boxes)
    assert alpha * boxes.low + shift == pytest.approx(-9.2) and alpha * boxes.high + shift == pytest.approx(5.0)
    assert box_mapping(Range(0.5, 5.0), boxes)[0] == pytest.approx(5.0 / (boxes.high - boxes.low))
    assert box_mapping(Range(-9.2, 5.0), Range(1.5, 1.5)) == (1.0, 0.0)


def test_predictors_that_differ_stay_apart():
    view = predictors(box_pads=0)
    class_conv, box_conv = view.graph.node
    assert merge_predictors(view, [class_conv], [box_conv], {"cls": Range(-9, 5), "box": Range(-2, 3)}) == []
    assert len(view.graph.node) == 2
