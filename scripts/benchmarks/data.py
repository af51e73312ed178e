"""Throughput of the SSD training input pipeline against GluonCV and MXNet's C++ iterator.

One run, same RecordIO data, same batch size, same number of worker processes or threads:
  ours            DetectionLoader + TrainTransform, uint8 batches (the network normalizes on the device)
  ours+normalize  the same, plus float32 mean/std normalization in the training process
  gluoncv         SSDDefaultTrainTransform in a gluon DataLoader (float32 normalized batches)
  mxnet-c++       mx.io.ImageDetRecordIter with SSD-style crop, pad, mirror and colour jitter
Prints images/s and the ratios; writes them as JSON too. Run with `make bench-data`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

LOG = logging.getLogger("bench_data")


def ensure_data(root: Path, images: int, width: int, height: int) -> Path:
    from ssd_detector.data.synthetic import SynthSpec, generate

    rec = root / "train" / "train.rec"
    marker = root / f".made-{images}-{width}x{height}"
    if not marker.exists():
        LOG.info("making %d synthetic %dx%d images in %s", images, width, height, root)
        generate(root, SynthSpec(train=images, validation=0, classes=5, width=width, height=height, seed=11,
                                 format="recordio", max_objects=8))
        marker.touch()
    return rec


def timed(name: str, batches: Iterable, count_images: Callable[[object], int], target_images: int,
          warmup_batches: int = 2) -> float:
    """Images per second after warm-up batches (worker start-up is not counted)."""
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    seen = 0
    start = time.perf_counter()
    for batch in iterator:
        seen += count_images(batch)
        if seen >= target_images:
            break
    elapsed = time.perf_counter() - start
    rate = seen / elapsed
    LOG.info("%-15s %7.1f img/s (%d images in %.1f s)", name, rate, seen, elapsed)
    return rate


def endless(make_epoch: Callable[[int], Iterable]) -> Iterable:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def bench_ours(rec: Path, size: int, batch: int, workers: int, target: int, normalize: bool) -> float:
    from ssd_detector.data.channel import read_channel
    from ssd_detector.data.loader import DetectionLoader
    from ssd_detector.data.transforms import TrainTransform, normalize as normalize_batch

    samples = read_channel(rec).samples
    with DetectionLoader(samples, batch, TrainTransform(size), shuffle=True, num_workers=workers,
                         max_objects=16, drop_last=True) as loader:
        def epoch(e: int):
            loader.set_epoch(e)
            for b in loader:
                yield normalize_batch(b.images) if normalize else b.images
        return timed("ours+normalize" if normalize else "ours", endless(epoch), len, target)


def bench_gluoncv(rec: Path, size: int, batch: int, workers: int, target: int) -> float:
    from gluoncv.data import RecordFileDetection
    from gluoncv.data.batchify import Pad, Stack, Tuple
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    from mxnet import gluon

    dataset = RecordFileDetection(str(rec), coord_normalized=True)
    loader = gluon.data.DataLoader(dataset.transform(SSDDefaultTrainTransform(size, size)), batch, shuffle=True,
                                   batchify_fn=Tuple(Stack(), Pad(pad_val=-1)), last_batch="rollover",
                                   num_workers=workers)
    return timed("gluoncv", endless(lambda e: loader), lambda b: b[0].shape[0], target)


def bench_mxnet_iter(rec: Path, size: int, batch: int, workers: int, target: int) -> float:
    import mxnet as mx

    overlaps = (0.1, 0.3, 0.5, 0.7, 0.9)
    it = mx.io.ImageDetRecordIter(
        path_imgrec=str(rec), batch_size=batch, data_shape=(3, size, size), shuffle=True,
        preprocess_threads=workers, label_pad_width=350, label_pad_value=-1,
        rand_crop_prob=0.833, num_crop_sampler=5, min_crop_scales=(0.3,) * 5, max_crop_scales=(1.0,) * 5,
        min_crop_aspect_ratios=(0.5,) * 5, max_crop_aspect_ratios=(2.0,) * 5, min_crop_overlaps=overlaps,
        max_crop_overlaps=(1.0,) * 5, max_crop_trials=(25,) * 5, rand_pad_prob=0.5, max_pad_scale=4.0,
        rand_mirror_prob=0.5, random_hue_prob=0.5, max_random_hue=18, random_saturation_prob=0.5,
        max_random_saturation=32, random_illumination_prob=0.5, max_random_illumination=32,
        random_contrast_prob=0.5, max_random_contrast=0.5, mean_r=123.68, mean_g=116.28, mean_b=103.53,
        std_r=58.395, std_g=57.12, std_b=57.375)

    def epoch(e: int):
        it.reset()
        for b in it:
            b.data[0].wait_to_read()
            yield b
    return timed("mxnet-c++", endless(epoch), lambda b: b.data[0].shape[0], target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("build/bench/data"))
    parser.add_argument("--images", type=int, default=512, help="synthetic training images")
    parser.add_argument("--source-size", default="500x375", help="synthetic image size (VOC-like)")
    parser.add_argument("--size", type=int, default=300, help="image_shape")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="worker processes / threads for every pipeline")
    parser.add_argument("--target", type=int, default=1024, help="images timed per pipeline")
    parser.add_argument("--output", type=Path, default=Path("build/bench/data.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    width, height = (int(v) for v in args.source_size.split("x"))
    rec = ensure_data(args.data, args.images, width, height)
    LOG.info("pipeline throughput: %d synthetic %dx%d images, image_shape %d, batch %d, %d workers, %d cores",
             args.images, width, height, args.size, args.batch, args.workers, os.cpu_count())
    rates = {
        "ours": bench_ours(rec, args.size, args.batch, args.workers, args.target, normalize=False),
        "ours+normalize": bench_ours(rec, args.size, args.batch, args.workers, args.target, normalize=True),
        "gluoncv": bench_gluoncv(rec, args.size, args.batch, args.workers, args.target),
        "mxnet-c++": bench_mxnet_iter(rec, args.size, args.batch, args.workers, args.target),
    }
    ratios = {
        "ours / gluoncv": rates["ours"] / rates["gluoncv"],
        "ours+normalize / gluoncv": rates["ours+normalize"] / rates["gluoncv"],
        "ours / mxnet-c++": rates["ours"] / rates["mxnet-c++"],
        "ours+normalize / mxnet-c++": rates["ours+normalize"] / rates["mxnet-c++"],
    }
    for name, ratio in ratios.items():
        LOG.info("%-28s %.2fx", name, ratio)
    target_met = ratios["ours+normalize / gluoncv"] >= 1.5
    LOG.info("target >= 1.5x GluonCV (like for like, normalized float32 batches): %s",
             "met" if target_met else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rates": rates, "ratios": ratios, "settings": vars(args) | {
        "data": str(args.data), "output": str(args.output)}}, indent=2))
    return 0
