"""Models made by SageMaker's built-in Object Detection algorithm, as their owners have them.

Their ``model_algo_1-symbol.json`` is the *training* graph of MXNet's example/ssd (a body, per
feature map ``<name>_loc_pred_conv``, ``<name>_cls_pred_conv`` and ``<name>_anchors``, merged as
``multibox_loc_pred``, ``multibox_cls_pred`` (B, C+1, N) and ``multibox_anchors`` (1, N, 4)), with a
training tail (``multibox_target``, ``cls_prob``, ``loc_loss``, ``cls_label``) and ``detection``
(MultiBoxDetection) -> ``det_out``. Bound as it is, it asks for a ``label`` input. The inference
graph is rebuilt from the saved graph's own parts: a softmax over the class axis of
``multibox_cls_pred``, then MultiBoxDetection with the settings of the saved ``detection`` node,
as AWS's own deployment samples do. In front of it the input our graphs take: (B, 3, S, S) uint8
RGB, cast to float32; for ``vgg-16`` the mean pixel is subtracted (below), for ``resnet-50`` not
(its ``bn_data`` normalizes raw pixels).

Whether the built-in subtracts the mean pixel for ``vgg-16`` is not documented. The example's
data iterator subtracts (123.68, 116.779, 103.939) outside the graph, and the ImageNet VGG-16
weights the built-in starts from expect it, so that is the default here; ``SSD_BUILTIN_MEAN_PIXELS``
(``R,G,B``, e.g. ``0,0,0``) overrides it for hosts, ``--mean-pixels`` for the tools.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError

LOG = logging.getLogger(__name__)

# The parts of the built-in's graph the inference graph is made of.
CLS_PRED, LOC_PRED, ANCHORS, DETECTION = "multibox_cls_pred", "multibox_loc_pred", "multibox_anchors", "detection"
OUR_DETECTION = "builtin_detection"  # the detection node of the graph built here
ANCHORS_PARAM = "builtin_anchors"  # an imported model's anchors, computed once at its image_shape
VGG_MEAN_PIXELS = (123.68, 116.779, 103.939)
MEAN_PIXELS_VAR = "SSD_BUILTIN_MEAN_PIXELS"
IMAGE_SHAPE_VAR = "SSD_BUILTIN_IMAGE_SHAPE"
# hyperparams.json entry of an imported model (JSON: where it came from and how it is fed).
IMPORTED_KEY = "imported_from_builtin"
# MultiBoxDetection's settings, as the saved node spells them, and their defaults.
DETECTION_DEFAULTS = {"nms_threshold": "0.5", "nms_topk": "-1", "force_suppress": "False",
                      "variances": "(0.1, 0.1, 0.2, 0.2)", "threshold": "0.01", "clip": "True",
                      "background_id": "0"}


@dataclass(frozen=True)
class BuiltinGraph:
    """What a built-in artifact's graph says about itself."""
    base_network: str  # resnet-50 or vgg-16
    num_classes: int  # from the class predictor's reshape: (0, -1, num_classes + 1)
    detection: dict[str, str]  # the saved detection node's MultiBoxDetection settings

    def describe(self, image_shape: int | None) -> str:
        return (f"built-in model: {self.base_network}, {self.num_classes} classes"
                + (f", {image_shape}" if image_shape else ""))


def _nodes(graph: Mapping[str, Any]) -> dict[str, dict]:
    return {node["name"]: node for node in graph.get("nodes", [])}


def is_builtin(graph: Mapping[str, Any]) -> bool:
    """Whether a symbol's JSON is the built-in algorithm's graph (its training graph, or the
    deploy graph MXNet's example makes of it), not ours: an imported model's graph holds the
    same parts, behind our input and with our detection node."""
    nodes = _nodes(graph)
    return all(name in nodes for name in (CLS_PRED, LOC_PRED, ANCHORS)) and OUR_DETECTION not in nodes


