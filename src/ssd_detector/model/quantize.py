"""INT8 artifacts: MXNet's oneDNN quantization of a trained model, calibrated on the user's images.

The result is a model folder like any other (the built-in's file names, ``hyperparams.json``,
``classes.json``), so ``predict``, ``serve`` and ``SymbolBlock.imports`` load it unchanged.
``hyperparams.json`` gains a ``quantization`` entry (JSON) saying what was done. oneDNN's INT8
kernels are CPU kernels: an INT8 model runs on CPU hosts only.

What stays FP32, and why (measured by `make bench-infer` on mobilenet-1.0@300):
- the input's cast and normalization (uint8 pixels -> mean/std floats: quantizing them only adds
  a rounding step before the first convolution);
- the heads' flatten, the last two concatenations, softmax and MultiBoxDetection: they only
  reshape, join or normalize the heads' outputs; INT8 there adds a quantize/dequantize pair per
  feature map and, for the joins, one INT8 scale across feature maps whose ranges differ by orders
  of magnitude;
- any layer named with ``--fp32-layers`` (a comma-separated list of layer names or parts of names).

The class predictors (every convolution on the path to MultiBoxDetection's class probabilities)
compute in INT8 but keep their 32-bit accumulators as output (``--class-heads int32-output``, the
default): their logits span hundreds on some anchors while the detections live in differences
of a tenth, so an INT8 output scale (``--class-heads int8``) cost 0.11 held-out mAP with naive
calibration. The graph MXNet makes requantizes those outputs to INT8 at run time; quantize
replaces each requantize/dequantize pair by the head's own transpose, a cast to float and the
convolution's int32 scale. ``--class-heads fp32`` keeps them FP32 (slower, same accuracy).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mxnet as mx
import numpy as np

from ..data.channel import IMAGE_SUFFIXES, files_under, raise_if_issues, read_channel
from ..data.images import ImageError, decode_rgb
from ..data.transforms import ValTransform
from ..errors import UserError
from . import artifact

LOG = logging.getLogger(__name__)

CALIBRATION_MODES = ("naive", "entropy")
GRANULARITIES = ("tensor-wise", "channel-wise")
CLASS_HEADS = ("int32-output", "fp32", "int8")
DEFAULT_CALIBRATION_IMAGES = 128
MAX_CALIBRATION_IMAGES = 10_000
CALIBRATION_BATCH = 8
# Operators kept FP32 in every quantized model (see the module's docstring).
FP32_OPERATORS = ("Cast", "broadcast_sub", "broadcast_div", "Flatten", "softmax", "_contrib_MultiBoxDetection")
DETECTION_OP = "_contrib_MultiBoxDetection"
INT32_MAX = 2 ** 31 - 1
NO_BOXES = np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class QuantizeOptions:
    calibration_mode: str = "naive"
    num_calibration: int = DEFAULT_CALIBRATION_IMAGES
    fp32_layers: tuple[str, ...] = field(default_factory=tuple)
    granularity: str = "tensor-wise"  # or "channel-wise": one weight scale per output channel
    class_heads: str = "int32-output"  # or "fp32", or "int8" (see the module's docstring)

    def check(self) -> None:
        if self.calibration_mode not in CALIBRATION_MODES:
            raise UserError(f"--calibration-mode {self.calibration_mode!r} is not one of "
                            + ", ".join(CALIBRATION_MODES))
        if self.granularity not in GRANULARITIES:
            raise UserError(f"--granularity {self.granularity!r} is not one of " + ", ".join(GRANULARITIES))
        if self.class_heads not in CLASS_HEADS:
            raise UserError(f"--class-heads {self.class_heads!r} is not one of " + ", ".join(CLASS_HEADS))
        if not 1 <= self.num_calibration <= MAX_CALIBRATION_IMAGES:
            raise UserError(f"--num-calibration {self.num_calibration} must be from 1 to {MAX_CALIBRATION_IMAGES}")


def calibration_images(path: Path, annotations: Path | None, count: int, image_size: int) -> np.ndarray:
    """count images spread evenly over the data at path (a .rec file or folder, a JSON channel
    with its annotations, or a folder of images) -> (K, 3, S, S) uint8, the validation transform.
    Problems in the data are reported as check-data reports them."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"calibration data {path} does not exist")
    plain_folder = path.is_dir() and annotations is None and not files_under(path, (".rec",))
    refs: list[tuple[str, Any]]
    if plain_folder:
        files = files_under(path, IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"calibration data {path}: no .rec file and no image ({', '.join(IMAGE_SUFFIXES)})")
        refs = [(str(f), f.read_bytes) for f in files]
    else:
        data = read_channel(path, annotations)
        raise_if_issues(data, f"calibration data {path}")
        refs = [(s.where, s.image.read) for s in data.samples]
        if not refs:
            raise UserError(f"calibration data {path} holds no image")
    chosen = np.unique(np.linspace(0, len(refs) - 1, min(count, len(refs))).round().astype(int))
    transform = ValTransform(image_size)
    images = []
    for index in chosen:
        where, read = refs[index]
        try:
            image = decode_rgb(read())
        except (ImageError, OSError) as exc:
            raise UserError(f"calibration data: {where}: {exc}") from None
        images.append(transform(image, NO_BOXES)[0])
    return np.stack(images)  # (K, 3, S, S)


