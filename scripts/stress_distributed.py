#!/usr/bin/env python
"""``make stress-distributed``: N workers must give the weights of one worker with N times the
batch (FP32, CPU, relative difference below 1e-4), whatever the load. Runs a short training job
(vgg-16 at 96, no batch norm, no augmentation) many times under each kind of stress and compares
every result with a one-worker run of the same job; prints runs, failures and the largest
relative difference per variant.

Variants:
  broadcast  the start of every distributed job, without the training around it, so it can be
             repeated often: 2 real Horovod workers build the network, materialize it (deferred
             initialization and one inference forward, as training does) and at once broadcast
             rank 0's parameters; a trial fails when a worker ends with values rank 0 never had.
             One run is --trials such starts. By default the network has 300 classes and each
             worker 2 engine threads: the forward's last layers then run side by side, late,
             which is when a read outside the engine met a weight's in-place reorder (with 3
             classes and 1 thread, as training runs, it did in about 2% of starts).
  idle       a training job of 2 workers on one host, nothing else running.
  hogs       the same beside 2 busy processes (the machine's cores taken).
  two-hosts  2 launchers on loopback addresses, 1 worker each (the cross-host path), beside 2
             busy processes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon
import numpy as np

from script_helpers import free_port
from ssd_detector.data.synthetic import SynthSpec, generate
from ssd_detector.sagemaker_env import write_job

LOG = logging.getLogger("stress_distributed")
VARIANTS = ("broadcast", "idle", "hogs", "two-hosts")
LIMIT = 1e-4
HOSTS = ["127.0.0.1", "127.0.0.2"]
CLI = [sys.executable, "-m", "ssd_detector.cli", "train"]


def hyperparameters(batch: int, clip: float, ema: float) -> dict[str, str]:
    hyper = {"num_classes": "3", "base_network": "vgg-16", "image_shape": "96", "mini_batch_size": str(batch),
             "learning_rate": "0.001", "use_pretrained_model": "0", "epochs": "1", "augmentation": "none"}
    if clip > 0:
        hyper["max_gradient_norm"] = str(clip)
    if ema > 0:
        hyper["ema_decay"] = str(ema)
    return hyper


def load_params(base: Path) -> dict[str, np.ndarray]:
    return {k: v.asnumpy() for k, v in mx.nd.load(str(base / "model/model_algo_1-0000.params")).items()}


def run(processes: list[tuple[Path, dict[str, str]]], timeout: float = 900) -> Path:
    """Starts one `train` per (base, env) and waits for all; -> the first base (rank 0's)."""
    started = []
    for base, env in processes:
        full = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "0", **env}
        log = open(base.parent / f"{base.name}.log", "w")
        started.append((subprocess.Popen(CLI, env=full, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for process, log in started:
        try:
            code: int | str = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = "timeout"
        log.close()
        if code != 0:
            failed.append(f"{log.name} (exit {code})")
    if failed:
        raise RuntimeError("training failed: " + ", ".join(failed))
    return processes[0][0]


def relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, list[tuple[float, str]]]:
    """The larger of the whole model's relative difference and the largest parameter's, with each
    parameter's difference relative to its own size, the largest first (to name the layers).
    Small parameters get a floor of 1e-3 per element (RMS): batch 4 and batch 8 round
    differently, and on some CPUs one element of a 1,024-element bias near 0 (vgg-16's fc6, norm
    1.3e-3) ends 2e-7 apart while the whole model agrees to 6e-9."""
    if a.keys() != b.keys():
        raise RuntimeError(f"parameter names differ: {sorted(a.keys() ^ b.keys())[:5]}")
    flat_a = np.concatenate([a[k].ravel() for k in sorted(a)])
    flat_b = np.concatenate([b[k].ravel() for k in sorted(a)])
    apart = sorted(((float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(a[k]), 1e-3 * np.sqrt(a[k].size))), k)
                    for k in a), reverse=True)
    whole = float(np.linalg.norm(flat_a - flat_b) / np.linalg.norm(flat_a))
    return max(whole, apart[0][0]), apart


