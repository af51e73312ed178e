"""Running an exported model: image in, the built-in's detection rows out. No model code needed."""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon

from .data.transforms import ValTransform
from .model import artifact

LOG = logging.getLogger(__name__)
NO_BOXES = np.zeros((0, 4), np.float32)
# Graphs kept ready, one per batch size seen most recently (each holds its own activations).
MAX_BATCH_SHAPES = 4


class Predictor:
    """Loads ``model_algo_1-symbol.json`` + ``-0000.params`` and the image size from ``hyperparams.json``
    of an unpacked model folder; ``Predictor.load`` takes a model.tar.gz too."""

    @classmethod
    def load(cls, path: Path | str, ctx: mx.Context | None = None, extract_to: Path | None = None,
             image_shape: int | None = None, mean_pixels: str | None = None) -> "Predictor":
        """The model at path: an artifact folder, a model.tar.gz, or a folder holding one (unpacked
        to extract_to, default beside it). image_shape and mean_pixels ("R,G,B") apply to a model of
        the built-in algorithm (see model.builtin)."""
        return cls(artifact.locate(path, extract_to), ctx, image_shape, mean_pixels)

    def __init__(self, model_dir: Path | str, ctx: mx.Context | None = None, image_shape: int | None = None,
                 mean_pixels: str | None = None) -> None:
        self.model_dir = artifact.require_folder(Path(model_dir))
        self.ctx = ctx or mx.cpu()
        self.image_size = artifact.read_image_shape(self.model_dir, image_shape)
        self.class_names = artifact.read_class_names(self.model_dir)
        builtin = None
        if artifact.is_builtin(self.model_dir):
            from .model.builtin import read_graph

            builtin = read_graph(self.model_dir / artifact.SYMBOL_FILE)
            LOG.info("%s", builtin.describe(self.image_size))
        self.num_classes = self._num_classes(builtin.num_classes if builtin else None)
        self._transform = ValTransform(self.image_size)
        self._symbol = artifact.load_symbol(self.model_dir, mean_pixels)
        self.net = artifact.load_block(self.model_dir, self.ctx, self._symbol, self.image_size)
        self._by_batch: OrderedDict[int, gluon.SymbolBlock] = OrderedDict()
        LOG.info("loaded model from %s (image_shape %d, %d class names)", self.model_dir, self.image_size,
                 len(self.class_names))

    def _num_classes(self, builtin_classes: int | None) -> int | None:
        """hyperparams.json's num_classes; for a built-in model without it, its class predictor's."""
        if (self.model_dir / artifact.HYPERPARAMS_FILE).is_file():
            try:
                return int(artifact.read_hyperparameters(self.model_dir)["num_classes"])
            except (KeyError, ValueError):
                return None
        return builtin_classes

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) uint8 -> the graph's raw output (B, N, 6), -1 rows included.

        Each batch size runs its own static graph (shape and memory planned once), all sharing one
        set of parameters: oneDNN's INT8 kernels re-plan on every call otherwise (batch 1 of an
        INT8 mobilenet-1.0@300: 16 img/s re-planned, 80 static; FP32 is unaffected), and one
        static graph alternating between sizes re-plans at each change."""
        size = len(batch)
        block = self._by_batch.pop(size, None)
        if block is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Cannot decide type")
                block = gluon.SymbolBlock(self._symbol, mx.sym.var("data"), params=self.net.collect_params())
            block.hybridize(static_alloc=True, static_shape=True)
        self._by_batch[size] = block  # most recently used last
        while len(self._by_batch) > MAX_BATCH_SHAPES:
            self._by_batch.popitem(last=False)
        return block(mx.nd.array(batch, ctx=self.ctx, dtype="uint8")).asnumpy()

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, S, S) uint8: the validation transform of training."""
        return self._transform(image_rgb, NO_BOXES)[0]

    def predict_batch(self, images_rgb: Sequence[np.ndarray], threshold: float = 0.0,
                      max_detections: int | None = None) -> list[np.ndarray]:
        """-> per image, (K, 6) float32 rows [class_id, score, xmin, ymin, xmax, ymax], corners
        normalized to the image's width and height, sorted by score, no suppressed rows."""
        if not images_rgb:
            return []
        batch = np.stack([self.preprocess(image) for image in images_rgb])  # (B, 3, S, S)
        raw = self.forward(batch)  # (B, N, 6)
        results = []
        for rows in raw:
            rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] >= threshold)]
            rows = rows[np.argsort(-rows[:, 1], kind="stable")]
            rows[:, 2:] = np.clip(rows[:, 2:], 0.0, 1.0)
            if max_detections is not None:
                rows = rows[:max_detections]
            results.append(rows.astype(np.float32))
        return results

    def predict(self, image_rgb: np.ndarray, threshold: float = 0.0, max_detections: int | None = None) -> np.ndarray:
        return self.predict_batch([image_rgb], threshold, max_detections)[0]