def class_head_layers(nodes: list[dict]) -> list[str]:
    """The convolutions whose outputs reach MultiBoxDetection's class probabilities (its first
    input) through layers that only reshape, join or normalize: the class predictors."""
    heads = [n for n in nodes if n["op"] == DETECTION_OP]
    if not heads:
        return []
    found: list[str] = []
    pending = [heads[0]["inputs"][0][0]]
    seen: set[int] = set()
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        node = nodes[index]
        if node["op"] == "Convolution":
            found.append(node["name"])
        elif node["op"] != "null":
            pending.extend(i[0] for i in node["inputs"])
    return found


def fp32_layer_names(symbol: mx.sym.Symbol, patterns: Sequence[str], class_heads: bool = False) -> list[str]:
    """The graph's layers kept FP32: the fixed operators, the last-axis concatenations, the class
    predictors when class_heads, and the layers whose names contain one of patterns (each must
    match something)."""
    nodes = json.loads(symbol.tojson())["nodes"]
    names = [n["name"] for n in nodes if n["op"] in FP32_OPERATORS
             or (n["op"] == "Concat" and n.get("attrs", {}).get("dim") in ("1", "-1"))]
    if class_heads:
        names.extend(class_head_layers(nodes))
    for pattern in patterns:
        matched = [n["name"] for n in nodes if n["op"] != "null" and pattern in n["name"]]
        if not matched:
            raise UserError(f"--fp32-layers {pattern!r} matches no layer of the model")
        names.extend(matched)
    return sorted(set(names))


def class_head_weights(nodes: list[dict]) -> set[str]:
    """The class predictors' weight names: MXNet's graph passes rename layers, not parameters."""
    heads = set(class_head_layers(nodes))
    return {nodes[n["inputs"][1][0]]["name"] for n in nodes if n["name"] in heads}


class _Statistics:
    """quantize_net_v2's 'customize' collector: MXNet's own naive (min/max) or entropy statistics,
    for the layer outputs in wanted only. A quantized layer left without them keeps its int32
    output, which MXNet requantizes at run time."""

    def __init__(self, mode: str, wanted: set[str]) -> None:
        from mxnet.contrib import quantization as q

        self._mode = mode
        self._inner: Any = (q._LayerOutputMinMaxCollector("auto", include_layer=wanted) if mode == "naive"
                            else q._LayerHistogramCollector(include_layer=wanted))
        self._thresholds: dict[str, tuple[float, float]] | None = None

    def collect(self, name: Any, array: Any) -> None:
        self._inner.collect(name, array)

    @property
    def min_max_dict(self) -> dict[str, tuple[float, float]]:
        from mxnet.contrib import quantization as q

        if self._mode == "naive":
            return self._inner.min_max_dict
        if self._thresholds is None:  # computed once: MXNet empties the histograms as it goes
            self._thresholds = q._get_optimal_thresholds(self._inner.hist_dict, "auto")
        return self._thresholds


