"""An artifact from a freshly initialized network: for trying out serving and the image before
any training, and for the serving tests and benchmark. Same files and graph as a trained model."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import mxnet as mx

from ..config import parse_hyperparameters
from . import artifact
from .ssd import SSDDetector, build_ssd


def export_untrained(model_dir: Path, hyperparameters: Mapping[str, str], seed: int = 0) -> Path:
    """Writes model_dir from hyperparameters (num_classes required; base_network, image_shape,
    nms_threshold, nms_topk used as in training). Class names are the class ids."""
    hp = parse_hyperparameters({"mini_batch_size": "1", **hyperparameters})
    mx.random.seed(seed)
    net = build_ssd(hp.base_network, hp.num_classes, hp.image_shape, hp.anchor_sizes)
    net.initialize(mx.init.Xavier(magnitude=2))
    net.materialize()
    detector = SSDDetector(net, nms_threshold=hp.nms_threshold, nms_topk=hp.nms_topk)
    detector.hybridize(static_alloc=True)
    detector(mx.nd.zeros((1, 3, hp.image_shape, hp.image_shape), dtype="uint8"))  # export needs one forward
    artifact.write(Path(model_dir), detector, hp.to_strings(), {i: str(i) for i in range(hp.num_classes)})
    return Path(model_dir)
