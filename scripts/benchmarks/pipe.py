"""File mode against Pipe mode: the same synthetic data and recipe trained through the
container's real entry point (`ssd-detector train` on a SageMaker-style tree), from RecordIO files
and streamed as a Ground Truth augmented manifest through FIFOs written as SageMaker writes them
(scripts/pipe_feed.py).

Throughput: short jobs of the two modes in turn (this machine's speed drifts over minutes, so
the modes alternate), each epoch after the first of each job counted; the ratio of the medians.
Accuracy: full jobs per mode with bench_accuracy's recipe (one per `seed` hyperparameter;
`--seeds 3` compares means of three), then VOC07 mAP of each saved model on a held-out split
(another data seed, never seen in training or model selection).

Targets: throughput ratio Pipe/File >= 0.95; held-out mAP within 0.02. Run with `make bench-pipe`.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from pipe_feed import PipeFeeder, manifest_pass

from .common import held_out, job_tree, make_sets, train

LOG = logging.getLogger("bench_pipe")
# bench_accuracy's recipe, long enough for the validation mAP to level off: before that, two runs
# that differ only in the order of the images differ by more than the 0.02 compared here.
HYPERPARAMETERS = {
    "num_classes": "5", "base_network": "mobilenet-0.25", "image_shape": "256", "mini_batch_size": "16",
    "epochs": "24", "optimizer": "adam", "learning_rate": "0.01", "lr_scheduler_step": "17,22",
    "lr_scheduler_factor": "0.1", "use_pretrained_model": "0", "augmentation": "light",
}
SPEED_EPOCHS = 3  # per throughput job; the first is not counted (hybridization, cold pipeline)
ATTRIBUTES = ["source-ref", "bounding-box"]
MIN_RATIO = 0.95
MAX_MAP_GAP = 0.02


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("build/bench/pipe"))
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=int(HYPERPARAMETERS["epochs"]))
    parser.add_argument("--rounds", type=int, default=2, help="throughput jobs per mode, alternating")
    parser.add_argument("--speed-only", action="store_true", help="skip the two accuracy jobs")
    parser.add_argument("--seeds", type=int, default=1,
                        help="accuracy jobs per mode, with seeds 0, 1, ...: the modes' means are compared, "
                             "and the spread within a mode shows what the randomness alone moves")
    parser.add_argument("--output", type=Path, default=Path("build/bench/pipe.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    data, test_dir = make_sets(args.root, "shapes", args.train, args.validation, args.test, seed=41, data_format="both")
    hyperparameters = {**HYPERPARAMETERS, "epochs": str(args.epochs), "num_training_samples": str(args.train)}
    steps = [int(e * args.epochs / int(HYPERPARAMETERS["epochs"])) for e in (17, 22)]
    hyperparameters["lr_scheduler_step"] = ",".join(str(max(1, s)) for s in steps)
    results: dict[str, list] = {"file": [], "pipe": []}
    speed = {**hyperparameters, "epochs": str(SPEED_EPOCHS), "lr_scheduler_step": ""}
    for round_index in range(args.rounds):
        for mode in ("file", "pipe"):
            _, throughputs, _ = run_mode(mode, args.root, data, speed, f"speed-{round_index}")
            results[mode] += throughputs[1:]
            LOG.info("throughput round %d, %s mode: %s images/s", round_index, mode,
                     ", ".join(f"{t:.1f}" for t in throughputs[1:]))
    summary: dict = {mode: {"throughput": round(statistics.median(values), 2)} for mode, values in results.items()}
    ratio = summary["pipe"]["throughput"] / summary["file"]["throughput"]
    if not args.speed_only:
        for mode in ("file", "pipe"):
            maps = []
            for seed in range(args.seeds):
                wall, _, model = run_mode(mode, args.root, data, {**hyperparameters, "seed": str(seed)},
                                          f"accuracy-{seed}")
                maps.append(round(held_out(model, test_dir)["map"], 4))
                LOG.info("%s mode, seed %d: held-out mAP %.4f after %.0f s", mode, seed, maps[-1], wall)
            summary[mode].update(held_out_maps=maps, held_out_map=round(statistics.mean(maps), 4))
    for mode, figures in summary.items():
        LOG.info("%-4s mode: %.1f images/s (median of %d epochs)%s", mode, figures["throughput"], len(results[mode]),
                 f", held-out mAP {figures['held_out_map']:.4f} (mean of {figures['held_out_maps']})"
                 if "held_out_map" in figures else "")
    LOG.info("throughput Pipe/File = %.3f (target >= %.2f: %s)", ratio, MIN_RATIO, "met" if ratio >= MIN_RATIO
             else "NOT met")
    gap = None
    if not args.speed_only:
        gap = summary["pipe"]["held_out_map"] - summary["file"]["held_out_map"]
        LOG.info("held-out mAP Pipe - File = %+.4f (target within %.2f: %s)", gap, MAX_MAP_GAP,
                 "met" if abs(gap) <= MAX_MAP_GAP else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**summary, "ratio": ratio, "map_gap": gap,
                                       "hyperparameters": hyperparameters}, indent=2))
    return 0


def run_mode(mode: str, root: Path, data: Path, hyperparameters: dict, name: str) -> tuple[float, list[float], Path]:
    """One job in File mode (RecordIO files) or Pipe mode (the manifests, fed through FIFOs) ->
    its wall time, its epochs' throughputs and its model folder."""
    if mode == "file":
        channel = {"TrainingInputMode": "File", "ContentType": "application/x-recordio"}
        base = job_tree(root / f"{name}-file", hyperparameters,
                        {split: data / "recordio" / split for split in ("train", "validation")},
                        {"train": channel, "validation": channel})
        run = train(base, root / f"{name}-file.log")
        return run.wall_seconds, run.values("train:throughput"), base / "model"
    channel = {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio", "RecordWrapperType": "RecordIO",
               "S3DistributionType": "FullyReplicated"}
    base = job_tree(root / f"{name}-pipe", hyperparameters, None, {"train": channel, "validation": channel})
    feeders = [PipeFeeder(base / "input/data", split,
                          manifest_pass(data / "manifest" / f"{split}.manifest", ATTRIBUTES)).start()
               for split in ("train", "validation")]
    try:
        run = train(base, root / f"{name}-pipe.log")
        return run.wall_seconds, run.values("train:throughput"), base / "model"
    finally:
        for feeder in feeders:
            feeder.stop()