def calibrated_outputs(symbol: mx.sym.Symbol, skipped_weights: set[str]) -> set[str]:
    """The layer outputs of symbol's oneDNN graph (the one quantize_net_v2 calibrates) except the
    outputs of layers using one of skipped_weights."""
    backend = symbol.get_backend_symbol("MKLDNN_QUANTIZE")
    nodes = json.loads(backend.tojson())["nodes"]
    skipped = {f"{n['name']}_output" for n in nodes
               if n["op"] != "null" and any(nodes[i[0]]["name"] in skipped_weights for i in n["inputs"])}
    internal = set(backend.get_internals().list_outputs())
    return internal - set(backend.list_arguments()) - set(backend.list_auxiliary_states()) - skipped


def widen_class_outputs(graph: dict, weights: set[str]) -> int:
    """Rewrites graph (a quantized symbol's JSON) so that each quantized class predictor's int32
    output becomes float without an INT8 rounding:
        conv -> requantize -> dequantize -> transpose -> ...
    becomes
        conv -> transpose -> Cast(float32) -> * (conv's max / (2^31 - 1)) -> ...
    (the transpose first: it reorders oneDNN's blocked int32 layout, which Cast cannot read).
    -> how many predictors were rewritten."""
    nodes = graph["nodes"]
    users: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for source in node["inputs"]:
            users.setdefault(source[0], []).append(index)
    rewrites: dict[int, tuple[int, int, int]] = {}  # transpose -> (conv, requantize, dequantize)
    for conv, node in enumerate(nodes):
        if node["op"] != "_sg_mkldnn_conv" or node.get("attrs", {}).get("quantized") != "true" \
                or not any(nodes[i[0]]["name"] in weights for i in node["inputs"]):
            continue
        chain = [conv]
        for op in ("_contrib_requantize", "_contrib_dequantize", "transpose"):
            following = set(users.get(chain[-1], []))
            if len(following) != 1 or nodes[min(following)]["op"] != op:
                raise UserError(f"class predictor {node['name']}: expected {op} after {nodes[chain[-1]]['name']}, "
                                f"found {[nodes[i]['op'] for i in sorted(following)]}; quantize with "
                                "--class-heads fp32 or int8")
            chain.append(min(following))
        if "min_calib_range" in nodes[chain[1]].get("attrs", {}):
            raise UserError(f"class predictor {node['name']} was calibrated: its output would be INT8; quantize "
                            "with --class-heads fp32 or int8")
        rewrites[chain[3]] = (conv, chain[1], chain[2])
    dropped = {i for _, requantize, dequantize in rewrites.values() for i in (requantize, dequantize)}
    new_nodes: list[dict] = []
    moved: dict[int, int] = {}
    for index, node in enumerate(nodes):
        if index in dropped:
            continue
        if index not in rewrites:
            node = {**node, "inputs": [[moved[i[0]], i[1], i[2]] for i in node["inputs"]]}
        else:
            conv = moved[rewrites[index][0]]
            name = new_nodes[conv]["name"]
            new_nodes.append({**node, "inputs": [[conv, 0, 0]]})  # the transpose, now of int32
            new_nodes.append({"op": "Cast", "name": f"{name}_float", "attrs": {"dtype": "float32"},
                              "inputs": [[len(new_nodes) - 1, 0, 0]]})
            new_nodes.append({"op": "_div_scalar", "name": f"{name}_scale", "attrs": {"scalar": str(INT32_MAX)},
                              "inputs": [[conv, 2, 0]]})  # the int32 range's max: min is -max
            new_nodes.append({"op": "Reshape", "name": f"{name}_scale_4d", "attrs": {"shape": "(1, 1, 1, 1)"},
                              "inputs": [[len(new_nodes) - 1, 0, 0]]})
            node = {"op": "broadcast_mul", "name": f"{name}_logits", "attrs": {},
                    "inputs": [[len(new_nodes) - 3, 0, 0], [len(new_nodes) - 1, 0, 0]]}
        moved[index] = len(new_nodes)
        new_nodes.append(node)
    graph["nodes"] = new_nodes
    graph["arg_nodes"] = [i for i, n in enumerate(new_nodes) if n["op"] == "null"]
    graph["heads"] = [[moved[h[0]], h[1], h[2]] for h in graph["heads"]]
    graph.pop("node_row_ptr", None)  # MXNet recomputes it
    return len(rewrites)


