"""An artifact as one ONNX file: the network through MXNet's exporter, then decoding, top-k and
non-maximum suppression as ONNX operators, so ONNX Runtime needs no code of ours.

MXNet's exporter has no translation for MultiBoxDetection, so the graph is cut at its inputs
(class probabilities, box offsets, anchors) and its work is rebuilt with the same rules:
per anchor the best foreground class, decoding with the graph's variances, clipping, the
``nms_topk`` best candidates, then greedy NMS per class (``force_suppress=False``) or across
classes. The file's contract:

- input ``data``: uint8 RGB, (batch, 3, S, S), batch dynamic; S is the artifact's image_shape;
- output ``detections``: (M, 6) float32 rows [class_id, score, xmin, ymin, xmax, ymax], corners
  normalized to [0, 1], sorted by image, then by score, best first; no -1 rows;
- output ``batch_index``: (M,) int64, the image of each row.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from ..errors import UserError
from . import artifact
from .onnx_int8 import Int8Choices

LOG = logging.getLogger(__name__)

DEFAULT_OPSET = 13
# MXNet 1.9.1's translations go up to opset 13; later opsets keep these operators' meaning.
MIN_OPSET = 13
DETECTION_OP = "_contrib_MultiBoxDetection"
# Operators of an INT8 graph (mxnet.contrib.quantization); the exporter has no translation for them.
QUANTIZED_MARKERS = ("quantize", "_sg_mkldnn", "_sg_onednn", "requantize", "dequantize")
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class DetectionRules:
    """MultiBoxDetection's attributes as the artifact's graph sets them."""

    threshold: float
    nms_threshold: float
    nms_topk: int
    variances: tuple[float, float, float, float]
    clip: bool
    force_suppress: bool

    @classmethod
    def from_attrs(cls, attrs: dict[str, str]) -> "DetectionRules":
        if int(float(attrs.get("background_id", "0"))) != 0:
            raise UserError(f"MultiBoxDetection with background_id={attrs['background_id']} is not supported "
                            "by export-onnx (class 0 must be the background)")
        variances = tuple(float(v) for v in attrs.get("variances", "(0.1, 0.1, 0.2, 0.2)").strip("()[] ").split(","))
        if len(variances) != 4:
            raise UserError(f"MultiBoxDetection variances {attrs.get('variances')!r}: expected 4 numbers")
        return cls(threshold=float(attrs.get("threshold", "0.01")),
                   nms_threshold=float(attrs.get("nms_threshold", "0.5")),
                   nms_topk=int(float(attrs.get("nms_topk", "-1"))),
                   variances=variances,  # type: ignore[arg-type]
                   clip=attrs.get("clip", "True").lower() in ("true", "1"),
                   force_suppress=attrs.get("force_suppress", "False").lower() in ("true", "1"))


def _check_opset(opset: int) -> None:
    from onnx.defs import onnx_opset_version

    highest = onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise UserError(f"--opset {opset}: this exporter writes opsets {MIN_OPSET} to {highest}")


def _graph_parts(symbol_json: dict, opset: int) -> tuple[dict, list[dict]]:
    """-> the detection node and the graph's nodes; refuses graphs export-onnx cannot translate."""
    nodes = symbol_json["nodes"]
    quantized = [n["name"] for n in nodes if n["op"] != "null" and any(m in n["op"] for m in QUANTIZED_MARKERS)]
    if quantized:
        raise UserError(f"the model is quantized (INT8 layers such as {quantized[0]!r}); ONNX export takes the "
                        "FP32 model it was made from")
    head = nodes[symbol_json["heads"][0][0]]
    if head["op"] != DETECTION_OP:
        raise UserError(f"the graph ends in {head['name']!r} ({head['op']}); export-onnx needs the detection "
                        f"graph of an SSD artifact, which ends in {DETECTION_OP}")
    supported = set(mx.onnx.get_operator_support(opset))
    missing = [(n["name"], n["op"]) for n in nodes
               if n["op"] not in ("null", DETECTION_OP) and n["op"] not in supported]
    if missing:
        name, op = missing[0]
        raise UserError(f"layer {name!r} ({op}) has no ONNX translation in MXNet's exporter"
                        + (f" (and {len(missing) - 1} more layers)" if len(missing) > 1 else ""))
    return head, nodes