def _attrs(node: Mapping[str, Any]) -> dict[str, str]:
    # MXNet 1.3 saved "attrs"; older files "attr" or "param".
    return dict(node.get("attrs") or node.get("attr") or node.get("param") or {})


def read_graph(symbol_file: Path) -> BuiltinGraph:
    """Describes a built-in artifact's graph; a UserError names the file and what is missing."""
    try:
        graph = json.loads(symbol_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{symbol_file} is not a readable MXNet symbol file: {exc}") from None
    nodes = _nodes(graph)
    missing = [name for name in (CLS_PRED, LOC_PRED, ANCHORS) if name not in nodes]
    if missing:
        raise UserError(f"{symbol_file} is not a graph of the built-in algorithm: it has no {', '.join(missing)}")
    if "bn_data" in nodes or any(name.startswith("stage1_unit1_") for name in nodes):
        base = "resnet-50"
    elif "relu4_3" in nodes and "relu7" in nodes:
        base = "vgg-16"
    else:
        raise UserError(f"{symbol_file}: a built-in graph whose base network is neither resnet-50 (bn_data, "
                        "stage1_unit1_*) nor vgg-16 (relu4_3, relu7)")
    return BuiltinGraph(base, _num_classes(graph, symbol_file), _detection(nodes))


def class_reshape(graph: Mapping[str, Any]) -> dict:
    """The node (in graph itself) feeding multibox_cls_pred's transpose: a Reshape to (0, -1, C + 1)."""
    return graph["nodes"][_nodes(graph)[CLS_PRED]["inputs"][0][0]]


def prior_anchors(graph: Mapping[str, Any], size: int) -> Any:
    """The anchors of the graph's MultiBoxPrior layers for size x size inputs -> (N, 4) numpy
    corners. MultiBoxPrior reads only the feature maps' shapes, so the weights need no values."""
    import mxnet as mx

    anchors = mx.sym.load_json(json.dumps(graph)).get_internals()[f"{ANCHORS}_output"]
    executor = anchors.simple_bind(mx.cpu(), grad_req="null", data=(1, 3, size, size))
    for array in executor.arg_arrays + executor.aux_arrays:
        array[:] = 0
    return executor.forward(is_train=False)[0].asnumpy().reshape(-1, 4)  # (1, N, 4) -> (N, 4)


def _num_classes(graph: Mapping[str, Any], symbol_file: Path) -> int:
    """From the Reshape feeding multibox_cls_pred: shape (0, -1, num_classes + 1)."""
    reshape = class_reshape(graph)
    shape = _attrs(reshape).get("shape", "")
    try:
        last = int(shape.strip("()[] ").split(",")[-1])
    except ValueError:
        raise UserError(f"{symbol_file}: the class predictions' reshape {reshape.get('name')!r} has shape "
                        f"{shape!r}, not (0, -1, classes + 1)") from None
    if reshape.get("op") != "Reshape" or last < 2:
        raise UserError(f"{symbol_file}: {CLS_PRED} is not fed by a reshape to (0, -1, classes + 1)")
    return last - 1


def _detection(nodes: Mapping[str, dict]) -> dict[str, str]:
    """The saved detection node's settings (the defaults of MultiBoxDetection where it has none)."""
    node = nodes.get(DETECTION)
    saved = _attrs(node) if node is not None and "MultiBoxDetection" in node.get("op", "") else {}
    if node is None:
        LOG.warning("the built-in graph has no %r node: MultiBoxDetection with the built-in's defaults "
                    "(nms_threshold 0.45, nms_topk 400)", DETECTION)
        saved = {"nms_threshold": "0.45", "nms_topk": "400"}
    return {key: saved.get(key, default) for key, default in DETECTION_DEFAULTS.items()}


def mean_pixels_of(base_network: str, given: str | None = None, environ: Mapping[str, str] | None = None) \
        -> tuple[float, float, float]:
    """The RGB mean subtracted before the graph: given (``R,G,B``), else $SSD_BUILTIN_MEAN_PIXELS,
    else VGG's for vgg-16 and none for resnet-50."""
    env = os.environ if environ is None else environ
    text = given if given is not None else env.get(MEAN_PIXELS_VAR, "").strip() or None
    if text is None:
        return VGG_MEAN_PIXELS if base_network == "vgg-16" else (0.0, 0.0, 0.0)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        source = "--mean-pixels" if given is not None else MEAN_PIXELS_VAR
        raise UserError(f"{source}={text!r}: give three numbers R,G,B from 0 to 255, e.g. 123.68,116.779,103.939")
    return values  # type: ignore[return-value]


def image_shape_setting(model_dir: Path, environ: Mapping[str, str] | None = None) -> int:
    """The image_shape of a built-in model that came without hyperparams.json: $SSD_BUILTIN_IMAGE_SHAPE."""
    env = os.environ if environ is None else environ
    text = env.get(IMAGE_SHAPE_VAR, "").strip()
    if not text:
        raise UserError(f"{model_dir} holds a model of the built-in algorithm without hyperparams.json, which gives "
                        f"its image_shape: put the job's hyperparams.json beside it, or give the size with "
                        f"--image-shape S (tools) or {IMAGE_SHAPE_VAR}=S (serve)")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 64 <= value <= 2048:
        raise UserError(f"environment variable {IMAGE_SHAPE_VAR}={text!r} must be a whole number from 64 to 2048")
    return value


def inference_symbol(symbol_file: Path, means: Sequence[float], fixed_anchors: bool = False) -> Any:
    """The inference graph of a built-in artifact: data (B, 3, S, S) uint8 -> (B, N, 6) rows
    [class_id, score, xmin, ymin, xmax, ymax], normalized, -1 rows suppressed. fixed_anchors: the
    anchors come from a parameter (ANCHORS_PARAM) instead of the MultiBoxPrior layers, as in our
    graphs (ONNX has no MultiBoxPrior)."""
    import mxnet as mx

    described = read_graph(symbol_file)
    internals = mx.sym.load(str(symbol_file)).get_internals()
    cls_pred = internals[f"{CLS_PRED}_output"]  # (B, C+1, N)
    loc_pred = internals[f"{LOC_PRED}_output"]  # (B, 4N)
    anchors = mx.sym.var(ANCHORS_PARAM) if fixed_anchors else internals[f"{ANCHORS}_output"]  # (1, N, 4)
    settings = described.detection
    detections = mx.sym.contrib.MultiBoxDetection(
        mx.sym.softmax(cls_pred, axis=1), loc_pred, anchors, name=OUR_DETECTION,
        nms_threshold=float(settings["nms_threshold"]), nms_topk=int(float(settings["nms_topk"])),
        force_suppress=settings["force_suppress"].lower() in ("true", "1"),
        variances=tuple(float(v) for v in settings["variances"].strip("()[] ").split(",")),
        threshold=float(settings["threshold"]), clip=settings["clip"].lower() in ("true", "1"),
        background_id=int(float(settings["background_id"])))
    pixels = mx.sym.var("data")
    scaled = mx.sym.cast(pixels, dtype="float32", name="builtin_cast")
    if any(means):
        # A constant (1, 3, 1, 1) in the graph, so the file needs no extra parameter.
        mean = mx.sym.concat(*[mx.sym.full((1, 1, 1, 1), float(m), dtype="float32") for m in means], dim=1)
        scaled = mx.sym.broadcast_sub(scaled, mean, name="builtin_mean_sub")
    return detections(data=scaled)


def import_model(model_dir: Path, output: Path, class_names: Sequence[str] | None = None,
                 image_shape: int | None = None, mean_pixels: str | None = None) -> dict[str, Any]:
    """Writes a built-in model as an artifact of ours (the inference graph, hyperparams.json,
    classes.json); returns what was done. The detections are the built-in model's."""
    import mxnet as mx

    from . import artifact

    model_dir = artifact.require_folder(Path(model_dir))
    if not artifact.is_builtin(model_dir):
        raise UserError(f"{model_dir} does not hold a model of the built-in algorithm (no {CLS_PRED}, "
                        f"{LOC_PRED} and {ANCHORS} in {artifact.SYMBOL_FILE}); models of this algorithm need no import")
    if Path(output).resolve() == model_dir.resolve():
        raise UserError(f"--output {output} is the model folder itself; write the imported model to another folder")
    graph = read_graph(model_dir / artifact.SYMBOL_FILE)
    size = artifact.read_image_shape(model_dir, image_shape)
    pixels = mean_pixels_of(graph.base_network, mean_pixels)
    names = list(class_names or [])
    if names and len(names) != graph.num_classes:
        raise UserError(f"--class-names gives {len(names)} names but the model has {graph.num_classes} classes")
    hyperparameters = artifact.read_hyperparameters(model_dir) if (model_dir / artifact.HYPERPARAMS_FILE).is_file() \
        else {}
    block = _with_fixed_anchors(model_dir, size, pixels)
    block.hybridize(static_alloc=True, static_shape=True)
    block(mx.nd.zeros((1, 3, size, size), dtype="uint8"))  # export needs one forward
    record = {"base_network": graph.base_network, "num_classes": graph.num_classes, "image_shape": size,
              "mean_pixels": list(pixels), "source_model": str(model_dir)}
    hyperparameters.update(base_network=graph.base_network, num_classes=str(graph.num_classes),
                           image_shape=str(size), nms_threshold=graph.detection["nms_threshold"],
                           nms_topk=str(int(float(graph.detection["nms_topk"]))), **{IMPORTED_KEY: json.dumps(record)})
    artifact.write(Path(output), block, hyperparameters, {i: name for i, name in enumerate(names)})
    LOG.info("imported %s -> %s", graph.describe(size), output)
    return {"output": str(output), **record, "class_names": names}


def _with_fixed_anchors(model_dir: Path, size: int, means: Sequence[float]) -> Any:
    """The inference graph with its anchors at size computed once and kept as a parameter."""
    import warnings

    import mxnet as mx

    from . import artifact

    symbol_file = model_dir / artifact.SYMBOL_FILE
    dynamic = artifact.load_block(model_dir, mx.cpu(), inference_symbol(symbol_file, means), size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot decide type")
        fixed = mx.gluon.SymbolBlock(inference_symbol(symbol_file, means, fixed_anchors=True), mx.sym.var("data"))
    values = {name: param.data() for name, param in dynamic.collect_params().items()}
    anchors = prior_anchors(json.loads(mx.sym.load(str(symbol_file)).tojson()), size)  # (N, 4)
    values[ANCHORS_PARAM] = mx.nd.array(anchors.reshape(1, -1, 4))  # (N, 4) -> (1, N, 4)
    # MXNet runs a fix_gamma BatchNorm (bn_data) with gamma 1 whatever is stored, and weight decay
    # moves the stored value during training; ONNX exporters read the stored one: store 1.
    for name in _fixed_gammas(symbol_file):
        if name in values:
            values[name] = mx.nd.ones_like(values[name])
    fixed.collect_params().load_dict(values, ctx=mx.cpu(), ignore_extra=True)
    return fixed


def _fixed_gammas(symbol_file: Path) -> list[str]:
    """The gamma parameters of the graph's BatchNorm layers with fix_gamma (MXNet's default)."""
    graph = json.loads(symbol_file.read_text())
    nodes = graph["nodes"]
    found = []
    for node in nodes:
        if node.get("op") == "BatchNorm" and _attrs(node).get("fix_gamma", "True").lower() in ("true", "1"):
            gamma = nodes[node["inputs"][1][0]]
            found.append(gamma["name"])
    return found
