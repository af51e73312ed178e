"""The network a training job starts from: the model channel's earlier model (one of ours, or one
of SageMaker's built-in algorithm, whose own network is trained then), else ImageNet weights
(``use_pretrained_model``) or nothing; then the frozen layers."""
from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, TypeVar

import mxnet as mx
from mxnet import gluon

from ..config import Hyperparameters
from ..errors import HyperparameterError, UserError
from ..model import artifact, builtin_net
from ..model.backbones import load_pretrained
from ..model.builtin import IMPORTED_KEY
from ..model.builtin_net import BuiltinSSD
from ..model.ssd import SSD, build_ssd, short_parameter_names

LOG = logging.getLogger(__name__)

Network = SSD | BuiltinSSD
N = TypeVar("N", SSD, BuiltinSSD)


@dataclass
class Start:
    net: Network
    # hyperparams.json entries the job's artifacts add to its hyperparameters (where a built-in
    # network came from, so the next job can start from them again).
    artifact_entries: dict[str, str] = field(default_factory=dict)


def build_network(hp: Hyperparameters, contexts: list[mx.Context], model_channel: Path) -> Start:
    """The network on contexts, initialized, frozen where asked and hybridized."""
    if model_channel.exists():
        with tempfile.TemporaryDirectory(prefix="ssd-model-") as extracted:
            start = model_channel_start(artifact.locate(model_channel, Path(extracted)), hp, contexts)
    else:
        net = _initialized(build_ssd(hp.base_network, hp.num_classes, hp.image_shape, hp.anchor_sizes), contexts)
        if hp.use_pretrained_model:
            load_pretrained(net.features, hp.base_network)
        else:
            LOG.info("use_pretrained_model=0: training %s from scratch", hp.base_network)
        start = Start(net)
    freeze_layers(start.net, hp.freeze_layer_pattern)
    start.net.hybridize(static_alloc=True, static_shape=True)
    return start


def model_channel_start(model_dir: Path, hp: Hyperparameters, contexts: list[mx.Context]) -> Start:
    """Incremental training from the model channel's model, ours or the built-in's."""
    if builtin_net.is_builtin_network(model_dir):
        return builtin_start(model_dir, hp, contexts)
    net = _initialized(build_ssd(hp.base_network, hp.num_classes, hp.image_shape, hp.anchor_sizes), contexts)
    load_earlier_model(net, model_dir, hp)
    return Start(net)


def _initialized(net: N, contexts: list[mx.Context]) -> N:
    net.initialize(mx.init.Xavier(magnitude=2), ctx=contexts)
    net.materialize(contexts[0])
    return net


def builtin_start(model_dir: Path, hp: Hyperparameters, contexts: list[mx.Context]) -> Start:
    """The built-in model's own network (body and heads), with its weights; class predictors
    afresh for another num_classes."""
    source = builtin_net.read_source(model_dir)
    if source.base_network != hp.base_network:
        raise UserError(f"the model channel holds a model of the built-in algorithm with base network "
                        f"{source.base_network!r} but base_network={hp.base_network!r}; incremental training "
                        f"trains the model's own network: set base_network={source.base_network}")
    if hp.anchor_sizes:
        LOG.warning("anchor_sizes is ignored: a built-in model's network keeps its own anchors")
    net = _initialized(builtin_net.build_from(source, hp.num_classes, hp.image_shape), contexts)
    reinitialized = set_saved(net, source.parameters, skip={net.mean.name})  # the block's own input mean
    if reinitialized:
        LOG.warning("model channel: num_classes %d -> %d; re-initialized the class predictors (%s)",
                    source.num_classes, hp.num_classes, ", ".join(reinitialized))
    LOG.info("initialized from the model of the built-in algorithm in %s (%s, %d anchors); training its own "
             "network", model_dir, source.base_network, len(net.anchors))
    return Start(net, {IMPORTED_KEY: json.dumps(source.record)})


def set_saved(net: gluon.Block, saved: Mapping[str, mx.nd.NDArray], skip: Collection[str] = ()) -> list[str]:
    """Sets every parameter of net from saved; -> those whose shape differs (left as initialized).
    A parameter missing from saved is an error naming it."""
    reinitialized = []
    for name, param in net.collect_params().items():
        if name in skip:
            continue
        if name not in saved:
            raise UserError(f"the model in the model channel lacks parameter {name}; was it trained by "
                            "this algorithm or the built-in one?")
        if saved[name].shape != param.shape:
            reinitialized.append(name)
            continue
        param.set_data(saved[name])
    return reinitialized


def load_earlier_model(net: SSD, model_dir: Path, hp: Hyperparameters) -> None:
    """Incremental training from an earlier artifact of this algorithm. A different num_classes
    keeps everything but the class predictors, which start afresh."""
    earlier = artifact.read_hyperparameters(model_dir)
    if artifact.QUANTIZATION_KEY in earlier:
        raise UserError("the model channel holds an INT8 model (made by quantize); incremental training starts "
                        "from the FP32 model it was made from")
    if earlier.get("base_network") != hp.base_network:
        raise UserError(f"the model channel holds a {earlier.get('base_network')!r} model but "
                        f"base_network={hp.base_network!r}; incremental training needs the same base network")
    earlier_sizes, sizes = earlier.get("anchor_sizes", ""), hp.to_strings()["anchor_sizes"]
    if earlier_sizes != sizes:
        LOG.warning("model channel: anchor_sizes %r -> %r; the box predictors learnt offsets from the earlier "
                    "anchors and start from those", earlier_sizes, sizes)
    reinitialized = set_saved(net, artifact.read_parameters(model_dir))
    if reinitialized:
        LOG.warning("model channel: num_classes %s -> %d; re-initialized the class predictors (%s)",
                    earlier.get("num_classes"), hp.num_classes, ", ".join(reinitialized))
    LOG.info("initialized from the model in %s", model_dir)


def freeze_layers(net: Network, pattern: str) -> list[str]:
    """Stops gradients for parameters whose short name matches (re.match) the pattern."""
    if not pattern:
        return []
    names = short_parameter_names(net)
    regex = re.compile(pattern)
    frozen = [name for name in names if regex.match(name)]
    if not frozen:
        examples = ", ".join(n for n in list(names)[2:8])
        raise HyperparameterError(
            f"freeze_layer_pattern={pattern!r} matches no parameter of {net.base_network}; "
            f"names look like {examples}")
    for name in frozen:
        names[name].grad_req = "null"
    LOG.info("froze %d parameters matching %r (first: %s)", len(frozen), pattern, ", ".join(frozen[:5]))
    return frozen
