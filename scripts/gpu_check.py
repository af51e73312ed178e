#!/usr/bin/env python
"""Checks the GPU image on a GPU host, inside the image (scripts/gpu_check.sh starts it there):

  environment   `ssd-detector info` and nvidia-smi: MXNet's CUDA features, GPUs seen, Horovod's NCCL
  train_steps   SSD training steps on every GPU of the host at once (the batch split across them, as
                `train` does), FP32 and AMP (MXNet 1.9's automatic mixed precision, float16), for
                resnet-50@512 and vgg-16@300: images/s per GPU, on one batch held on the devices
                (the network's speed; the input pipeline is bench_train's subject)
  allreduce     two Horovod workers on one host (horovodrun, Gloo controller) allreducing GPU
                tensors, which Horovod hands to NCCL: the sum checked, bandwidth measured
  serve         `ssd-detector serve` with one request, on the GPUs
  bench_train   `scripts/bench.py train` against GluonCV (GluonCV is installed for it when missing)

Every section records its result or its error; the findings go to one JSON file and a summary
is printed. `--device cpu --quick` runs every section on the CPU with a tiny network: that is how
the script itself is tested on machines without a GPU.
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
import traceback
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOG = logging.getLogger("gpu_check")
# name: (base network, input size, images per device in a step)
CONFIGS = {"resnet-50@512": ("resnet-50", 512, 8), "vgg-16@300": ("vgg-16", 300, 16)}
QUICK_CONFIGS = {"mobilenet-0.25@64": ("mobilenet-0.25", 64, 4)}
ALLREDUCE_MB = 64


def run_json(command: list[str], timeout: float, env: dict | None = None) -> dict:
    """A child that prints one JSON line last; its stderr tail on failure."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    # horovodrun prefixes each worker's lines with "[rank]<stdout>:".
    lines = [line[line.index("{"):] for line in done.stdout.splitlines()
             if line.strip().startswith("{") or ("<stdout>:{" in line)]
    if not lines:
        raise RuntimeError(f"no JSON in the output: {done.stdout[-500:]} {done.stderr[-1000:]}")
    return json.loads(lines[-1])


def contexts(device: str):
    import mxnet as mx

    if device == "cpu":
        return [mx.cpu()]
    count = mx.context.num_gpus()
    if count == 0:
        raise RuntimeError("MXNet sees no GPU (is the NVIDIA container runtime in use: docker run --gpus all?)")
    return [mx.gpu(i) for i in range(count)]


# --- one child per (network, precision): AMP patches MXNet's operators for the whole process ---

