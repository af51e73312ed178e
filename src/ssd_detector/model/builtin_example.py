"""Models shaped as SageMaker's built-in Object Detection algorithm writes them, with random
weights: the training graph of MXNet's example/ssd (the names its symbol builder gives, as a real
built-in resnet-50 artifact has them: 544 nodes), saved as a Module checkpoint (``arg:``/``aux:``)
with ``hyperparams.json``. For the tests and benchmarks of ``model.builtin`` (no downloaded file),
and for trying ``import-builtin`` and ``serve`` without a model of the built-in at hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np

SIZES = [[.1, .141], [.2, .272], [.37, .447], [.54, .619], [.71, .79], [.88, .961]]
RATIOS = [[1, 2, .5]] + [[1, 2, .5, 3, 1. / 3]] * 3 + [[1, 2, .5]] * 2
HEAD_SCALE = 1e-3


def _conv(data, name: str, filters: int, kernel: int, stride: int = 1, pad: int = 0, bias: bool = False,
          dilate: int = 1):
    return mx.sym.Convolution(data, num_filter=filters, kernel=(kernel, kernel), stride=(stride, stride),
                              pad=(pad, pad), dilate=(dilate, dilate), no_bias=not bias, name=name)


def resnet50_body():
    """MXNet's symbolic pre-activation ResNet-50: bn_data on raw pixels, stage{i}_unit{j}, _plus0.._plus15."""
    x = mx.sym.identity(mx.sym.var("data"), name="id")
    x = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="bn_data")
    x = _conv(x, "conv0", 64, 7, 2, 3)
    x = mx.sym.Activation(mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name="bn0"), act_type="relu", name="relu0")
    x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    added = 0
    for stage, (units, filters) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048)), start=1):
        for unit in range(1, units + 1):
            name, stride = f"stage{stage}_unit{unit}", 2 if unit == 1 and stage > 1 else 1
            act1 = mx.sym.Activation(mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name=f"{name}_bn1"),
                                     act_type="relu", name=f"{name}_relu1")
            y = _conv(act1, f"{name}_conv1", filters // 4, 1)
            y = mx.sym.Activation(mx.sym.BatchNorm(y, fix_gamma=False, eps=2e-5, name=f"{name}_bn2"),
                                  act_type="relu", name=f"{name}_relu2")
            y = _conv(y, f"{name}_conv2", filters // 4, 3, stride, 1)
            y = mx.sym.Activation(mx.sym.BatchNorm(y, fix_gamma=False, eps=2e-5, name=f"{name}_bn3"),
                                  act_type="relu", name=f"{name}_relu3")
            y = _conv(y, f"{name}_conv3", filters, 1)
            shortcut = _conv(act1, f"{name}_sc", filters, 1, stride) if unit == 1 else x
            x = mx.sym.elemwise_add(y, shortcut, name=f"_plus{added}")
            added += 1
    return x


def vgg16_reduced_body():
    """The reduced, atrous VGG-16 of example/ssd: conv1_1 .. relu7 (fc6/fc7 as convolutions)."""
    x = mx.sym.var("data")
    for group, (convs, filters) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), start=1):
        for k in range(1, convs + 1):
            x = mx.sym.Activation(_conv(x, f"conv{group}_{k}", filters, 3, pad=1, bias=True), act_type="relu",
                                  name=f"relu{group}_{k}")
        if group < 5:
            x = mx.sym.Pooling(x, pool_type="max", kernel=(2, 2), stride=(2, 2), name=f"pool{group}",
                               pooling_convention="full" if group == 3 else "valid")
    x = mx.sym.Pooling(x, pool_type="max", kernel=(3, 3), stride=(1, 1), pad=(1, 1), name="pool5")
    x = mx.sym.Activation(_conv(x, "fc6", 1024, 3, pad=6, bias=True, dilate=6), act_type="relu", name="relu6")
    return mx.sym.Activation(_conv(x, "fc7", 1024, 1, bias=True), act_type="relu", name="relu7")


