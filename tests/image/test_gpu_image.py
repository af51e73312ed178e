"""The GPU image, checked on a machine without a GPU: every library that libmxnet.so and Horovod's
MXNet extension link resolves inside the image except the driver's libcuda.so.1 (the NVIDIA
container runtime mounts it), the CUDA libraries are the ones mxnet-cu112 was built for, Horovod
has NCCL, and without a driver the image trains and serves on the CPU, saying so.

Builds nothing: runs when the image exists (SSD_GPU_IMAGE, default ssd-detector:gpu) and is
skipped otherwise; `make image-gpu-check` builds the image and runs this file."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, generate, make_image
from ssd_detector.sagemaker_env import write_job

from docker_helpers import docker, name, request, wait_for_ping

IMAGE = os.environ.get("SSD_GPU_IMAGE", "ssd-detector:gpu")
STUB_LINE = "no NVIDIA driver in this container (libcuda.so.1 not found): running on the CPU"
SITE = "/opt/venv/lib/python3.11/site-packages"
HYPER = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "64", "mini_batch_size": "8",
         "epochs": "1", "learning_rate": "0.02", "use_pretrained_model": "0"}


@pytest.fixture(scope="module", autouse=True)
def gpu_image() -> None:
    if not shutil.which("docker") or docker("info", timeout=60).returncode != 0:
        pytest.skip("Docker cannot run on this machine (no engine answers `docker info`)")
    if docker("image", "inspect", IMAGE).returncode != 0:
        if os.environ.get("SSD_GPU_IMAGE"):
            pytest.fail(f"image {IMAGE} (SSD_GPU_IMAGE) does not exist; `make image-gpu-check` builds it")
        pytest.skip(f"no GPU image {IMAGE} on this machine (`make image-gpu-check` builds and checks one)")


def in_image(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A shell script in the image, past the entry point (so no CUDA stub unless asked)."""
    flags = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    return docker("run", "--rm", *flags, "--entrypoint", "bash", IMAGE, "-c", script, check=True)


def unresolved(ldd_output: str) -> set[str]:
    return {line.split()[0] for line in ldd_output.splitlines() if "not found" in line}


LINKED = f"{SITE}/mxnet/libmxnet.so {SITE}/horovod/mxnet/mpi_lib.cpython-311-x86_64-linux-gnu.so"


def test_everything_resolves_but_the_driver():
    out = in_image(f"for lib in {LINKED}; do echo \"== $lib\"; ldd \"$lib\"; done").stdout
    assert out.count("== ") == 2 and "=> " in out, out
    assert unresolved(out) == {"libcuda.so.1"}, out
    # The CUDA libraries come from the wheels in the venv, not from anywhere else.
    for soname in ("libcudart.so.11.0", "libcublas.so.11", "libcufft.so.10", "libcurand.so.10", "libcusolver.so.11",
                   "libnvrtc.so.11.2", "libnvToolsExt.so.1", "libcudnn.so.8", "libnccl.so.2"):
        paths = set(re.findall(rf"{re.escape(soname)} => (\S+)", out))
        assert paths and all(p.startswith(f"{SITE}/nvidia/") for p in paths), (soname, paths)
    # With the entry point's stand-in for the driver, nothing is missing.
    with_stub = in_image(f"for lib in {LINKED}; do ldd \"$lib\"; done", {"LD_LIBRARY_PATH": "/opt/cuda-stub"}).stdout
    assert unresolved(with_stub) == set(), with_stub