def train_steps_child(args: argparse.Namespace) -> int:
    import mxnet as mx
    from mxnet import autograd, gluon

    # This file's folder is the first entry of sys.path, so the benchmarks package is found.
    from benchmarks.data import ensure_data
    from benchmarks.train import training_for

    base, size, per_device = {**CONFIGS, **QUICK_CONFIGS}[args.config]
    amp = None
    if args.precision == "amp":
        from mxnet.contrib import amp

        # float16 where it is safe, float32 elsewhere (MXNet's lists), before the network exists. The
        # CPU has no float16 GEMM: there (the script's own check) bfloat16 stands in.
        amp.init(target_dtype="bfloat16" if args.device == "cpu" else "float16")
    devices = contexts(args.device)
    work = Path(args.work)
    rec = ensure_data(work / "data", 4 * per_device * len(devices), max(size, 64), max(size * 3 // 4, 48))
    training = training_for(rec, base, size, per_device * len(devices), 1, work / "jobs", devices)
    if amp is not None:
        amp.init_trainer(training.trainer)
    loader = training.train_loader
    try:
        batch = next(iter(loader))
    finally:
        loader.close()
    # One batch, put on the devices once: the timed steps measure the network and the update.
    xs = gluon.utils.split_and_load(batch.images, devices)
    cts = gluon.utils.split_and_load(batch.cls_targets, devices)
    bts = gluon.utils.split_and_load(batch.box_targets, devices)
    positives = float(max(1, (batch.cls_targets > 0).sum()))

    def step() -> float:
        with autograd.record():
            parts = [training.loss(*training.net(x), ct, bt, mx.nd.array([positives], ctx=x.context))
                     for x, ct, bt in zip(xs, cts, bts)]
            totals = [c + b for c, b in parts]
            if amp is not None:
                # The loss scaled (dynamically, against float16 underflow) inside the recording.
                with amp.scale_loss(totals, training.trainer) as scaled:
                    autograd.backward(scaled)
        if amp is None:
            autograd.backward(totals)
        training.trainer.step(1)
        return sum(float(c.asscalar()) + float(b.asscalar()) for c, b in parts)  # waits for the devices

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    seconds = time.perf_counter() - start
    images = args.steps * per_device * len(devices)
    print(json.dumps({"config": args.config, "precision": args.precision, "devices": [str(d) for d in devices],
                      "amp_dtype": None if amp is None else "bfloat16" if args.device == "cpu" else "float16",
                      "images_per_device": per_device, "images_per_second": images / seconds,
                      "images_per_second_per_device": images / seconds / len(devices),
                      "losses_finite": all(v == v and abs(v) < float("inf") for v in losses)}))
    return 0


def allreduce_child(args: argparse.Namespace) -> int:
    import horovod.mxnet as hvd
    import mxnet as mx

    hvd.init()
    ctx = mx.cpu() if args.device == "cpu" else mx.gpu(hvd.local_rank())
    size_mb = 1 if args.quick else ALLREDUCE_MB
    tensor = mx.nd.full((size_mb * 2 ** 20 // 4,), hvd.rank() + 1, ctx=ctx, dtype="float32")
    total = hvd.allreduce(tensor, average=False, name="check")
    expected = hvd.size() * (hvd.size() + 1) / 2
    correct = bool((total == expected).min().asscalar())
    repeats = 3 if args.quick else 20
    mx.nd.waitall()
    start = time.perf_counter()
    for i in range(repeats):
        hvd.allreduce_(tensor, average=True, name=f"timed{i}")
    mx.nd.waitall()
    seconds = (time.perf_counter() - start) / repeats
    if hvd.rank() == 0:
        # Bus bandwidth as nccl-tests defines it for allreduce: bytes * 2 (n - 1) / n per second.
        bus = size_mb / 1024 * 2 * (hvd.size() - 1) / hvd.size() / seconds
        print(json.dumps({"workers": hvd.size(), "device": str(ctx), "nccl_built": int(hvd.nccl_built()),
                          "sum_correct": correct, "megabytes": size_mb, "seconds": seconds, "bus_gb_per_s": bus}))
    hvd.shutdown()
    return 0 if correct else 1


# --- the sections, run by the parent ---

def section_environment(args: argparse.Namespace) -> dict:
    found = {"info": run_json([sys.executable, "-m", "ssd_detector.cli", "info"], 300)}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
        found["nvidia_smi"] = query.stdout.strip().splitlines() or query.stderr.strip()
    return found


def section_train_steps(args: argparse.Namespace) -> dict:
    results = {}
    for config in (QUICK_CONFIGS if args.quick else CONFIGS):
        for precision in ("fp32", "amp"):
            command = [sys.executable, __file__, "--child", "train-steps", "--config", config, "--precision", precision,
                       "--device", args.device, "--work", str(args.work), "--steps", str(args.steps),
                       "--warmup", str(args.warmup)]
            try:
                results[f"{config} {precision}"] = run_json(command, 900)
            except Exception as exc:  # recorded; the other sections still run
                results[f"{config} {precision}"] = {"error": str(exc)}
    return results


def section_allreduce(args: argparse.Namespace) -> dict:
    if args.device == "gpu":
        import mxnet as mx

        if mx.context.num_gpus() < 2:
            return {"skipped": f"needs 2 GPUs, this host has {mx.context.num_gpus()}"}
    horovodrun = shutil.which("horovodrun") or str(Path(sys.executable).parent / "horovodrun")
    command = [horovodrun, "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, __file__, "--child",
               "allreduce", "--device", args.device] + (["--quick"] if args.quick else [])
    return run_json(command, 600)


def section_serve(args: argparse.Namespace) -> dict:
    import numpy as np

    from ssd_detector.data.images import encode
    from ssd_detector.data.synthetic import SynthSpec, make_image

    base, size, _ = next(iter((QUICK_CONFIGS if args.quick else CONFIGS).values()))
    model = Path(args.work) / "serve-model"
    subprocess.run([sys.executable, "-m", "ssd_detector.cli", "init-model", str(model), "--num-classes", "5",
                    "--base-network", base, "--image-shape", str(size)], check=True, capture_output=True, timeout=600)
    port = 18080
    env = {**os.environ, **({"SSD_NUM_GPUS": "0"} if args.device == "cpu" else {})}
    log_path = Path(args.work) / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "ssd_detector.cli", "serve", "--model-dir", str(model),
                                   "--port", str(port), "--workers", "1"], stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(1)
        picture = encode(make_image(np.random.default_rng(0), SynthSpec(1, 0, 5, width=size, height=size))[0], "jpeg")
        start = time.perf_counter()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=picture,
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=120) as response:
            rows = json.loads(response.read())["prediction"]
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    logged = [line for line in log_path.read_text().splitlines() if "serving " in line]
    return {"rows": len(rows), "first_request_seconds": seconds, "server_line": logged[-1] if logged else None}


def section_bench_train(args: argparse.Namespace) -> dict:
    if args.quick:
        return {"skipped": "--quick"}
    env = dict(os.environ)
    try:
        import gluoncv  # only whether it is there
    except ImportError:
        # Into the scratch folder, not the image's venv (the check runs as the calling user).
        # As scripts/install.sh --bench does: GluonCV asks for opencv-python, which would shadow
        # the image's opencv-python-headless, so it comes without dependencies, and these with it.
        target = Path(args.work) / "pydeps"
        pip = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "-c",
               str(HERE.parent / "docker/constraints.txt")]
        for packages in (["--no-deps", "gluoncv"], ["tqdm", "portalocker", "Pillow", "scipy<=1.15.3", "yacs", "autocfg"]):
            install = subprocess.run(pip + packages, capture_output=True, text=True, timeout=600)
            if install.returncode != 0:
                return {"skipped": f"GluonCV could not be installed: {install.stderr.strip()[-500:]}"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(target)]))
    output = Path(args.work) / "bench-train.json"
    done = subprocess.run([sys.executable, str(HERE / "bench.py"), "train", "--data", str(Path(args.work) / "bench-data"),
                           "--work", str(Path(args.work) / "bench-train"), "--output", str(output),
                           "--workers", str(max(1, (os.cpu_count() or 2) - 1))],
                          capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-1500:] + done.stderr[-1500:])
    return {"log": done.stdout.strip().splitlines(), "results": json.loads(output.read_text())}