def export_onnx(model_dir: Path, output: Path, opset: int = DEFAULT_OPSET, calibration: np.ndarray | None = None,
                choices: Int8Choices = Int8Choices()) -> dict[str, Any]:
    """Writes output from the artifact in model_dir; -> a summary (shapes, rules, opset).
    calibration: (K, 3, S, S) uint8 images: the file is INT8 (onnx_int8), calibrated on them, with
    the user's choices."""
    try:
        import onnx
    except ImportError:
        raise UserError("export-onnx needs the onnx package (pip install onnx; the image has it)") from None
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph  # export_model cannot choose the opset

    _check_opset(opset)
    model_dir = artifact.require_folder(Path(model_dir))
    artifact.refuse_builtin(model_dir, "export-onnx")
    size = artifact.read_image_shape(model_dir)
    symbol = mx.sym.load(str(model_dir / artifact.SYMBOL_FILE))
    head, nodes = _graph_parts(json.loads(symbol.tojson()), opset)
    rules = DetectionRules.from_attrs(head.get("attrs", {}))
    cls_input, box_input, anchor_input = (nodes[i[0]]["name"] for i in head["inputs"])
    params = {name.split(":", 1)[1]: value for name, value in mx.nd.load(str(model_dir / artifact.PARAMS_FILE)).items()}
    if anchor_input not in params:
        raise UserError(f"the anchors {anchor_input!r} of {head['name']!r} are not in {artifact.PARAMS_FILE}")
    anchors = params[anchor_input].asnumpy().reshape(-1, 4).astype(np.float32)  # (1, N, 4) -> (N, 4)
    children = symbol.get_children()
    core = mx.sym.Group([children[0], children[1]])
    _, out_shapes, _ = core.infer_shape(data=(1, 3, size, size))
    classes_plus_one = out_shapes[0][1]
    if out_shapes[0][2] != len(anchors) or out_shapes[1][1] != 4 * len(anchors):
        raise UserError(f"{cls_input} {out_shapes[0]} and {box_input} {out_shapes[1]} do not match "
                        f"{len(anchors)} anchors")
    graph = MXNetGraph().create_onnx_graph_proto(
        core, params, [(1, 3, size, size)], [onnx.TensorProto.UINT8], opset_version=opset, dynamic=True,
        dynamic_input_shapes=[(None, 3, size, size)])
    core_outputs = [o.name for o in graph.output]
    del graph.output[:]
    _weights_as_constants(graph)
    _append_detection(graph, core_outputs[0], core_outputs[1], anchors, classes_plus_one - 1, rules)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="ssd-detector")
    # The lowest IR version the opset allows: readable by the oldest ONNX Runtime that runs it.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    quantization = None
    if calibration is not None:
        from .onnx_int8 import DetectionFacts, quantize_graph

        quantization = quantize_graph(model, model_dir, calibration, DetectionFacts(classes_plus_one, rules.threshold),
                                      choices)
    doc = {"input": "data: uint8 RGB (batch, 3, S, S)", "outputs": "detections (M, 6) [class_id, score, xmin, "
           "ymin, xmax, ymax] normalized; batch_index (M,)", "image_shape": str(size)}
    if quantization:
        doc["quantization"] = json.dumps(quantization)
    onnx.helper.set_model_props(model, {**doc, "classes": json.dumps(artifact.read_class_names(model_dir))})
    onnx.checker.check_model(model, full_check=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(model.SerializeToString())
    summary = {"onnx": str(output), "opset": opset, "image_shape": size, "num_classes": classes_plus_one - 1,
               "anchors": len(anchors), "threshold": rules.threshold, "nms_threshold": rules.nms_threshold,
               "nms_topk": rules.nms_topk, "force_suppress": rules.force_suppress, "bytes": output.stat().st_size,
               **({"quantization": quantization} if quantization else {})}
    LOG.info("exported %s to %s (opset %d)", model_dir, output, opset)
    return summary


def _weights_as_constants(graph: Any) -> None:
    """MXNet's exporter lists every weight among the graph's inputs too, which lets a caller
    override it: ONNX Runtime then cannot treat weights as constants, so it neither folds
    BatchNorm into the convolutions nor fuses their activations (measured: 1.8x slower at batch 1,
    2.2x at batch 8 on mobilenet-1.0@300). The graph's inputs become the image alone."""
    weights = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)