def test_cuda_versions_horovod_nccl_and_the_commands():
    result = docker("run", "--rm", IMAGE, "info", check=True)
    info = json.loads(result.stdout)
    assert STUB_LINE in result.stderr
    assert info["image_variant"] == "gpu" and info["gpus"] == 0, info
    assert info["mxnet"]["distribution"] == "mxnet-cu112" and info["mxnet"]["version"] == "1.9.1"
    assert all(info["mxnet"]["features"][f] for f in ("CUDA", "CUDNN", "NCCL", "CUDA_RTC")), info["mxnet"]
    wheels = info["cuda_wheels"]
    assert len(wheels) == 9, wheels

    def version(dist: str) -> tuple[int, ...]:
        return tuple(int(v) for v in wheels[dist].split(".")[:2])

    # mxnet-cu112 was built with CUDA 11.2 and cuDNN 8.1: CUDA 11 minor releases and cuDNN 8.x
    # releases from there on keep those sonames and ABIs.
    assert (11, 2) <= version("nvidia-cuda-runtime-cu11") < (12, 0)
    assert version("nvidia-cuda-nvrtc-cu11")[0] == 11 and version("nvidia-cublas-cu11")[0] == 11
    assert (8, 1) <= version("nvidia-cudnn-cu11") < (9, 0)
    assert version("nvidia-nccl-cu11")[0] == 2
    horovod = info["horovod"]
    nccl = tuple(int(v) for v in wheels["nvidia-nccl-cu11"].split("."))
    assert horovod["nccl"] == nccl[0] * 10000 + nccl[1] * 100 + nccl[2], (horovod, nccl)
    assert horovod["gloo"] and horovod["cuda"] and not horovod["mpi"], horovod
    paths = in_image("command -v train serve ssd-detector").stdout.split()
    assert paths == ["/opt/program/train", "/opt/program/serve", "/opt/venv/bin/ssd-detector"], paths


@pytest.mark.slow
def test_trains_and_serves_on_the_cpu_without_a_gpu(tmp_path: Path, free_port: int):
    data = tmp_path / "data"
    generate(data, SynthSpec(train=16, validation=4, classes=3, width=128, height=96, seed=4, format="recordio"))
    base = write_job(tmp_path / "opt_ml", HYPER, {name: data / name for name in ("train", "validation")}).base
    os.chmod(base, 0o777)
    result = docker("run", "--rm", "-v", f"{base}:/opt/ml", IMAGE, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert STUB_LINE in result.stderr and "the GPU image trains on the CPU" in result.stderr, result.stderr[-3000:]
    assert (base / "model/hyperparams.json").exists()

    container = name("gpu-serve")
    docker("run", "-d", "--name", container, "-p", f"127.0.0.1:{free_port}:8080", "-e",
           "SAGEMAKER_MODEL_SERVER_WORKERS=1", "-v", f"{base / 'model'}:/opt/ml/model:ro", IMAGE, "serve", check=True)
    try:
        wait_for_ping(free_port, lambda: docker("logs", container).stderr[-3000:])
        image = make_image(np.random.default_rng(1), SynthSpec(1, 0, 3))[0]
        status, body = request(free_port, "POST", "/invocations", encode(image, "jpeg"),
                               {"Content-Type": "image/jpeg"})
        assert status == 200, body
        rows = json.loads(body)["prediction"]
        assert rows and all(len(r) == 6 for r in rows)
        logs = docker("logs", container).stderr
        assert STUB_LINE in logs and "the GPU image serves on the CPU" in logs, logs[-3000:]
    finally:
        docker("rm", "-f", container)


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_sections(tmp_path: Path):
    """scripts/gpu_check.sh with GPU_CHECK_DEVICE=cpu: every section on the CPU, tiny network."""
    output = tmp_path / "findings" / "gpu-check.json"
    script = Path(__file__).resolve().parents[2] / "scripts/gpu_check.sh"
    done = subprocess.run(["bash", str(script), IMAGE, str(output)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GPU_CHECK_DEVICE": "cpu"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    findings = json.loads(output.read_text())
    assert findings["environment"]["info"]["mxnet"]["distribution"] == "mxnet-cu112"
    steps = findings["train_steps"]
    assert set(steps) == {"mobilenet-0.25@64 fp32", "mobilenet-0.25@64 amp"}, steps
    assert all(s["images_per_second_per_device"] > 0 and s["losses_finite"] for s in steps.values()), steps
    assert steps["mobilenet-0.25@64 amp"]["amp_dtype"] == "bfloat16"
    assert findings["allreduce"]["workers"] == 2 and findings["allreduce"]["sum_correct"], findings["allreduce"]
    assert findings["serve"]["rows"] > 0, findings["serve"]
    assert findings["bench_train"] == {"skipped": "--quick"}
    assert any("img/s per device" in line for line in findings["summary"])