class Hogs:
    """Busy processes that take the machine's cores while a run trains."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Hogs":
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@dataclass
class Tally:
    runs: int = 0
    failures: int = 0  # failed runs; for the broadcast variant, failed trials
    trials: int = 0  # broadcast variant only
    failed_runs: int = 0  # broadcast variant: runs with at least one failed trial
    crashed: int = 0  # broadcast variant: runs whose workers died (a failed run too)
    largest: float = 0.0
    worst: str = ""
    seconds: list[float] = field(default_factory=list)

    def add(self, difference: float, worst: str, seconds: float, failed: int | None = None) -> None:
        self.runs += 1
        self.failures += int(difference >= LIMIT) if failed is None else failed
        self.seconds.append(seconds)
        if difference >= self.largest:
            self.largest, self.worst = difference, worst

    def line(self, variant: str) -> str:
        count = (f"runs {self.runs:>3} (failed {self.failed_runs:>3}, crashed {self.crashed:>3}), trials "
                 f"{self.trials:>4}" if self.failed_runs or self.trials else f"runs {self.runs:>3}")
        return (f"{variant:<10} {count}  failures {self.failures:>4}  largest relative difference "
                f"{self.largest:.2e} ({self.worst or '-'})  {np.mean(self.seconds):.0f} s per run")


def broadcast_worker(trials: int, classes: int) -> int:
    """One of the 2 workers of the broadcast variant (started by broadcast_run); rank 0 prints
    the failed trials and the largest relative difference as a JSON line."""
    from ssd_detector.model.ssd import build_ssd
    from ssd_detector.training.distributed import HorovodWorld

    world = HorovodWorld()
    failed, largest, worst = 0, 0.0, ""

    def started(seed: int) -> gluon.ParameterDict:
        """A network as a training job starts it: seeded, initialized and materialized."""
        mx.random.seed(seed)
        net = build_ssd("vgg-16", classes, 96)
        net.initialize(mx.init.Xavier(magnitude=2), ctx=[mx.cpu()])
        net.materialize(mx.cpu())  # deferred initialization, then one inference forward
        return net.collect_params()

    # Rank 0 starts a network in every trial, as a job does; the others receive into one network
    # started once (so rank 0 has the machine to itself, as on a host of its own).
    receiving = started(1) if world.rank else None
    for trial in range(trials):
        params = receiving if receiving is not None else started(1000 * trial)
        world.broadcast_parameters(params)  # at once, as if the Python thread had run ahead of the engine
        mx.nd.waitall()
        names = sorted(params)
        # Rank 0's true start, made again from its seed with nothing racing.
        truth = started(1000 * trial) if world.rank == 0 else None
        mx.nd.waitall()
        true_norms = world.broadcast_array(np.array([np.linalg.norm(truth[n].data().asnumpy())
                                                     if truth is not None else 0.0 for n in names]))
        differences = []
        for name, true_norm in zip(names, true_norms):
            got = params[name].data().asnumpy()
            if truth is not None:  # rank 0 keeps what it sent: compare with what it had
                difference = np.linalg.norm(got - truth[name].data().asnumpy())
            else:  # rank 1 compares the norms of what it got with those of rank 0's start
                difference = abs(np.linalg.norm(got) - true_norm)
            differences.append(difference / max(true_norm, 1e-12))
        difference = world.allreduce_sum(np.array(differences))
        at = int(np.argmax(difference))
        failed += int(difference[at] >= LIMIT)
        if difference[at] >= largest:
            largest, worst = float(difference[at]), names[at]
    if world.rank == 0:
        print("BROADCAST " + json.dumps({"failed": failed, "trials": trials, "largest": largest, "worst": worst}),
              flush=True)
    world.shutdown()
    return 0


def broadcast_run(work: Path, trials: int, classes: int = 300, engine_threads: int = 2, workers: int = 2) -> dict:
    """Starts the workers of the broadcast variant with our own rendezvous; -> rank 0's result."""
    from ssd_detector.training import distributed

    port = free_port()
    slots = distributed.plan(["127.0.0.1"], workers)
    rendezvous = distributed.Rendezvous(port, slots)
    processes: list[tuple[subprocess.Popen, Any]] = []
    try:
        for slot in slots:
            env = {**os.environ, **distributed.worker_environment(slot, "127.0.0.1", port, "lo", 120)}
            if engine_threads:
                env.update(MXNET_CPU_WORKER_NTHREADS=str(engine_threads), OMP_NUM_THREADS=str(engine_threads))
            log = open(work / f"broadcast-rank{slot.rank}.log", "w+")
            processes.append((subprocess.Popen([sys.executable, __file__, "--broadcast-worker", str(trials),
                                                "--classes", str(classes)],
                                               env=env, stdout=log, stderr=subprocess.STDOUT), log))
        codes = [process.wait(timeout=1800) for process, _ in processes]
        outputs = []
        for _, log in processes:
            log.seek(0)
            outputs.append(log.read())
    finally:
        for process, log in processes:  # none left behind, even after a timeout
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
        rendezvous.stop()
    if any(codes):  # e.g. MXNet's "Check failed: !IsMKLDNNData()" when a weight changed layout mid-read
        errors = [line for o in outputs for line in o.splitlines() if "Error" in line and "shut down" not in line]
        raise RuntimeError(f"broadcast workers exited {codes}:\n" + "\n".join(o[-2000:] for o in outputs)
                           + "\n" + (errors[-1] if errors else ""))
    line = next(line for line in outputs[0].splitlines() if line.startswith("BROADCAST "))
    return json.loads(line.split(" ", 1)[1])