def _append_detection(graph: Any, cls_prob: str, box_pred: str, anchors: np.ndarray, num_classes: int,
                      rules: DetectionRules) -> None:
    """Adds MultiBoxDetection's work after cls_prob (B, C + 1, N) and box_pred (B, N * 4)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = graph.node
    count = len(anchors)
    topk = count if rules.nms_topk <= 0 else min(rules.nms_topk, count)

    made: set[str] = set()

    def const(name: str, value: np.ndarray | np.generic) -> str:
        if name not in made:  # a name is one value: "two" is 2 wherever it is used
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name=f"det_c_{name}"))
            made.add(name)
        return f"det_c_{name}"

    def node(op: str, inputs: list[str], name: str, outputs: int = 1, **attrs: Any) -> list[str]:
        names = [f"det_{name}" if outputs == 1 else f"det_{name}_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op, inputs, names, name=f"det_{name}", **attrs))
        return names

    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    # Best foreground class per anchor and its probability.
    fg = node("Slice", [cls_prob, const("one", i64(1)), const("big", i64(2 ** 62)), const("axis1", i64(1))],
              "foreground")[0]  # (B, C, N)
    best_class = node("ArgMax", [fg], "best_class", axis=1, keepdims=1)[0]  # (B, 1, N)
    best = node("GatherElements", [fg, best_class], "best_score", axis=1)[0]  # (B, 1, N)
    flat = const("flat", i64(0, -1))
    best = node("Reshape", [best, flat], "best_flat")[0]  # (B, 1, N) -> (B, N)
    best_class = node("Reshape", [best_class, flat], "class_flat")[0]  # (B, 1, N) -> (B, N)
    # The nms_topk best candidates of each image; only they are decoded (the same arithmetic per
    # box as decoding every anchor, on nms_topk boxes instead of all of them).
    scores_k, index_k = node("TopK", [best, const("k", i64(topk))], "topk", outputs=2, axis=1)  # (B, K)
    index_k3 = node("Reshape", [index_k, const("col", i64(0, -1, 1))], "index_k3")[0]  # (B, K) -> (B, K, 1)
    index_k4 = node("Expand", [index_k3, const("wide4", i64(1, 1, 4))], "index_k4")[0]  # (B, K, 4)
    loc = node("Reshape", [box_pred, const("by4", i64(0, -1, 4))], "loc")[0]  # (B, N * 4) -> (B, N, 4)
    loc_k = node("GatherElements", [loc, index_k4], "loc_k", axis=1)[0]  # (B, K, 4)
    # Decoding: centre = offset * variance * anchor size + anchor centre; half size = exp(offset *
    # variance) * anchor size / 2. Per anchor: [variance * size (2), centre (2), size / 2 (2)].
    wh = anchors[:, 2:] - anchors[:, :2]  # (N, 2)
    centre = (anchors[:, 2:] + anchors[:, :2]) / 2
    vxy, vwh = np.array(rules.variances[:2], np.float32), np.array(rules.variances[2:], np.float32)
    table = np.concatenate([vxy * wh, centre, wh / 2], axis=1).astype(np.float32)  # (N, 6)
    anchor_k = node("Gather", [const("anchor_table", table), index_k], "anchor_k", axis=0)[0]  # (B, K, 6)
    axis2 = const("axis2", i64(2))

    def part(source: str, start: int, name: str) -> str:  # (B, K, *) -> (B, K, 2)
        return node("Slice", [source, const(f"at{start}", i64(start)), const(f"at{start + 2}", i64(start + 2)),
                              axis2], name)[0]

    cxy = node("Mul", [part(loc_k, 0, "loc_xy"), part(anchor_k, 0, "scale_xy")], "scaled_xy")[0]
    cxy = node("Add", [cxy, part(anchor_k, 2, "centre")], "centre_xy")[0]
    half = node("Mul", [part(loc_k, 2, "loc_wh"), const("var_wh", vwh)], "scaled_wh")[0]
    half = node("Exp", [half], "exp_wh")[0]
    half = node("Mul", [half, part(anchor_k, 4, "half_size")], "half_wh")[0]
    low = node("Sub", [cxy, half], "low")[0]
    high = node("Add", [cxy, half], "high")[0]
    boxes_k = node("Concat", [low, high], "corners", axis=2)[0]  # (B, K, 4)
    if rules.clip:
        boxes_k = node("Clip", [boxes_k, const("lo", np.float32(0)), const("hi", np.float32(1))], "clipped")[0]
    class_k = node("GatherElements", [best_class, index_k], "class_k", axis=1)[0]  # (B, K)
    row = const("row", i64(0, 1, -1))
    scores_row = node("Reshape", [scores_k, row], "scores_row")[0]  # (B, K) -> (B, 1, K)
    if rules.force_suppress:
        nms_scores = scores_row
    else:
        # (B, C, K): a candidate's score under its own class, -1 elsewhere (below any threshold).
        own = node("Equal", [node("Reshape", [class_k, row], "class_row")[0],
                             const("classes", np.arange(num_classes, dtype=np.int64).reshape(1, -1, 1))],
                   "own_class")[0]
        nms_scores = node("Where", [own, scores_row, const("minus_one", np.float32(-1))], "nms_scores")[0]
    selected = node("NonMaxSuppression", [boxes_k, nms_scores, const("max_out", i64(topk)),
                                          const("iou", np.array([rules.nms_threshold], np.float32)),
                                          const("score_min", np.array([rules.threshold], np.float32))],
                    "nms")[0]  # (M, 3) [image, class, candidate]
    picks = node("Gather", [selected, const("image_candidate", i64(0, 2))], "picks", axis=1)[0]  # (M, 2)
    score = node("GatherND", [scores_k, picks], "score")[0]  # (M,)
    klass = node("Cast", [node("GatherND", [class_k, picks], "class")[0]], "class_f", to=TensorProto.FLOAT)[0]
    box = node("GatherND", [boxes_k, picks], "box")[0]  # (M, 4)
    column = const("column", i64(-1, 1))
    score_col = node("Reshape", [score, column], "score_col")[0]  # (M,) -> (M, 1)
    rows = node("Concat", [node("Reshape", [klass, column], "class_col")[0], score_col, box], "rows", axis=1)[0]
    # Order: by image, then best score first (key = 2 * image - score, ascending).
    image = node("Gather", [selected, const("image_column", np.array(0, np.int64))], "image", axis=1)[0]  # (M,)
    # In float64: a float32 key would round away score differences of 1e-7 once the image index is added.
    key = node("Sub", [node("Mul", [node("Cast", [image], "image_d", to=TensorProto.DOUBLE)[0],
                                    const("two_d", np.float64(2))], "image_2")[0],
                       node("Cast", [score], "score_d", to=TensorProto.DOUBLE)[0]], "key")[0]
    order = node("TopK", [key, node("Shape", [key], "count")[0]], "order", outputs=2, axis=0, largest=0)[1]
    nodes.append(helper.make_node("Gather", [rows, order], ["detections"], name="det_detections", axis=0))
    nodes.append(helper.make_node("Gather", [image, order], ["batch_index"], name="det_batch_index", axis=0))
    graph.output.extend([helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["M", 6]),
                         helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["M"])])
