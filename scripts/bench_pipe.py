#!/usr/bin/env python
"""File mode against Pipe mode: the same synthetic data and recipe trained twice through the
container's real entry point (`ssd-detector train` on a SageMaker-style tree), once from RecordIO
files and once streamed as a Ground Truth augmented manifest through FIFOs written as SageMaker
writes them (scripts/pipe_feed.py). Prints both training throughputs (median of the epochs after
the first) with their ratio, and both held-out VOC07 mAPs with their difference.

Targets: throughput ratio Pipe/File >= 0.95; held-out mAP within 0.02. Run with `make bench-pipe`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import held_out_map, make_sets  # noqa: E402 - the scripts folder is not a package
from pipe_feed import PipeFeeder, manifest_pass  # noqa: E402

LOG = logging.getLogger("bench_pipe")
HYPERPARAMETERS = {
    "num_classes": "5", "base_network": "mobilenet-0.25", "image_shape": "256", "mini_batch_size": "16",
    "epochs": "14", "optimizer": "adam", "learning_rate": "0.01", "lr_scheduler_step": "10,13",
    "lr_scheduler_factor": "0.1", "use_pretrained_model": "0",
}
ATTRIBUTES = ["source-ref", "bounding-box"]
MIN_RATIO = 0.95
MAX_MAP_GAP = 0.02


def job_tree(root: Path, name: str, hyperparameters: dict, channels: dict) -> Path:
    base = root / name
    shutil.rmtree(base, ignore_errors=True)
    (base / "input/config").mkdir(parents=True)
    (base / "input/data").mkdir(parents=True)
    (base / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    (base / "input/config/inputdataconfig.json").write_text(json.dumps(channels))
    return base


def train(base: Path, log_path: Path) -> tuple[float, list[float]]:
    start = time.monotonic()
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, "-m", "ssd_detector.cli", "train"], stdout=log, stderr=log,
                              env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "1",
                                   "SSD_AUGMENT": "light"}).returncode
    if code != 0:
        raise SystemExit(f"training failed (exit {code}); see {log_path}")
    throughputs = [float(v) for v in re.findall(r"train throughput=(\S+) records/second", log_path.read_text())]
    return time.monotonic() - start, throughputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("build/bench/pipe"))
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=int(HYPERPARAMETERS["epochs"]))
    parser.add_argument("--output", type=Path, default=Path("build/bench/pipe.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    data, test_dir = make_sets(args.root, args.train, args.validation, args.test, fmt="both", seed=41)
    hyperparameters = {**HYPERPARAMETERS, "epochs": str(args.epochs), "num_training_samples": str(args.train)}
    steps = [int(e * args.epochs / int(HYPERPARAMETERS["epochs"])) for e in (10, 13)]
    hyperparameters["lr_scheduler_step"] = ",".join(str(max(1, s)) for s in steps)
    results = {}

    file_channel = {"TrainingInputMode": "File", "ContentType": "application/x-recordio"}
    base = job_tree(args.root, "file-job", hyperparameters, {"train": file_channel, "validation": file_channel})
    for split in ("train", "validation"):
        shutil.copytree(data / "recordio" / split, base / "input/data" / split)
    LOG.info("File mode: %s", json.dumps(hyperparameters))
    results["file"] = train(base, args.root / "file.log"), base / "model"

    pipe_channel = {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio",
                    "RecordWrapperType": "RecordIO", "S3DistributionType": "FullyReplicated"}
    base = job_tree(args.root, "pipe-job", hyperparameters, {"train": pipe_channel, "validation": pipe_channel})
    feeders = [PipeFeeder(base / "input/data", split, manifest_pass(data / "manifest" / f"{split}.manifest",
                                                                      ATTRIBUTES)).start()
               for split in ("train", "validation")]
    LOG.info("Pipe mode (augmented manifest)")
    try:
        results["pipe"] = train(base, args.root / "pipe.log"), base / "model"
    finally:
        for feeder in feeders:
            feeder.stop()

    summary = {}
    for mode, ((wall, throughputs), model) in results.items():
        steady = throughputs[1:] or throughputs
        summary[mode] = {"wall_seconds": round(wall, 1), "throughput": round(statistics.median(steady), 2),
                         "held_out_map": round(held_out_map(model, test_dir), 4)}
        LOG.info("%-4s mode: %.1f images/s (median of epochs 1-%d), held-out mAP %.4f, %.0f s", mode,
                 summary[mode]["throughput"], len(throughputs) - 1, summary[mode]["held_out_map"], wall)
    ratio = summary["pipe"]["throughput"] / summary["file"]["throughput"]
    gap = summary["pipe"]["held_out_map"] - summary["file"]["held_out_map"]
    LOG.info("throughput Pipe/File = %.3f (target >= %.2f: %s)", ratio, MIN_RATIO, "met" if ratio >= MIN_RATIO
             else "NOT met")
    LOG.info("held-out mAP Pipe - File = %+.4f (target within %.2f: %s)", gap, MAX_MAP_GAP,
             "met" if abs(gap) <= MAX_MAP_GAP else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**summary, "ratio": ratio, "map_gap": gap,
                                       "hyperparameters": hyperparameters}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
