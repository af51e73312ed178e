"""Distributed scaling on this machine: training throughput with 1 and 2 Horovod workers (the
real `train` entry point and launcher) and the time to allreduce the model's gradients.

1 worker uses every core; 2 workers share them (each its own process and data worker), so on a
CPU-only machine the efficiency says what the distribution itself costs, not what 2 GPUs give.
Throughput comes from the job's own #throughput_metric lines after the first (warm-up) epoch.
Run with `make bench-scaling`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from script_helpers import free_port

from .common import BENCH, job_tree, train

LOG = logging.getLogger("bench_scaling")



def train_throughput(root: Path, data: Path, workers: int, hyperparameters: dict) -> float:
    base = job_tree(root / f"job-{workers}", hyperparameters, {d.name: d for d in data.iterdir() if d.is_dir()})
    run = train(base, root / f"job-{workers}.log", {"SSD_WORKERS_PER_HOST": str(workers),
                                                   "SSD_RENDEZVOUS_PORT": str(free_port())}, budget=3600)
    values = run.values("train:throughput")
    return sum(values[1:]) / len(values[1:])  # epoch 0 warms up


def allreduce_worker(base_network: str, image_shape: int, rounds: int) -> None:
    """Runs inside each Horovod process: allreduce gradients shaped like the model's."""
    import horovod.mxnet as hvd
    import mxnet as mx

    from ssd_detector.model.ssd import build_ssd

    hvd.init()
    net = build_ssd(base_network, 5, image_shape)
    net.initialize()
    net.materialize()
    grads = [mx.nd.ones(p.shape) for p in net.collect_params().values() if p.grad_req != "null"]
    size_mb = sum(g.size for g in grads) * 4 / 1e6
    times = []
    for step in range(rounds + 2):
        start = time.perf_counter()
        for i, g in enumerate(grads):
            hvd.allreduce_(g, average=True, name=f"g{i}")
        mx.nd.waitall()
        if step >= 2:
            times.append(time.perf_counter() - start)
    if hvd.rank() == 0:
        print(json.dumps({"seconds": sorted(times)[len(times) // 2], "megabytes": size_mb, "tensors": len(grads)}))
    hvd.shutdown()


def allreduce_time(base_network: str, image_shape: int, rounds: int) -> dict:
    from ssd_detector.training import distributed

    port = free_port()
    slots = distributed.plan(["localhost"], 2)
    rendezvous = distributed.Rendezvous(port, slots)
    try:
        processes = []
        for slot in slots:
            env = {**os.environ, **distributed.worker_environment(slot, "127.0.0.1", port, "lo", 120),
                   "OMP_NUM_THREADS": "1"}
            processes.append(subprocess.Popen(
                [*BENCH, "scaling", "--allreduce-worker", "--base-network", base_network,
                 "--image-shape", str(image_shape), "--rounds", str(rounds)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        outputs = [p.communicate(timeout=600)[0] for p in processes]
        if any(p.returncode for p in processes):
            raise RuntimeError("allreduce workers failed")
        return json.loads(next(o for o in outputs if o.strip()).strip().splitlines()[-1])
    finally:
        rendezvous.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-network", default="mobilenet-0.25")
    parser.add_argument("--image-shape", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="mini_batch_size (per host)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20, help="allreduce rounds timed")
    parser.add_argument("--root", type=Path, default=Path("build/bench/scaling"))
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allreduce_worker:
        allreduce_worker(args.base_network, args.image_shape, args.rounds)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from ssd_detector.data.synthetic import SynthSpec, generate

    data = args.root / "data"
    if not (data / "train").exists():
        generate(data, SynthSpec(train=args.images, validation=0, classes=5, width=320, height=240, seed=5,
                                 format="recordio"))
    hyperparameters = {"num_classes": "5", "base_network": args.base_network, "image_shape": str(args.image_shape),
                       "mini_batch_size": str(args.batch), "epochs": str(args.epochs), "use_pretrained_model": "0",
                       "learning_rate": "0.01"}
    LOG.info("%s@%d, mini_batch_size %d, %d images, %d epochs (first one not counted), %d CPUs",
             args.base_network, args.image_shape, args.batch, args.images, args.epochs, os.cpu_count() or 1)
    one = train_throughput(args.root, data, 1, hyperparameters)
    two = train_throughput(args.root, data, 2, hyperparameters)
    reduce = allreduce_time(args.base_network, args.image_shape, args.rounds)
    efficiency = two / (2 * one)
    step = args.batch / two  # seconds per update of the 2-worker job
    share = reduce["seconds"] / step
    LOG.info("1 worker:  %.1f img/s (all cores)", one)
    LOG.info("2 workers: %.1f img/s on the same cores: %.2fx one worker", two, two / one)
    LOG.info("scaling efficiency against 2 independent devices: %.0f%% (here both workers share the cores, "
             "so this bounds the machine, not the method)", 100 * efficiency)
    LOG.info("allreduce of the gradients (%d tensors, %.1f MB) over Gloo on loopback: %.1f ms per step (median), "
             "%.1f%% of a %.0f ms step", reduce["tensors"], reduce["megabytes"], reduce["seconds"] * 1e3,
             100 * share, step * 1e3)
    (args.root / "result.json").write_text(json.dumps({"one": one, "two": two, "efficiency": efficiency, "allreduce_share": share,
                                                       "allreduce": reduce}, indent=1))
    return 0
