"""Training throughput (images/s, data loading included) against GluonCV 0.10's SSD.

For each configuration (mobilenet-1.0 at 300, resnet-50 at 512) both implementations train on
the same synthetic RecordIO set with the same batch size and number of data workers, each in a
process of its own so that its peak resident memory is its own:
  ours     the project's training job and update step (augmentation and targets in the data workers)
  gluoncv  GluonCV's training recipe: SSDDefaultTrainTransform with anchors (targets in the
           workers), gluon DataLoader, SSDMultiBoxLoss, ssd_512_mobilenet1.0_custom /
           ssd_512_resnet50_v1_custom (same base networks and extra layers)
Prints images/s, the ratio and peak RSS. Run with `make bench-train`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from .common import BENCH

LOG = logging.getLogger("bench_train")
CONFIGS = {"mobilenet-1.0@300": ("mobilenet-1.0", 300, "ssd_512_mobilenet1.0_custom"),
           "resnet-50@512": ("resnet-50", 512, "ssd_512_resnet50_v1_custom")}
NUM_CLASSES = 5


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_batches(step, batches, warmup: int, count: int) -> tuple[float, int]:
    """Runs warmup batches, then times count batches; -> (seconds, images)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += step(next(iterator))
    return time.perf_counter() - start, images


def endless(loader, set_epoch=None):
    epoch = 0
    while True:
        if set_epoch:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def training_for(rec: Path, base: str, size: int, batch: int, workers: int, work: Path, contexts=None):
    """The project's assembled training job (training.assembly.Job) for one RecordIO train channel
    (hyperparameters as the benchmarks use them), on the given devices (default: every GPU of the
    host, else the CPU)."""
    from ssd_detector.training.assembly import assemble, host_contexts
    from ssd_detector.training.distributed import World
    from ssd_detector.sagemaker_env import Paths
    from ssd_detector.training.inputs import read_training_inputs

    from .common import job_tree

    base_dir = job_tree(work / f"job-{base}-{size}",
                        {"num_classes": str(NUM_CLASSES), "base_network": base, "image_shape": str(size),
                         "mini_batch_size": str(batch), "use_pretrained_model": "0", "learning_rate": "0.001"},
                        {"train": rec})
    inputs = read_training_inputs(Paths(base_dir), decode_images=False)
    return assemble(inputs, contexts or host_contexts(), workers, World(), should_stop=lambda: False)


def run_ours(rec: Path, base: str, size: int, batch: int, workers: int, warmup: int, count: int,
             work: Path) -> dict:
    job = training_for(rec, base, size, batch, workers, work)
    loader = job.train_loader

    def step(b) -> int:
        job.step(b.images, b.cls_targets, b.box_targets)
        return len(b.images)

    try:
        seconds, images = time_batches(step, endless(loader, loader.set_epoch), warmup, count)
    finally:
        loader.close()
    return {"images_per_second": images / seconds, "peak_rss_mb": peak_rss_mb(), "anchors": job.net.layout.num_anchors}


def run_gluoncv(rec: Path, model: str, size: int, batch: int, workers: int, warmup: int, count: int) -> dict:
    import mxnet as mx
    from gluoncv import model_zoo
    from gluoncv.data import RecordFileDetection
    from gluoncv.data.batchify import Stack, Tuple
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    from gluoncv.loss import SSDMultiBoxLoss
    from mxnet import autograd, gluon
    from ssd_detector.training.assembly import host_contexts

    contexts = host_contexts()  # every GPU of the host, else the CPU: the same devices as ours
    net = model_zoo.get_model(model, classes=[str(i) for i in range(NUM_CLASSES)], pretrained_base=False,
                              transfer=None)
    net.initialize()  # GluonCV's layers carry their own initializers
    with autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, size, size)))
    net.collect_params().reset_ctx(contexts)
    num_anchors = int(anchors.shape[1])
    dataset = RecordFileDetection(str(rec), coord_normalized=True)
    loader = gluon.data.DataLoader(dataset.transform(SSDDefaultTrainTransform(size, size, anchors)), batch,
                                   shuffle=True, batchify_fn=Tuple(Stack(), Stack(), Stack()),
                                   last_batch="rollover", num_workers=workers)
    loss_fn = SSDMultiBoxLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.001, "wd": 0.0005, "momentum": 0.9})
    net.hybridize(static_alloc=True, static_shape=True)

    def step(b) -> int:
        # As GluonCV's train_ssd.py does: split_and_load over the devices (on the CPU, off the
        # loader's shared memory).
        data, cls_t, box_t = (gluon.utils.split_and_load(a, contexts, even_split=False) for a in b)
        with autograd.record():
            outputs = [net(x) for x in data]
            total, _, _ = loss_fn([o[0] for o in outputs], [o[1] for o in outputs], cls_t, box_t)
            autograd.backward(total)
        trainer.step(1)
        mx.nd.waitall()
        return b[0].shape[0]

    seconds, images = time_batches(step, endless(loader), warmup, count)
    return {"images_per_second": images / seconds, "peak_rss_mb": peak_rss_mb(), "anchors": num_anchors}


def run_one(args: argparse.Namespace) -> int:
    base, size, gluoncv_model = CONFIGS[args.config]
    batch = args.batch or (16 if size <= 300 else 8)
    if args.impl == "ours":
        result = run_ours(args.rec, base, size, batch, args.workers, args.warmup, args.count, args.work)
    else:
        result = run_gluoncv(args.rec, gluoncv_model, size, batch, args.workers, args.warmup, args.count)
    result.update(config=args.config, impl=args.impl, batch=batch)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("build/bench/data"))
    parser.add_argument("--work", type=Path, default=Path("build/bench/train"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--workers", type=int, default=1, help="data workers for both implementations")
    parser.add_argument("--batch", type=int, default=0, help="default 16 at 300, 8 at 512")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--count", type=int, default=8, help="timed batches")
    parser.add_argument("--output", type=Path, default=Path("build/bench/train.json"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("ours", "gluoncv"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--rec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.one:
        logging.getLogger().setLevel(logging.WARNING)
        return run_one(args)

    from .data import ensure_data

    rec = ensure_data(args.data, 512, 500, 375)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for config in args.configs.split(","):
        row = {"config": config}
        for impl in ("ours", "gluoncv"):
            command = [*BENCH, "train", "--one", "--impl", impl, "--config", config, "--rec", str(rec),
                       "--workers", str(args.workers), "--batch", str(args.batch), "--warmup", str(args.warmup),
                       "--count", str(args.count), "--work", str(args.work)]
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                LOG.error("%s %s failed:\n%s", impl, config, done.stderr[-3000:])
                return 1
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            row[impl] = measured
            LOG.info("%-18s %-8s %6.2f img/s  batch %d  %5d anchors  peak RSS %6.0f MB", config, impl,
                     measured["images_per_second"], measured["batch"], measured["anchors"], measured["peak_rss_mb"])
        row["ratio"] = row["ours"]["images_per_second"] / row["gluoncv"]["images_per_second"]
        LOG.info("%-18s ours / gluoncv = %.2fx (target >= 1.2x: %s)", config, row["ratio"],
                 "met" if row["ratio"] >= 1.2 else "NOT met")
        results.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    return 0
