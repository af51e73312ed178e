"""The peer for bench_accuracy: GluonCV 0.10's SSD trained with GluonCV's own recipe on the same
RecordIO data, base network, input size and wall-clock budget, then scored on the held-out split
with the same per-size VOC07 mAP.

GluonCV's recipe (scripts/detection/ssd/train_ssd.py): SSDDefaultTrainTransform (photometric
distortion, expand, random crop, flip) with its anchors' targets made in the data workers,
SSDMultiBoxLoss, SGD at 0.001 with momentum 0.9 and weight decay 0.0005, the rate cut 10x at 2/3
and 5/6 of the epochs (160 and 200 of 240), and the model of the best validation mAP kept. The
epoch count is the one our recipe runs in the same budget; the batch size is ours. Base
networks start from scratch (pretrained_base=False), as ours do in the benchmark.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

LOG = logging.getLogger("bench_peer")
# Our base network -> GluonCV's custom SSD on the same base (input size and extra layers).
GLUONCV_MODELS = {"mobilenet-0.25": "ssd_300_mobilenet0.25_custom", "mobilenet-1.0": "ssd_512_mobilenet1.0_custom",
                  "resnet-50": "ssd_512_resnet50_v1_custom", "vgg-16": "ssd_300_vgg16_atrous_custom"}


def scores(net, dataset, size: int, classes: int, contexts) -> dict:
    """VOC07 mAP of net over dataset (GluonCV RecordFileDetection), overall and per size; boxes
    are compared in normalized coordinates, sizes in pixels of each image."""
    import mxnet as mx
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform
    from ssd_detector.evaluation.by_size import SizedMeanAP

    transform = SSDDefaultValTransform(size, size)
    metric = SizedMeanAP(classes)
    for index in range(len(dataset)):
        image, label = dataset[index]
        height, width = image.shape[:2]
        x, _ = transform(image, label)
        ids, probs, boxes = net(x.expand_dims(0).as_in_context(contexts[0]))
        ids, probs, boxes = ids[0, :, 0].asnumpy(), probs[0, :, 0].asnumpy(), boxes[0].asnumpy()  # (K,), (K,), (K, 4)
        keep = ids >= 0
        metric.update(np.clip(boxes[keep] / size, 0, 1), ids[keep].astype(np.int64), probs[keep],
                      label[:, :4] / np.array([width, height, width, height]), label[:, 4].astype(np.int64),
                      label[:, 5] if label.shape[1] > 5 else None, width, height)
    mx.nd.waitall()
    return {"map": metric.value(), "by_size": metric.size_values(), "objects_by_size": metric.counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--validation", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--base-network", default="mobilenet-0.25", choices=sorted(GLUONCV_MODELS))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=27, help="the schedule's length; the budget may stop it first")
    parser.add_argument("--budget", type=float, default=900)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("build/bench/peer"))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    import mxnet as mx
    from gluoncv import model_zoo
    from gluoncv.data import RecordFileDetection
    from gluoncv.data.batchify import Stack, Tuple
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    from gluoncv.loss import SSDMultiBoxLoss
    from mxnet import autograd, gluon

    start = time.monotonic()
    mx.random.seed(0)
    contexts = [mx.cpu()]
    name = GLUONCV_MODELS[args.base_network]
    size = args.image_size
    net = model_zoo.get_model(name, classes=[str(i) for i in range(args.classes)], pretrained_base=False,
                              transfer=None)
    net.initialize()  # GluonCV's layers carry their own initializers
    with autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, size, size)))
    train_set = RecordFileDetection(str(args.train), coord_normalized=True)
    validation_set = RecordFileDetection(str(args.validation), coord_normalized=True)
    test_set = RecordFileDetection(str(args.test), coord_normalized=True)
    loader = gluon.data.DataLoader(train_set.transform(SSDDefaultTrainTransform(size, size, anchors)), args.batch,
                                   shuffle=True, batchify_fn=Tuple(Stack(), Stack(), Stack()),
                                   last_batch="rollover", num_workers=args.workers)
    steps = [int(args.epochs * 160 / 240), int(args.epochs * 200 / 240)]
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.001, "wd": 0.0005, "momentum": 0.9})
    loss_fn = SSDMultiBoxLoss()
    net.hybridize(static_alloc=True, static_shape=True)
    args.work.mkdir(parents=True, exist_ok=True)
    best_path = args.work / "best.params"
    best, history, epochs_done, out_of_time = -1.0, [], 0, False
    for epoch in range(args.epochs):
        if epoch in steps:
            trainer.set_learning_rate(trainer.learning_rate * 0.1)
        for batch in loader:
            # Off the loader's shared memory, as GluonCV's train_ssd.py does with split_and_load.
            data, cls_targets, box_targets = (a.as_in_context(contexts[0]) for a in batch)
            with autograd.record():
                cls_preds, box_preds, _ = net(data)
                total, _, _ = loss_fn([cls_preds], [box_preds], [cls_targets], [box_targets])
                autograd.backward(total)
            trainer.step(1)
            if time.monotonic() - start > args.budget:
                out_of_time = True
                break
        mx.nd.waitall()
        if out_of_time:
            break
        epochs_done = epoch + 1
        value = scores(net, validation_set, size, args.classes, contexts)["map"]
        history.append(value)
        LOG.info("epoch %d: validation mAP %.4f, %.0f s", epoch, value, time.monotonic() - start)
        if value > best:
            best = value
            net.save_parameters(str(best_path))
    wall = time.monotonic() - start
    if best_path.exists():
        net.load_parameters(str(best_path))
    result = scores(net, test_set, size, args.classes, contexts)
    result.update(model=name, image_size=size, wall_seconds=wall, epochs=epochs_done, validation_map=history,
                  stopped_by_budget=out_of_time, recipe={"optimizer": "sgd", "learning_rate": 0.001, "momentum": 0.9,
                                                         "wd": 0.0005, "lr_steps": steps, "batch": args.batch,
                                                         "transform": "SSDDefaultTrainTransform"})
    args.output.write_text(json.dumps(result, indent=2))
    LOG.info("held-out mAP %.4f after %.0f s (%d epochs)", result["map"], wall, epochs_done)
    return 0
