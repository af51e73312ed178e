"""INT8 artifacts: MXNet's oneDNN quantization of a trained model, calibrated on the user's images.

The result is a model folder like any other (the built-in's file names, ``hyperparams.json``,
``classes.json``), so ``predict``, ``serve`` and ``SymbolBlock.imports`` load it unchanged.
``hyperparams.json`` gains a ``quantization`` entry (JSON) saying what was done. oneDNN's INT8
kernels are CPU kernels: an INT8 model runs on CPU hosts only.

What stays FP32, and why (measured by `make bench-infer` on mobilenet-1.0@300):
- the class-prediction convolutions (every convolution on the path to MultiBoxDetection's class
  probabilities): in INT8 they cost 0.11 held-out mAP with naive calibration (0.337 -> 0.225),
  FP32 they cost none, while the box-offset convolutions lose nothing in INT8;
- the input's cast and normalization (uint8 pixels -> mean/std floats: quantizing them only adds
  a rounding step before the first convolution);
- the heads' flatten, the last two concatenations, softmax and MultiBoxDetection: they only
  reshape, join or normalize the heads' outputs; INT8 there adds a quantize/dequantize pair per
  feature map and, for the joins, one INT8 scale across feature maps whose ranges differ by orders
  of magnitude;
- any layer named with ``--fp32-layers`` (a comma-separated list of layer names or parts of names).
"""
from __future__ import annotations

import json
import logging
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
from ..inference import Predictor
from . import artifact

LOG = logging.getLogger(__name__)

CALIBRATION_MODES = ("naive", "entropy")
GRANULARITIES = ("tensor-wise", "channel-wise")
DEFAULT_CALIBRATION_IMAGES = 128
MAX_CALIBRATION_IMAGES = 10_000
CALIBRATION_BATCH = 8
# Operators kept FP32 in every quantized model (see the module's docstring).
FP32_OPERATORS = ("Cast", "broadcast_sub", "broadcast_div", "Flatten", "softmax", "_contrib_MultiBoxDetection")
DETECTION_OP = "_contrib_MultiBoxDetection"
NO_BOXES = np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class QuantizeOptions:
    calibration_mode: str = "naive"
    num_calibration: int = DEFAULT_CALIBRATION_IMAGES
    fp32_layers: tuple[str, ...] = field(default_factory=tuple)
    granularity: str = "tensor-wise"  # or "channel-wise": one weight scale per output channel
    class_heads_fp32: bool = True

    def check(self) -> None:
        if self.calibration_mode not in CALIBRATION_MODES:
            raise UserError(f"--calibration-mode {self.calibration_mode!r} is not one of "
                            + ", ".join(CALIBRATION_MODES))
        if self.granularity not in GRANULARITIES:
            raise UserError(f"--granularity {self.granularity!r} is not one of " + ", ".join(GRANULARITIES))
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


def fp32_layer_names(symbol: mx.sym.Symbol, patterns: Sequence[str], class_heads: bool = True) -> list[str]:
    """The graph's layers kept FP32: the fixed operators, the last-axis concatenations, the class
    predictors, and the layers whose names contain one of patterns (each must match something)."""
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


def quantize(model_dir: Path, calibration: np.ndarray, output: Path, options: QuantizeOptions) -> dict[str, Any]:
    """Writes the INT8 model of model_dir into output, calibrated on calibration (K, 3, S, S)
    uint8; -> a summary of what was done (also recorded in output's hyperparams.json)."""
    from mxnet.contrib.quantization import quantize_net_v2

    options.check()
    model_dir = artifact.require_folder(Path(model_dir))
    hyperparameters = artifact.read_hyperparameters(model_dir)
    if artifact.QUANTIZATION_KEY in hyperparameters:
        raise UserError(f"{model_dir} is already quantized ({hyperparameters[artifact.QUANTIZATION_KEY]}); "
                        "quantize the FP32 model it was made from")
    if Path(output).resolve() == model_dir.resolve():
        raise UserError(f"--output {output} is the model folder itself; write the INT8 model to another folder")
    symbol = mx.sym.load(str(model_dir / artifact.SYMBOL_FILE))
    kept = fp32_layer_names(symbol, options.fp32_layers, options.class_heads_fp32)
    net = Predictor(model_dir, mx.cpu()).net
    # Calibration batches: float32 pixels, as the graph's first layer casts uint8 to float32.
    batch = min(CALIBRATION_BATCH, len(calibration))
    iterator = mx.io.NDArrayIter(data=mx.nd.array(calibration.astype(np.float32)), batch_size=batch,
                                 last_batch_handle="discard")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # quantize_net_v2 rebuilds a SymbolBlock whose input type it cannot name: harmless.
        warnings.simplefilter("ignore", UserWarning)
        try:
            quantized = quantize_net_v2(net, quantized_dtype="auto", quantize_mode="full",
                                        quantize_granularity=options.granularity, exclude_layers=kept,
                                        calib_data=iterator, calib_mode=options.calibration_mode,
                                        num_calib_examples=(len(calibration) // batch) * batch, ctx=mx.cpu(),
                                        logger=None)
        except mx.base.MXNetError as exc:
            raise UserError(f"MXNet could not quantize {model_dir}: {str(exc).splitlines()[0]}") from None
    quantized.hybridize(static_alloc=True, static_shape=True)
    quantized(mx.nd.array(calibration[:1], dtype="uint8"))  # export needs one forward
    record = {"dtype": "int8", "backend": "oneDNN (CPU)", "calibration_mode": options.calibration_mode,
              "granularity": options.granularity,
              "calibration_images": int((len(calibration) // batch) * batch), "fp32_layers": kept,
              "source_model": str(model_dir)}
    artifact.write(Path(output), quantized,
                   {**hyperparameters, artifact.QUANTIZATION_KEY: json.dumps(record)},
                   artifact.read_class_names(model_dir))
    record["seconds"] = round(time.perf_counter() - start, 1)
    LOG.info("quantized %s -> %s in %.1f s (%s calibration, %d images; FP32: %s)", model_dir, output,
             record["seconds"], options.calibration_mode, record["calibration_images"], ", ".join(kept))
    return {"output": str(output), **record, "options": asdict(options)}
