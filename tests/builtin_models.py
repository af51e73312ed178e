"""The reference the built-in model tests compare against, and the models they use
(ssd_detector.model.builtin_example).

``deploy_detections`` runs a built-in artifact the way its owners do by hand (AWS's samples and
example/ssd's deploy.py): the training graph cut at its three heads, a softmax over the class
axis, MultiBoxDetection, and a plain Module bound to float RGB input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mxnet as mx
import numpy as np

from ssd_detector.model.builtin_example import write_builtin_model

VGG_MEANS = (123.68, 116.779, 103.939)  # what the tests expect model.builtin to subtract for vgg-16

__all__ = ["VGG_MEANS", "deploy_detections", "write_builtin_model"]


def deploy_detections(folder: Path, images: np.ndarray, means: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """What owners of a built-in model run by hand: (B, 3, S, S) RGB 0-255 -> (B, N, 6)."""
    symbol = mx.sym.load(str(folder / "model_algo_1-symbol.json")).get_internals()
    cls_prob = mx.sym.SoftmaxActivation(symbol["multibox_cls_pred_output"], mode="channel")
    detection = mx.sym.contrib.MultiBoxDetection(cls_prob, symbol["multibox_loc_pred_output"],
                                                 symbol["multibox_anchors_output"], nms_threshold=0.45,
                                                 force_suppress=False, variances=(0.1, 0.1, 0.2, 0.2), nms_topk=400)
    saved = mx.nd.load(str(folder / "model_algo_1-0000.params"))
    args = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    module = mx.mod.Module(detection, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", images.shape)], for_training=False)
    module.set_params(args, aux, allow_missing=False, allow_extra=True)
    pixels = images.astype(np.float32) - np.array(means, np.float32).reshape(1, 3, 1, 1)
    module.forward(mx.io.DataBatch([mx.nd.array(pixels)]), is_train=False)
    return module.get_outputs()[0].asnumpy()
