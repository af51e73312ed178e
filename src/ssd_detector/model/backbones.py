"""Base networks as SSD feature extractors, and their ImageNet weights from the model zoo folder.

Each base network gives a HybridBlock whose output is the list of feature maps the SSD heads
read: the base's own maps plus extra layers that halve the resolution down to 1x1.
  vgg-16        the SSD paper's reduced VGG-16: pool5 3x3/1, fc6 as a 3x3 conv dilated 6, fc7 1x1,
                conv4_3 L2-normalized with a learned scale (starts at 20)
  resnet-50     ResNet-50 v1, stage 3 (stride 16) and stage 4 (stride 32); below 448 pixels also
                stage 2 (stride 8)
  mobilenet-*   MobileNet v1 at width 1.0, 0.5 or 0.25, after relu22 (stride 16) and relu26 (stride 32);
                below 448 pixels also after relu10 (stride 8)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import model_store, vision

from ..errors import UserError

LOG = logging.getLogger(__name__)

ZOO_NAMES = {"vgg-16": "vgg16", "resnet-50": "resnet50_v1", "mobilenet-1.0": "mobilenet1.0",
             "mobilenet-0.5": "mobilenet0.5", "mobilenet-0.25": "mobilenet0.25"}
# Extra layers after the base: output channels of each (each halves the map).
EXTRA_FILTERS = {"vgg-16": (512, 256, 256, 256), "resnet-50": (512, 512, 256, 256),
                 "mobilenet-1.0": (512, 512, 256, 256), "mobilenet-0.5": (256, 256, 128, 128),
                 "mobilenet-0.25": (256, 256, 128, 128)}
# The VGG-16 of SSD512 has one more extra layer.
VGG_512_EXTRA = 256
# Indices into the model zoo's `features` where the stride-8, -16 and -32 maps end.
_SPLITS = {"resnet50_v1": (6, 7, 8), "mobilenet1.0": (33, 69, 81), "mobilenet0.5": (33, 69, 81),
           "mobilenet0.25": (33, 69, 81)}
# Below this input size ResNet and MobileNet also predict from their stride-8 map: small inputs
# need the finer grid for small objects (the published layouts at 512 start at stride 16).
STRIDE8_BELOW = 448


def zoo_weights_file(base_network: str, root: str | os.PathLike | None = None) -> Path:
    """Where MXNet's model zoo keeps the ImageNet weights: $MXNET_HOME/models/<name>-<hash>.params."""
    name = ZOO_NAMES[base_network]
    root = Path(root) if root is not None else Path(mx.base.data_dir()) / "models"
    return root / f"{name}-{model_store.short_hash(name)}.params"