def quantize(model_dir: Path, calibration: np.ndarray, output: Path, options: QuantizeOptions) -> dict[str, Any]:
    """Writes the INT8 model of model_dir into output, calibrated on calibration (K, 3, S, S)
    uint8; -> a summary of what was done (also recorded in output's hyperparams.json)."""
    from mxnet.contrib.quantization import quantize_net_v2

    options.check()
    model_dir = artifact.require_folder(Path(model_dir))
    artifact.refuse_builtin(model_dir, "quantize")
    hyperparameters = artifact.read_hyperparameters(model_dir)
    if artifact.QUANTIZATION_KEY in hyperparameters:
        raise UserError(f"{model_dir} is already quantized ({hyperparameters[artifact.QUANTIZATION_KEY]}); "
                        "quantize the FP32 model it was made from")
    if Path(output).resolve() == model_dir.resolve():
        raise UserError(f"--output {output} is the model folder itself; write the INT8 model to another folder")
    symbol = mx.sym.load(str(model_dir / artifact.SYMBOL_FILE))
    kept = fp32_layer_names(symbol, options.fp32_layers, class_heads=options.class_heads == "fp32")
    head_weights = class_head_weights(json.loads(symbol.tojson())["nodes"]) \
        if options.class_heads == "int32-output" else set()
    net = artifact.load_block(model_dir, mx.cpu())
    # Calibration batches: float32 pixels, as the graph's first layer casts uint8 to float32.
    batch = min(CALIBRATION_BATCH, len(calibration))
    iterator = mx.io.NDArrayIter(data=mx.nd.array(calibration.astype(np.float32)), batch_size=batch,
                                 last_batch_handle="discard")
    statistics = _Statistics(options.calibration_mode, calibrated_outputs(symbol, head_weights))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # quantize_net_v2 rebuilds a SymbolBlock whose input type it cannot name: harmless.
        warnings.simplefilter("ignore", UserWarning)
        try:
            quantized = quantize_net_v2(net, quantized_dtype="auto", quantize_mode="full",
                                        quantize_granularity=options.granularity, exclude_layers=kept,
                                        calib_data=iterator, calib_mode="customize", LayerOutputCollector=statistics,
                                        num_calib_examples=(len(calibration) // batch) * batch, ctx=mx.cpu(),
                                        logger=None)
        except mx.base.MXNetError as exc:
            raise UserError(f"MXNet could not quantize {model_dir}: {str(exc).splitlines()[0]}") from None
    one = mx.nd.array(calibration[:1], dtype="uint8")
    quantized.hybridize(static_alloc=True, static_shape=True)
    quantized(one)  # export needs one forward
    if head_weights:
        quantized = _with_wide_class_outputs(quantized, head_weights)
        quantized.hybridize(static_alloc=True, static_shape=True)
        quantized(one)
    record = {"dtype": "int8", "backend": "oneDNN (CPU)", "calibration_mode": options.calibration_mode,
              "granularity": options.granularity, "class_heads": options.class_heads,
              "calibration_images": int((len(calibration) // batch) * batch), "fp32_layers": kept,
              "source_model": str(model_dir)}
    artifact.write(Path(output), quantized,
                   {**hyperparameters, artifact.QUANTIZATION_KEY: json.dumps(record)},
                   artifact.read_class_names(model_dir))
    record["seconds"] = round(time.perf_counter() - start, 1)
    LOG.info("quantized %s -> %s in %.1f s (%s calibration, %d images; FP32: %s)", model_dir, output,
             record["seconds"], options.calibration_mode, record["calibration_images"], ", ".join(kept))
    return {"output": str(output), **record, "options": asdict(options)}


def _with_wide_class_outputs(quantized: mx.gluon.SymbolBlock, weights: set[str]) -> mx.gluon.SymbolBlock:
    """quantized with its class predictors' outputs widened (widen_class_outputs), reloaded."""
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "int8"
        quantized.export(str(prefix), 0)
        symbol_file = Path(f"{prefix}-symbol.json")
        graph = json.loads(symbol_file.read_text())
        LOG.info("class predictors with int32 outputs: %d", widen_class_outputs(graph, weights))
        symbol_file.write_text(json.dumps(graph))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the input's type is known at the first call
            return mx.gluon.SymbolBlock.imports(str(symbol_file), ["data"], f"{prefix}-0000.params", mx.cpu())
