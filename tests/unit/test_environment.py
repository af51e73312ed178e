"""`ssd-detector info` and the GPU image's CPU fallback test, on this (CPU) installation."""
from __future__ import annotations

import json
import subprocess
import sys

from ssd_detector.environment import IMAGE_VARIANT_VAR, describe, gpu_image_without_gpu


def test_info_reports_this_installation():
    done = subprocess.run([sys.executable, "-m", "ssd_detector.cli", "info"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info == describe() | {"image_variant": info["image_variant"]}
    assert info["mxnet"]["distribution"] == "mxnet" and info["mxnet"]["features"]["CUDA"] is False
    assert info["mxnet"]["features"]["MKLDNN"] is True and info["gpus"] == 0
    assert info["horovod"]["gloo"] is True and info["horovod"]["nccl"] == 0 and info["horovod"]["mpi"] is False
    assert info["cuda_wheels"] == {}


def test_only_the_gpu_image_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setenv(IMAGE_VARIANT_VAR, "gpu")
    assert gpu_image_without_gpu(0) and not gpu_image_without_gpu(2)
    monkeypatch.setenv(IMAGE_VARIANT_VAR, "cpu")
    assert not gpu_image_without_gpu(0)
    monkeypatch.delenv(IMAGE_VARIANT_VAR)
    assert not gpu_image_without_gpu(0)