def _extra(x, index: int, filters: int, stride: int, pad: int):
    """multi_feat_{index}: a 1x1 then a 3x3 convolution, each with its ReLU."""
    for kind, kernel, count, s, p in (("1x1", 1, max(128, filters // 2), 1, 0), ("3x3", 3, filters, stride, pad)):
        name = f"multi_feat_{index}_conv_{kind}"
        bias = mx.sym.var(f"{name}_conv_bias")
        x = mx.sym.Convolution(x, bias=bias, num_filter=count, kernel=(kernel, kernel), stride=(s, s), pad=(p, p),
                               name=f"{name}_conv")
        x = mx.sym.Activation(x, act_type="relu", name=f"{name}_relu")
    return x


def training_symbol(base_network: str, num_classes: int, image_shape: int, nms_threshold: float = 0.45,
                    nms_topk: int = 400):
    """The built-in's training graph: cls_prob, loc_loss, cls_label, det_out."""
    if base_network == "resnet-50":
        body = resnet50_body()
        taps, filters, strides, pads, norms, steps = ["_plus12", "_plus15"], [512, 256, 256, 128], \
            [2, 2, 2, 2], [1, 1, 1, 1], [-1] * 6, []
    else:
        body = vgg16_reduced_body()
        taps, filters, strides, pads, norms = ["relu4_3", "relu7"], [512, 256, 256, 256], [2, 2, 1, 1], \
            [1, 1, 0, 0], [20] + [-1] * 5
        steps = [s / image_shape for s in (8, 16, 32, 64, 100, 300)] if image_shape == 300 else []
    internals = body.get_internals()
    layers = [internals[f"{tap}_output"] for tap in taps]
    for index, (count, stride, pad) in enumerate(zip(filters, strides, pads), start=len(taps)):
        layers.append(_extra(layers[-1], index, count, stride, pad))
    locs: list = []
    clss: list = []
    anchors: list = []
    for k, layer in enumerate(layers):
        name = layer.name
        if norms[k] > 0:
            scale = mx.sym.var(f"{name}_scale", shape=(1, 512, 1, 1))
            layer = mx.sym.broadcast_mul(scale, mx.sym.L2Normalization(layer, mode="channel", name=f"{name}_norm"))
        per_place = len(SIZES[k]) - 1 + len(RATIOS[k])
        for kind, channels, out in (("loc", 4, locs), ("cls", num_classes + 1, clss)):
            pred = mx.sym.Convolution(layer, bias=mx.sym.var(f"{name}_{kind}_pred_conv_bias"),
                                      num_filter=per_place * channels, kernel=(3, 3), pad=(1, 1),
                                      name=f"{name}_{kind}_pred_conv")
            out.append(mx.sym.Flatten(mx.sym.transpose(pred, axes=(0, 2, 3, 1))))
        step = (steps[k], steps[k]) if steps else (-1.0, -1.0)
        prior = mx.sym.contrib.MultiBoxPrior(layer, sizes=tuple(SIZES[k]), ratios=tuple(RATIOS[k]), clip=False,
                                             steps=step, name=f"{name}_anchors")
        anchors.append(mx.sym.Flatten(prior))
    loc_preds = mx.sym.concat(*locs, dim=1, name="multibox_loc_pred")
    cls_preds = mx.sym.transpose(mx.sym.reshape(mx.sym.concat(*clss, dim=1), shape=(0, -1, num_classes + 1)),
                                 axes=(0, 2, 1), name="multibox_cls_pred")  # (B, N*(C+1)) -> (B, C+1, N)
    anchor_boxes = mx.sym.reshape(mx.sym.concat(*anchors, dim=1), shape=(0, -1, 4), name="multibox_anchors")
    target = mx.sym.contrib.MultiBoxTarget(anchor_boxes, mx.sym.var("label"), cls_preds, overlap_threshold=.5,
                                           ignore_label=-1, negative_mining_ratio=3, minimum_negative_samples=0,
                                           negative_mining_thresh=.5, variances=(0.1, 0.1, 0.2, 0.2),
                                           name="multibox_target")
    cls_prob = mx.sym.SoftmaxOutput(cls_preds, label=target[2], ignore_label=-1, use_ignore=True, multi_output=True,
                                    normalization="valid", name="cls_prob")
    loc_loss = mx.sym.MakeLoss(mx.sym.smooth_l1(target[1] * (loc_preds - target[0]), scalar=1.0, name="loc_loss_"),
                               normalization="valid", name="loc_loss")
    cls_label = mx.sym.MakeLoss(target[2], grad_scale=0, name="cls_label")
    detection = mx.sym.contrib.MultiBoxDetection(cls_prob, loc_preds, anchor_boxes, name="detection",
                                                 nms_threshold=nms_threshold, force_suppress=False,
                                                 variances=(0.1, 0.1, 0.2, 0.2), nms_topk=nms_topk)
    return mx.sym.Group([cls_prob, loc_loss, cls_label, mx.sym.MakeLoss(detection, grad_scale=0, name="det_out")])


def write_builtin_model(folder: Path, base_network: str = "resnet-50", num_classes: int = 2, image_shape: int = 128,
                        seed: int = 0, hyperparams: bool = True) -> Path:
    """folder/model_algo_1-symbol.json, -0000.params (random weights) and hyperparams.json."""
    folder.mkdir(parents=True, exist_ok=True)
    symbol = training_symbol(base_network, num_classes, image_shape)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=(1, 3, image_shape, image_shape), label=(1, 3, 5))
    rng = np.random.default_rng(seed)
    saved = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "label"):
            continue
        if name == "bn_data_gamma":  # fix_gamma: unused, but weight decay moves it from 1 in training
            value = np.full(shape, 0.97)
        elif name.endswith("_gamma"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("_beta", "_bias")):
            value = (0.1 if "_pred_conv" not in name else 0.5) * rng.standard_normal(shape)
        elif name.endswith("_scale"):
            value = np.full(shape, 20.0)
        else:  # weights: He's scale through the body; the predictors far smaller, so that the
            # class scores spread out instead of all saturating at 1
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * (HEAD_SCALE if "_pred_conv" in name else 1)
        saved[f"arg:{name}"] = mx.nd.array(value, dtype="float32")
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        if name == "bn_data_moving_mean":
            value = np.full(shape, 120.0)
        elif name == "bn_data_moving_var":
            value = np.full(shape, 60.0 ** 2)
        elif name.endswith("moving_var"):
            value = 1 + 0.1 * rng.random(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        saved[f"aux:{name}"] = mx.nd.array(value, dtype="float32")
    symbol.save(str(folder / "model_algo_1-symbol.json"))
    mx.nd.save(str(folder / "model_algo_1-0000.params"), saved)
    if hyperparams:
        (folder / "hyperparams.json").write_text(json.dumps({
            "base_network": base_network, "num_classes": str(num_classes), "image_shape": str(image_shape),
            "nms_threshold": "0.45", "nms_topk": "400", "epochs": "30", "mini_batch_size": "16",
            "use_pretrained_model": "1", "label_width": "350", "overlap_threshold": "0.5"}))
    return folder