SECTIONS = {"environment": section_environment, "train_steps": section_train_steps, "allreduce": section_allreduce,
            "serve": section_serve, "bench_train": section_bench_train}


def summary(findings: dict) -> list[str]:
    lines = []
    for name, result in findings.get("train_steps", {}).items():
        if not isinstance(result, dict):
            continue
        if "images_per_second_per_device" in result:
            lines.append(f"{name:28s} {result['images_per_second_per_device']:8.1f} img/s per device "
                         f"({len(result['devices'])} device(s), {result['images_per_device']} images each)")
        else:
            lines.append(f"{name:28s} {result.get('skipped') or 'FAILED: ' + str(result.get('error'))[:200]}")
    for name in ("allreduce", "serve", "bench_train"):
        if name not in findings:
            continue
        result = findings[name]
        status = "FAILED: " + str(result["error"])[:300] if "error" in result else \
            "skipped: " + result["skipped"] if "skipped" in result else "ok"
        lines.append(f"{name:28s} {status}")
    if "bus_gb_per_s" in findings.get("allreduce", {}):
        lines.append(f"{'allreduce bus bandwidth':28s} {findings['allreduce']['bus_gb_per_s']:.2f} GB/s")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--quick", action="store_true", help="a tiny network and data: checks the script itself")
    parser.add_argument("--output", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per network and precision")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--child", choices=("train-steps", "allreduce"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=("fp32", "amp"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.child == "train-steps":
        return train_steps_child(args)
    if args.child == "allreduce":
        return allreduce_child(args)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="gpu-check-")
    args.work = args.work or Path(scratch.name)
    args.work.mkdir(parents=True, exist_ok=True)
    findings: dict = {"device": args.device, "quick": args.quick}
    started = time.monotonic()
    for name, section in SECTIONS.items():
        if name not in args.sections.split(","):
            continue
        LOG.info("gpu_check: %s ...", name)
        begun = time.monotonic()
        try:
            findings[name] = section(args)
        except Exception as exc:  # recorded; the other sections still run
            findings[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        findings[name + "_seconds"] = round(time.monotonic() - begun, 1)
    findings["seconds"] = round(time.monotonic() - started, 1)
    findings["summary"] = summary(findings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(findings, indent=2))
    for line in findings["summary"]:
        LOG.info("%s", line)
    LOG.info("gpu_check: %.0f s; findings in %s", findings["seconds"], args.output)
    failed = [name for name in SECTIONS if isinstance(findings.get(name), dict) and "error" in findings[name]]
    failed += [f"train_steps {k}" for k, v in findings.get("train_steps", {}).items() if isinstance(v, dict) and "error" in v]
    if scratch:
        scratch.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
