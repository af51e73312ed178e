"""A built-in model's own network as a Gluon block that trains (incremental training from it).

The block is the saved graph's body and heads up to ``multibox_cls_pred`` and
``multibox_loc_pred`` (a SymbolBlock, parameters named as in the built-in's file), in front of it
the input our networks take ((B, 3, S, S) pixels, cast to float32, minus the built-in's mean
pixel), and it answers as our SSD does: class logits (B, N, C + 1) and box offsets (B, N * 4), in
the anchors' order, with the same variances. So the training job, its targets, loss, schedule,
Horovod and the artifact it writes are the ones of our own networks.

Sources: a built-in artifact (its training graph: the anchors come from its MultiBoxPrior layers
at the job's image_shape), or an artifact of ours that holds such a network (imported by
``import-builtin`` or trained from one before: its anchors are fixed at its image_shape).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..errors import UserError
from . import artifact
from .builtin import (ANCHORS_PARAM, CLS_PRED, IMPORTED_KEY, LOC_PRED, class_reshape, mean_pixels_of,
                      prior_anchors, read_graph)

LOG = logging.getLogger(__name__)
MEAN_PARAM = "builtin_input_mean"  # the constant (1, 3, 1, 1) mean pixel of the block's input
CLS_CONV_SUFFIX = "_cls_pred_conv"
OUR_ANCHORS_PARAM = "anchors"  # SSDDetector's constant, in artifacts trained from a built-in model


@dataclass
class BuiltinSource:
    """What a model channel's built-in network is made of."""
    graph: dict[str, Any]  # the symbol's JSON
    base_network: str
    num_classes: int
    parameters: dict[str, mx.nd.NDArray]  # without arg:/aux: prefixes
    means: tuple[float, float, float]  # subtracted by the block; 0 when the graph does it itself
    anchors: np.ndarray | None  # (N, 4) fixed anchors, or None: from the graph's MultiBoxPrior layers
    image_shape: int | None  # what fixed anchors were made for
    record: dict[str, Any]  # where the network came from, kept in the artifacts trained from it


def is_builtin_network(model_dir: Path) -> bool:
    """A built-in artifact, or one of ours whose network is a built-in model's."""
    return artifact.is_builtin(model_dir) or IMPORTED_KEY in artifact.read_hyperparameters(model_dir)


