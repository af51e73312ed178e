"""Activation ranges of an INT8 ONNX file, measured with MXNet on the user's images through the
artifact's own layer outputs (the exporter gives the ONNX tensors the same names).

``percentile`` (the default) drops the rarest values at each end: a range that holds 99.99% of
the values, found in a 2,048-bin histogram over the naive range in a second pass. A single outlier
then no longer stretches the 255 steps of a uint8 activation; what lies beyond is clipped. On
`make bench-infer`'s mobilenet-1.0@300 it kept the INT8 file's mAP at FP32's (+0.003) where
``naive`` lost 0.014, and both stayed within 0.01 on mobilenet-0.25@256 (docs/experiments.md).
``naive`` takes the minimum and maximum over all images (``quantize``'s default).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mxnet as mx
import numpy as np

from ..errors import UserError
from . import artifact
from .quantize import CALIBRATION_BATCH

ACTIVATION_LEVELS = 255  # uint8 activations
CALIBRATIONS = ("naive", "percentile")
DEFAULT_CALIBRATION = "percentile"
PERCENTILE = 99.99  # share of the values the percentile range keeps
HISTOGRAM_BINS = 2048


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    def scale_zero(self) -> tuple[np.float32, np.uint8]:
        """uint8 scale and zero point of a range widened to hold 0 (0 is then exact)."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = (high - low) / ACTIVATION_LEVELS if high > low else 1.0
        zero = int(np.clip(round(-low / scale), 0, ACTIVATION_LEVELS))
        return np.float32(scale), np.uint8(zero)


def percentile_range(counts: np.ndarray, low: float, high: float, keep: float = PERCENTILE) -> Range:
    """The range holding keep% of a histogram's values (counts over equal bins from low to high),
    as much cut off at each end, each cut at the outer edge of the bin it falls in."""
    edges = np.linspace(low, high, len(counts) + 1)
    cumulative = np.cumsum(counts) / max(counts.sum(), 1)
    tail = (1 - keep / 100) / 2
    first = int(np.searchsorted(cumulative, tail, side="right"))  # bins wholly in the low tail
    last = int(np.searchsorted(cumulative, 1 - tail, side="left"))  # the bin holding the high cut
    return Range(float(edges[first]), float(edges[min(last + 1, len(counts))]))


def layer_outputs(model_dir: Path, symbol: mx.sym.Symbol, names: list[str]) -> mx.gluon.SymbolBlock:
    internals = symbol.get_internals()
    available = set(internals.list_outputs())
    missing = [n for n in names if f"{n}_output" not in available]
    if missing:
        raise UserError(f"the ONNX tensors {missing[:3]} have no layer of the same name in {model_dir}; "
                        "export-onnx --int8 needs the graph export-onnx itself wrote")
    group = mx.sym.Group([internals[f"{n}_output"] for n in names])
    block = mx.gluon.SymbolBlock(group, mx.sym.var("data"))
    block.collect_params().load_dict(artifact.read_parameters(model_dir), ctx=mx.cpu(), ignore_extra=True,
                                     cast_dtype=True, dtype_source="saved")
    return block


def batches(block: mx.gluon.SymbolBlock, images: np.ndarray):
    for start in range(0, len(images), CALIBRATION_BATCH):
        outputs = block(mx.nd.array(images[start:start + CALIBRATION_BATCH], dtype="float32"))
        yield outputs if isinstance(outputs, (list, tuple)) else [outputs]


def extremes(block: mx.gluon.SymbolBlock, images: np.ndarray,
             values: Callable[[mx.nd.NDArray], mx.nd.NDArray] = lambda output: output) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and the largest of values(output) for each of block's outputs over images."""
    low, high = np.array(np.inf), np.array(-np.inf)  # broadcast to one per output on the first batch
    for outputs in batches(block, images):
        seen = [values(output) for output in outputs]
        low = np.minimum(low, [v.min().asscalar() for v in seen])
        high = np.maximum(high, [v.max().asscalar() for v in seen])
    return low, high


def activation_ranges(model_dir: Path, symbol: mx.sym.Symbol, names: list[str], images: np.ndarray,
                      calibration: str = DEFAULT_CALIBRATION) -> dict[str, Range]:
    """The range of each named layer output of the artifact's graph (symbol, as load_symbol reads
    it from model_dir) over images (K, 3, S, S), by the calibration method (of CALIBRATIONS, as
    onnx_int8.Int8Choices checks it)."""
    block = layer_outputs(model_dir, symbol, names)
    low, high = extremes(block, images)
    if calibration == "naive":
        return {name: Range(float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}
    counts = np.zeros((len(names), HISTOGRAM_BINS), np.int64)
    for outputs in batches(block, images):
        for i, output in enumerate(outputs):
            if high[i] > low[i]:
                counts[i] += np.histogram(output.asnumpy(), HISTOGRAM_BINS, (low[i], high[i]))[0]
    return {name: percentile_range(counts[i], float(low[i]), float(high[i])) if high[i] > low[i]
            else Range(float(low[i]), float(high[i])) for i, name in enumerate(names)}