class L2Normalization(gluon.HybridBlock):
    """Per-location L2 normalization with a learned per-channel scale (SSD's conv4_3)."""

    def __init__(self, channels: int, initial: float = 20.0, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get("scale", shape=(1, channels, 1, 1), init=mx.init.Constant(initial))

    def hybrid_forward(self, F, x, scale):
        return F.broadcast_mul(F.L2Normalization(x, mode="channel"), scale)


def _extra_layer(filters: int, use_bn: bool, kernel: int = 3, stride: int = 2, pad: int = 1) -> nn.HybridSequential:
    """1x1 conv to half the channels, then a strided 3x3 conv (GluonCV's feature expander)."""
    block = nn.HybridSequential()
    with block.name_scope():
        block.add(nn.Conv2D(filters // 2, 1, use_bias=not use_bn))
        if use_bn:
            block.add(nn.BatchNorm())
        block.add(nn.Activation("relu"))
        block.add(nn.Conv2D(filters, kernel, strides=stride, padding=pad, use_bias=not use_bn))
        if use_bn:
            block.add(nn.BatchNorm())
        block.add(nn.Activation("relu"))
    return block


def copy_parameters(source: gluon.Block, target: gluon.Block) -> None:
    """Copies weights between two blocks of the same structure, in registration order."""
    src, dst = list(source.collect_params().values()), list(target.collect_params().values())
    if len(src) != len(dst):
        raise ValueError(f"{source.name} has {len(src)} parameters but {target.name} has {len(dst)}")
    for a, b in zip(src, dst):
        if a.shape != b.shape:
            raise ValueError(f"parameter {a.name} {a.shape} does not fit {b.name} {b.shape}")
        b.set_data(a.data())


class ZooFeatures(gluon.HybridBlock):
    """ResNet-50 or MobileNet from the model zoo, cut at stride 16 and 32 (and 8 for small
    inputs), plus extra layers."""

    def __init__(self, base_network: str, image_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.zoo_name = ZOO_NAMES[base_network]
        self.use_stride8 = image_size < STRIDE8_BELOW
        ends = _SPLITS[self.zoo_name]
        with self.name_scope():
            zoo = vision.get_model(self.zoo_name, pretrained=False)
            # Consecutive slices of the zoo's feature blocks; the output of each is a feature map.
            self.stages = nn.HybridSequential(prefix="")
            start = 0
            for end in ends:
                stage = nn.HybridSequential(prefix="")
                for block in list(zoo.features)[start:end]:
                    stage.add(block)
                self.stages.add(stage)
                start = end
            self.extras = nn.HybridSequential()
            for filters in EXTRA_FILTERS[base_network]:
                self.extras.add(_extra_layer(filters, use_bn=True))

    def base_blocks(self) -> list[gluon.Block]:
        return [self.stages]

    def load_imagenet(self, path: Path) -> None:
        zoo = vision.get_model(self.zoo_name, pretrained=False)
        zoo.load_parameters(str(path), ctx=mx.cpu())
        ours = [b for stage in self.stages for b in stage]
        for mine, theirs in zip(ours, zoo.features):
            copy_parameters(theirs, mine)

    def hybrid_forward(self, F, x):
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        if not self.use_stride8:
            outputs = outputs[1:]
        for block in self.extras:
            outputs.append(block(outputs[-1]))
        return outputs


class VGGAtrousFeatures(gluon.HybridBlock):
    """The reduced, atrous VGG-16 of the SSD paper, plus its extra layers."""

    # (repetitions, channels) of the five conv stages.
    STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

    def __init__(self, image_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.stages = nn.HybridSequential(prefix="")
            for s, (reps, channels) in enumerate(self.STAGES, start=1):
                stage = nn.HybridSequential(prefix="")
                for i in range(1, reps + 1):
                    # conv1_1 ... conv5_3, the names the built-in's freeze_layer_pattern examples use
                    stage.add(nn.Conv2D(channels, 3, padding=1, prefix=f"conv{s}_{i}_"), nn.Activation("relu"))
                self.stages.add(stage)
            self.norm4 = L2Normalization(512, prefix="conv4_3_norm_")
            self.fc = nn.HybridSequential(prefix="")
            self.fc.add(nn.Conv2D(1024, 3, padding=6, dilation=6, prefix="fc6_"), nn.Activation("relu"),
                        nn.Conv2D(1024, 1, prefix="fc7_"), nn.Activation("relu"))
            self.extras = nn.HybridSequential()
            for filters, (kernel, stride, pad) in zip(self.extra_filters(image_size), self.extra_shapes(image_size)):
                self.extras.add(_extra_layer(filters, use_bn=False, kernel=kernel, stride=stride, pad=pad))

    @staticmethod
    def extra_filters(image_size: int) -> tuple[int, ...]:
        return EXTRA_FILTERS["vgg-16"] + ((VGG_512_EXTRA,) if image_size >= 448 else ())

    @staticmethod
    def extra_shapes(image_size: int) -> list[tuple[int, int, int]]:
        """(kernel, stride, pad) of each extra layer. SSD300 ends with two unpadded stride-1 3x3
        convs (5 -> 3 -> 1); SSD512 halves five times and ends with a 4x4 conv (2 -> 1). Where a
        map is too small for the unpadded form, the layer halves instead."""
        size = image_size // 2 // 2  # pool1, pool2
        size = -(-size // 2)  # pool3 rounds up
        size //= 2  # pool4; fc7 keeps the size
        shapes = []
        if image_size >= 448:
            plan = [(3, 2, 1)] * 4 + [(4, 1, 1)]
        else:
            plan = [(3, 2, 1)] * 2 + [(3, 1, 0)] * 2
        for kernel, stride, pad in plan:
            if stride == 1 and size + 2 * pad < kernel and size > 1:
                kernel, stride, pad = 3, 2, 1
            elif stride == 1 and size + 2 * pad < kernel:
                kernel, stride, pad = 1, 1, 0  # a 1x1 map stays 1x1
            size = (size + 2 * pad - kernel) // stride + 1
            shapes.append((kernel, stride, pad))
        return shapes

    def base_blocks(self) -> list[gluon.Block]:
        return [self.stages, self.fc]

    def load_imagenet(self, path: Path) -> None:
        """Conv weights by order from the zoo's VGG-16; fc6/fc7 subsampled into convs as in SSD."""
        zoo = vision.get_model("vgg16", pretrained=False)
        zoo.load_parameters(str(path), ctx=mx.cpu())
        zoo_convs = [b for b in zoo.features if isinstance(b, nn.Conv2D)]
        ours = [b for stage in self.stages for b in stage if isinstance(b, nn.Conv2D)]
        for mine, theirs in zip(ours, zoo_convs):
            mine.weight.set_data(theirs.weight.data())
            mine.bias.set_data(theirs.bias.data())
        dense6, dense7 = [b for b in zoo.features if isinstance(b, nn.Dense)]
        w6 = dense6.weight.data().reshape((4096, 512, 7, 7))  # (4096, 25088) -> (out, in, kh, kw)
        self.fc[0].weight.set_data(w6[::4, :, ::3, ::3])
        self.fc[0].bias.set_data(dense6.bias.data()[::4])
        w7 = dense7.weight.data().reshape((4096, 4096, 1, 1))  # (out, in) -> (out, in, 1, 1)
        self.fc[2].weight.set_data(w7[::4, ::4])
        self.fc[2].bias.set_data(dense7.bias.data()[::4])

    def hybrid_forward(self, F, x):
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 3:
                conv4_3 = x
            if i < 4:
                # pool3 rounds up (75 -> 38 at 300) as in SSD's Caffe model.
                x = F.Pooling(x, pool_type="max", kernel=(2, 2), stride=(2, 2),
                              pooling_convention="full" if i == 2 else "valid")
        x = F.Pooling(x, pool_type="max", kernel=(3, 3), stride=(1, 1), pad=(1, 1))
        outputs = [self.norm4(conv4_3), self.fc(x)]
        for block in self.extras:
            outputs.append(block(outputs[-1]))
        return outputs


def build_features(base_network: str, image_size: int) -> gluon.HybridBlock:
    if base_network == "vgg-16":
        return VGGAtrousFeatures(image_size, prefix="features_")
    if base_network in ZOO_NAMES:
        return ZooFeatures(base_network, image_size, prefix="features_")
    raise ValueError(f"unknown base network {base_network!r}")


def load_pretrained(features: gluon.HybridBlock, base_network: str, root: str | os.PathLike | None = None) -> Path:
    """Loads ImageNet weights into the base (extra layers and heads keep their initialization)."""
    path = zoo_weights_file(base_network, root)
    if not path.is_file():
        raise UserError(
            f"use_pretrained_model=1 needs the ImageNet weights of {base_network}, looked for at {path} "
            f"(MXNet's model zoo folder, $MXNET_HOME/models); put the file there, or set "
            f"use_pretrained_model=0 to train from scratch")
    features.load_imagenet(path)
    LOG.info("loaded ImageNet weights of %s from %s", base_network, path)
    return path