def read_source(model_dir: Path) -> BuiltinSource:
    symbol_file = model_dir / artifact.SYMBOL_FILE
    graph = json.loads(mx.sym.load(str(symbol_file)).tojson())  # loading upgrades MXNet 1.3's format
    parameters = artifact.read_parameters(model_dir)
    if artifact.is_builtin(model_dir):
        described = read_graph(symbol_file)
        record = {"base_network": described.base_network, "source_model": str(model_dir)}
        return BuiltinSource(graph, described.base_network, described.num_classes, parameters,
                             mean_pixels_of(described.base_network), None, None, record)
    hyper = artifact.read_hyperparameters(model_dir)
    try:
        record = json.loads(hyper[IMPORTED_KEY])
        base, classes, size = record["base_network"], int(hyper["num_classes"]), int(hyper["image_shape"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{model_dir / artifact.HYPERPARAMS_FILE}: {IMPORTED_KEY}, num_classes or image_shape is "
                        f"missing or malformed ({exc})") from None
    name = next((n for n in (ANCHORS_PARAM, OUR_ANCHORS_PARAM) if n in parameters), None)
    if name is None:
        raise UserError(f"{model_dir / artifact.PARAMS_FILE} has no anchors ({ANCHORS_PARAM} or {OUR_ANCHORS_PARAM})")
    anchors = parameters[name].asnumpy().reshape(-1, 4)  # (1, N, 4) -> (N, 4)
    # The graph's input already casts and subtracts the mean: the block adds nothing.
    return BuiltinSource(graph, base, classes, parameters, (0.0, 0.0, 0.0), anchors, size, record)


def with_num_classes(graph: Mapping[str, Any], old: int, new: int) -> dict[str, Any]:
    """The graph with class predictors for new classes (+ background): every ``*_cls_pred_conv``
    gets anchors x (new + 1) filters, the reshape before ``multibox_cls_pred`` (0, -1, new + 1)."""
    out = json.loads(json.dumps(graph))
    nodes = out["nodes"]
    changed = 0
    for node in nodes:
        if node.get("op") == "Convolution" and node["name"].endswith(CLS_CONV_SUFFIX):
            attrs = node.setdefault("attrs", {})
            filters = int(attrs["num_filter"])
            if filters % (old + 1):
                raise UserError(f"class predictor {node['name']} has {filters} filters, not a multiple of "
                                f"{old + 1} (classes + background)")
            attrs["num_filter"] = str(filters // (old + 1) * (new + 1))
            changed += 1
    reshape = class_reshape(out)
    if reshape.get("op") != "Reshape" or not changed:
        raise UserError(f"the built-in graph's class predictions are not {CLS_CONV_SUFFIX} layers reshaped into "
                        f"{CLS_PRED}")
    reshape["attrs"]["shape"] = f"(0, -1, {new + 1})"
    return out


class BuiltinSSD(gluon.HybridBlock):
    """(B, 3, S, S) pixels -> class logits (B, N, C + 1), box offsets (B, N * 4), like our SSD."""

    def __init__(self, graph: Mapping[str, Any], base_network: str, num_classes: int, image_size: int,
                 means: Sequence[float], anchors: np.ndarray) -> None:
        super().__init__(prefix="")
        self.base_network, self.num_classes, self.image_size = base_network, num_classes, image_size
        self.anchors = anchors.astype(np.float32)  # (N, 4) normalized corners, for the data workers
        internals = mx.sym.load_json(json.dumps(graph)).get_internals()
        body = mx.sym.Group([internals[f"{CLS_PRED}_output"], internals[f"{LOC_PRED}_output"]])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot decide type")
            self.body = gluon.SymbolBlock(body, mx.sym.var("data"))
        # An artifact trained from a built-in model before has this block's input mean in its
        # graph, now a (never trained) input of the body: this block's own takes another name.
        earlier = [name for name in self.body.collect_params() if name.startswith(MEAN_PARAM)]
        with self.name_scope():
            self.mean = self.params.get_constant(MEAN_PARAM + (f"_{len(earlier)}" if earlier else ""),
                                                 np.array(means, np.float32).reshape(1, 3, 1, 1))
        for name, param in self.body.collect_params().items():
            if name in earlier:
                param.grad_req = "null"
            # A SymbolBlock's parameters have no initializer of their own (Gluon's layers set
            # them): what the built-in's layers start from, for those no saved value replaces.
            param.init = _initializer(name)

    def materialize(self, ctx: mx.Context | None = None) -> None:
        """One zero batch, so that every parameter's shape is known."""
        ctx = ctx or self.mean.list_ctx()[0]
        self(mx.nd.zeros((1, 3, self.image_size, self.image_size), ctx=ctx))

    def hybrid_forward(self, F, x, mean):  # type: ignore[no-untyped-def]
        x = F.broadcast_sub(F.cast(x, "float32"), mean)
        cls_pred, box_pred = self.body(x)  # (B, C + 1, N), (B, N * 4)
        return F.transpose(cls_pred, (0, 2, 1)), box_pred  # (B, C + 1, N) -> (B, N, C + 1)


def _initializer(name: str) -> mx.init.Initializer | None:
    """None: the network's (Xavier)."""
    if name.endswith(("_gamma", "_moving_var")):
        return mx.init.One()
    if name.endswith(("_beta", "_bias", "_moving_mean")):
        return mx.init.Zero()
    if name.endswith("_scale"):  # vgg-16's L2-normalized relu4_3 starts at 20, as in the example
        return mx.init.Constant(20.0)
    return None


def build_from(source: BuiltinSource, num_classes: int, image_size: int) -> BuiltinSSD:
    """The block of source for num_classes classes at image_size (not initialized)."""
    graph = source.graph if num_classes == source.num_classes else \
        with_num_classes(source.graph, source.num_classes, num_classes)
    if source.anchors is not None:
        if image_size != source.image_shape:
            raise UserError(f"the model channel's network has anchors fixed at image_shape={source.image_shape}; "
                            f"train it with image_shape={source.image_shape} (the job has {image_size})")
        anchors = source.anchors
    else:
        anchors = prior_anchors(graph, image_size)
    return BuiltinSSD(graph, source.base_network, num_classes, image_size, source.means, anchors)