def stress_broadcast(runs: int, trials: int, classes: int, engine_threads: int, work: Path) -> Tally:
    tally = Tally()
    for i in range(runs):
        started = time.monotonic()
        try:
            result = broadcast_run(work, trials, classes, engine_threads)
        except RuntimeError as error:  # a worker died: MXNet itself can catch the race (see broadcast_run)
            tally.crashed += 1
            tally.failed_runs += 1
            tally.runs += 1
            tally.seconds.append(time.monotonic() - started)
            LOG.info("broadcast run %d: CRASHED: %s", i + 1, str(error).splitlines()[-1][:300])
            continue
        tally.add(result["largest"], result["worst"], time.monotonic() - started, failed=result["failed"])
        tally.trials += trials
        tally.failed_runs += result["failed"] > 0
        LOG.info("broadcast run %d: %d of %d trials failed, largest relative difference %.2e (%s)", i + 1,
                 result["failed"], trials, result["largest"], result["worst"])
    return tally


def stress(variant: str, runs: int, work: Path, data: Path, clip: float, ema: float,
           references: dict[int, dict[str, np.ndarray]]) -> Tally:
    tally = Tally()
    two_hosts = variant == "two-hosts"
    batch = 8  # per host: 2 workers x 4 on one host, or 1 worker x 8 on each of two hosts
    reference_batch = 16 if two_hosts else 8
    if reference_batch not in references:
        base = write_job(work / f"one-{reference_batch}" / "opt_ml", hyperparameters(reference_batch, clip, ema),
                         {"train": data / "train"}).base
        references[reference_batch] = load_params(run([(base, {})]))
    for i in range(runs):
        root = work / f"{variant}-{i}"
        port = str(free_port())
        hyper = hyperparameters(batch, clip, ema)
        if two_hosts:
            jobs = [(write_job(root / host, hyper, {"train": data / "train"},
                               resource_config={"current_host": host, "hosts": HOSTS,
                                                "network_interface_name": "lo"}).base,
                     {"SSD_RENDEZVOUS_PORT": port}) for host in HOSTS]
        else:
            jobs = [(write_job(root / "opt_ml", hyper, {"train": data / "train"}).base,
                     {"SSD_WORKERS_PER_HOST": "2", "SSD_RENDEZVOUS_PORT": port})]
        started = time.monotonic()
        with Hogs(2 if variant in ("hogs", "two-hosts") else 0):
            base = run(jobs)
        difference, apart = relative_difference(references[reference_batch], load_params(base))
        worst = apart[0][1]
        tally.add(difference, worst, time.monotonic() - started)
        LOG.info("%s run %d: relative difference %.2e (largest in %s)%s", variant, i + 1, difference, worst,
                 "  FAILED" if difference >= LIMIT else "")
        shutil.rmtree(root)
    return tally


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="runs per variant (default 50)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--max-gradient-norm", type=float, default=0.0, help="clip every update (e.g. 0.05)")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="keep a weight average (e.g. 0.9)")
    parser.add_argument("--trials", type=int, default=10, help="starts per run of the broadcast variant (default 10)")
    parser.add_argument("--classes", type=int, default=300,
                        help="classes of the broadcast variant's network (default 300: larger class heads "
                             "slow the end of the forward, where the race was)")
    parser.add_argument("--engine-threads", type=int, default=2,
                        help="MXNET_CPU_WORKER_NTHREADS and OMP_NUM_THREADS of the broadcast variant's workers "
                             "(default 2: two engine threads run the forward's last layers side by side; "
                             "0 leaves both as training sets them)")
    parser.add_argument("--broadcast-worker", type=int, metavar="TRIALS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.broadcast_worker is not None:
        return broadcast_worker(args.broadcast_worker, args.classes)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.runs < 1:
        parser.error(f"unknown variant(s) {unknown}" if unknown else f"--runs {args.runs} must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="ssd-stress-") as tmp:
        work = Path(tmp)
        data = work / "data"
        generate(data, SynthSpec(train=40, validation=8, classes=3, width=96, height=80, seed=11, format="recordio"))
        references: dict[int, dict[str, np.ndarray]] = {}
        tallies = {v: stress_broadcast(args.runs, args.trials, args.classes, args.engine_threads, work) if v == "broadcast"
                   else stress(v, args.runs, work, data, args.max_gradient_norm, args.ema_decay, references)
                   for v in variants}
    print(f"max_gradient_norm={args.max_gradient_norm:g} ema_decay={args.ema_decay:g}; a run fails at a relative "
          f"difference of {LIMIT:g} or more")
    for variant, tally in tallies.items():
        print(tally.line(variant))
    return 1 if any(t.failures for t in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
