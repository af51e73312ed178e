"""quantize's rewrite of the class predictors' outputs, on graph JSON made by hand."""
import pytest

from ssd_detector.errors import UserError
from ssd_detector.model.quantize import INT32_MAX, widen_class_outputs


def node(op: str, name: str, *inputs: int, **attrs: str) -> dict:
    return {"op": op, "name": name, "attrs": attrs, "inputs": [[i, k, 0] for i, k in
                                                               ((x, 0) if isinstance(x, int) else x for x in inputs)]}


def graph(after_conv: str = "transpose") -> dict:
    nodes = [node("null", "data"), node("null", "ssd_class_conv0_weight"), node("null", "ssd_box_conv0_weight"),
             node("_sg_mkldnn_conv", "q_conv_1", 0, 1, quantized="true"),
             node("_contrib_requantize", "requantize_q_conv_1", (3, 0), (3, 1), (3, 2)),
             node("_contrib_dequantize", "q_conv_1_dequantize", (4, 0), (4, 1), (4, 2)),
             node(after_conv, "ssd_transpose0", 5, axes="(0, 2, 3, 1)"),
             node("Flatten", "ssd_flatten0", 6),
             node("_sg_mkldnn_conv", "q_conv_2", 0, 2, quantized="true", min_calib_range="-1", max_calib_range="1"),
             node("_contrib_dequantize", "q_conv_2_dequantize", (8, 0), (8, 1), (8, 2)),
             node("Concat", "ssd_concat0", 7, 9, dim="1")]
    return {"nodes": nodes, "arg_nodes": [0, 1, 2], "heads": [[10, 0, 0]], "node_row_ptr": list(range(12))}


def test_a_class_predictor_gets_its_int32_output_cast_and_scaled():
    g = graph()
    assert widen_class_outputs(g, {"ssd_class_conv0_weight"}) == 1
    nodes = g["nodes"]
    ops = [n["op"] for n in nodes]
    assert "_contrib_requantize" not in ops and ops.count("_contrib_dequantize") == 1  # the box head's stays
    by_name = {n["name"]: i for i, n in enumerate(nodes)}
    transpose = nodes[by_name["ssd_transpose0"]]
    assert transpose["inputs"] == [[by_name["q_conv_1"], 0, 0]] and transpose["attrs"]["axes"] == "(0, 2, 3, 1)"
    cast = nodes[by_name["q_conv_1_float"]]
    assert cast["op"] == "Cast" and cast["attrs"]["dtype"] == "float32"
    assert cast["inputs"] == [[by_name["ssd_transpose0"], 0, 0]]
    scale = nodes[by_name["q_conv_1_scale"]]
    assert scale["inputs"] == [[by_name["q_conv_1"], 2, 0]] and float(scale["attrs"]["scalar"]) == INT32_MAX
    logits = nodes[by_name["q_conv_1_logits"]]
    assert logits["op"] == "broadcast_mul"
    assert logits["inputs"] == [[by_name["q_conv_1_float"], 0, 0], [by_name["q_conv_1_scale_4d"], 0, 0]]
    assert nodes[by_name["ssd_flatten0"]]["inputs"] == [[by_name["q_conv_1_logits"], 0, 0]]
    for index, n in enumerate(nodes):  # still in topological order, references in range
        assert all(i < index for i, _, _ in n["inputs"]), n["name"]
    assert g["heads"] == [[by_name["ssd_concat0"], 0, 0]] and g["arg_nodes"] == [0, 1, 2]
    assert "node_row_ptr" not in g


def test_an_unexpected_layer_after_a_class_predictor_is_named():
    with pytest.raises(UserError, match="expected transpose after q_conv_1_dequantize, found \\['Reshape'\\]"):
        widen_class_outputs(graph(after_conv="Reshape"), {"ssd_class_conv0_weight"})


def test_a_calibrated_class_predictor_is_refused():
    with pytest.raises(UserError, match="q_conv_2: expected _contrib_requantize"):
        widen_class_outputs(graph(), {"ssd_box_conv0_weight"})
