"""`ssd-detector info`, the GPU count and the GPU image's CPU fallback test, on this (CPU) installation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ssd_detector.cli.info import describe
from ssd_detector.machine import IMAGE_VARIANT_VAR, gpu_image_without_gpu


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


def test_gpu_count_is_the_setting_or_what_mxnet_sees(monkeypatch, tmp_path):
    """A CPU machine: no driver means no GPU; with a (stand-in) driver folder MXNet is asked, and
    sees none, so asking for one is refused by name."""
    import pytest

    from ssd_detector import machine
    from ssd_detector.errors import UserError

    monkeypatch.setattr(machine, "NVIDIA_DRIVER_DIR", tmp_path / "absent")
    assert machine.gpu_count({}) == 0
    monkeypatch.setattr(machine, "NVIDIA_DRIVER_DIR", tmp_path)
    import mxnet  # loaded: the path a training or serving worker takes
    assert mxnet.context.num_gpus() == 0
    assert machine.gpu_count({}) == 0 and machine.gpu_count({"SSD_NUM_GPUS": "0"}) == 0
    with pytest.raises(UserError, match="SSD_NUM_GPUS=2 asks for more GPUs than MXNet sees here"):
        machine.gpu_count({"SSD_NUM_GPUS": "2"})
    with pytest.raises(UserError, match="SSD_NUM_GPUS='two'"):
        machine.gpu_count({"SSD_NUM_GPUS": "two"})
    assert machine._mxnet_gpus_in_child({}) == 0


def test_a_process_without_mxnet_counts_without_loading_it():
    """The launcher and gunicorn's master: the setting is taken as it is, and MXNet stays unloaded."""
    code = ("import sys; from ssd_detector.machine import gpu_count; from ssd_detector.training.launcher "
            "import workers_per_host; print(gpu_count({'SSD_NUM_GPUS': '3'}), gpu_count({}), "
            "workers_per_host({'SSD_NUM_GPUS': '4'}), workers_per_host({}), 'mxnet' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "0", "4", "1", "False"]


def test_training_gets_every_usable_core_unless_the_user_chose(monkeypatch):
    from ssd_detector import machine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(machine.OMP_DEFAULTED_VAR, raising=False)
    machine.default_cpu_threads()
    assert os.environ["OMP_NUM_THREADS"] == str(machine.usable_cpus())
    assert os.environ[machine.OMP_DEFAULTED_VAR] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv(machine.OMP_DEFAULTED_VAR)
    machine.default_cpu_threads()
    assert os.environ["OMP_NUM_THREADS"] == "3" and machine.OMP_DEFAULTED_VAR not in os.environ
