#!/usr/bin/env python
"""Accuracy on the CPU: train mobilenet-0.25 at 256 from scratch on a synthetic set within a
time budget, then VOC07 mAP of the saved model on a held-out synthetic split.

The training runs through the container's real entry point (`ssd-detector train` on a
SageMaker-style tree); the held-out split is made with another seed and never seen in
training or model selection. Prints mAP and wall time. Run with `make bench-accuracy`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ssd_detector.sagemaker_env import write_job

LOG = logging.getLogger("bench_accuracy")
# The best recipe measured from scratch (README, Benchmarks): Adam at 0.01, batch 16, light
# augmentation (colour and flip; SSD's expand and crop slow convergence from scratch several-fold).
HYPERPARAMETERS = {
    "num_classes": "5", "base_network": "mobilenet-0.25", "image_shape": "256", "mini_batch_size": "16",
    "epochs": "27", "optimizer": "adam", "learning_rate": "0.01", "lr_scheduler_step": "21,26",
    "lr_scheduler_factor": "0.1", "use_pretrained_model": "0", "augmentation": "light",
}
TARGET_MAP = 0.85


def make_sets(root: Path, train: int, validation: int, test: int, fmt: str = "recordio",
              seed: int = 31) -> tuple[Path, Path]:
    """Training and validation sets under root/data (in fmt), and a held-out RecordIO split made
    with another seed; made once per size."""
    from ssd_detector.data.synthetic import SynthSpec, generate

    data, held_out = root / "data", root / "test"
    marker = root / f".made-{train}-{validation}-{test}-{fmt}-{seed}"
    if not marker.exists():
        LOG.info("making %d training, %d validation and %d held-out synthetic images", train, validation, test)
        for folder in (data, held_out):
            shutil.rmtree(folder, ignore_errors=True)
        generate(data, SynthSpec(train=train, validation=validation, classes=5, width=320, height=240, seed=seed,
                                 format=fmt))
        generate(held_out, SynthSpec(train=0, validation=test, classes=5, width=320, height=240, seed=seed + 1,
                                     format="recordio"))
        marker.touch()
    return data, held_out / "validation"


def held_out_map(model_dir: Path, test_dir: Path) -> float:
    from ssd_detector.data.channel import read_channel
    from ssd_detector.data.images import decode_rgb
    from ssd_detector.evaluation.voc_map import VOCMeanAP
    from ssd_detector.inference import Predictor

    predictor = Predictor.load(model_dir)
    samples = read_channel(test_dir).samples
    metric = VOCMeanAP(5, 0.5, voc07=True)
    for start in range(0, len(samples), 16):
        chunk = samples[start:start + 16]
        rows = predictor.predict_batch([decode_rgb(s.image.read()) for s in chunk])
        for sample, found in zip(chunk, rows):
            metric.update(found[:, 2:6], found[:, 0].astype(np.int64), found[:, 1], sample.boxes, sample.class_ids,
                          sample.difficult)
    return metric.value()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("build/bench/accuracy"))
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--budget", type=float, default=900, help="seconds of training allowed")
    parser.add_argument("--hyperparameters", type=json.loads, default={}, help="JSON overriding the defaults")
    parser.add_argument("--augment", default=HYPERPARAMETERS["augmentation"], choices=("full", "light", "none"),
                        help="the job's augmentation hyperparameter (default %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("build/bench/accuracy.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    data, test_dir = make_sets(args.root, args.train, args.validation, args.test)
    job = args.root / "job"
    shutil.rmtree(job, ignore_errors=True)
    hyperparameters = {**HYPERPARAMETERS, "augmentation": args.augment,
                       **{k: str(v) for k, v in args.hyperparameters.items()}}
    write_job(job, hyperparameters, {d.name: d for d in data.iterdir() if d.is_dir()}, link=True)
    LOG.info("training %s", json.dumps(hyperparameters))
    start = time.monotonic()
    log_path = args.root / "train.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "ssd_detector.cli", "train"], stdout=log, stderr=log,
                                   env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), "SSD_DATA_WORKERS": "1"})
        try:
            code = process.wait(timeout=args.budget)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=60)
            code = None
    wall = time.monotonic() - start
    text = log_path.read_text()
    if code not in (0, None):
        LOG.error("training failed (exit %s); see %s", code, log_path)
        return 1
    finished = code == 0
    validation = [float(v) for v in re.findall(r"validation mAP <score>=\((\S+)\)", text)]
    value = held_out_map(job / "model", test_dir)
    met = finished and value >= TARGET_MAP
    LOG.info("training wall time %.0f s (budget %.0f s, %s), best validation mAP %.4f over %d epochs",
             wall, args.budget, "finished" if finished else "STOPPED at the budget", max(validation, default=0),
             len(validation))
    LOG.info("held-out VOC07 mAP %.4f (target >= %.2f within %.0f s: %s)", value, TARGET_MAP, args.budget,
             "met" if met else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"held_out_map": value, "wall_seconds": wall, "finished": finished,
                                       "validation_map": validation, "hyperparameters": hyperparameters,
                                       "augment": args.augment}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
