"""What this machine gives a process: the cores it may use (and MXNet's OpenMP threads sized to
them), and the GPUs it may use, one count for training and serving. (`ssd-detector info`, the
report of the whole installation, is cli.info.)"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from .errors import UserError
from .sagemaker_env import env_int

LOG = logging.getLogger(__name__)

IMAGE_VARIANT_VAR = "SSD_IMAGE_VARIANT"  # set by the image: gpu or cpu
GPUS_VAR = "SSD_NUM_GPUS"  # how many GPUs to use, everywhere (0: the CPU even where there are GPUs)
NVIDIA_DRIVER_DIR = Path("/proc/driver/nvidia")  # absent: no NVIDIA driver, so no GPU to use
OMP_THREADS_VAR = "OMP_NUM_THREADS"
# Set beside OMP_NUM_THREADS when default_cpu_threads chose it, so that the launcher may share
# the cores among its workers instead of passing the whole count on.
OMP_DEFAULTED_VAR = "SSD_OMP_THREADS_DEFAULTED"


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, which container limits set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cpu_threads() -> None:
    """OMP_NUM_THREADS = the usable cores, unless set: MXNet sizes its OpenMP pool when it loads,
    and without the variable takes half the cores (it assumes two hyper-threads per core), which
    on a 2-core machine is one thread for every convolution. Call before MXNet is imported."""
    if OMP_THREADS_VAR not in os.environ:
        os.environ[OMP_THREADS_VAR] = str(usable_cpus())
        os.environ[OMP_DEFAULTED_VAR] = "1"


def gpu_count(environ: Mapping[str, str] | None = None) -> int:
    """The GPUs this process uses: $SSD_NUM_GPUS when set, else every GPU MXNet sees.

    Without an NVIDIA driver that is none, known without loading MXNet. Otherwise MXNet counts:
    in this process when it is loaded already (a training or serving worker, which also checks
    $SSD_NUM_GPUS against it), else in a child process, so that a launcher or gunicorn's master
    never starts MXNet's engine threads (its forks would inherit them)."""
    env = os.environ if environ is None else environ
    wanted = env_int(env, GPUS_VAR, 0, 0, 1024) if env.get(GPUS_VAR, "").strip() else None
    if "mxnet" in sys.modules:
        seen = _mxnet_gpus() if NVIDIA_DRIVER_DIR.exists() else 0
    elif wanted is not None:
        return wanted
    elif not NVIDIA_DRIVER_DIR.exists():
        return 0
    else:
        seen = _mxnet_gpus_in_child(env)
    if wanted is None:
        return seen
    if wanted > seen:
        raise UserError(f"environment variable {GPUS_VAR}={wanted} asks for more GPUs than MXNet sees here "
                        f"({seen}); use at most {seen}, or unset it to use every GPU")
    return wanted


def _mxnet_gpus() -> int:
    import mxnet as mx

    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError as exc:  # a CUDA build where the driver does not answer
        LOG.warning("MXNet cannot count GPUs (%s); using none", str(exc).strip().splitlines()[0])
        return 0


def _mxnet_gpus_in_child(environ: Mapping[str, str]) -> int:
    result = subprocess.run([sys.executable, "-c", f"from {__package__}.machine import _mxnet_gpus; "
                             "print(_mxnet_gpus())"],
                            capture_output=True, text=True, timeout=300, env=dict(environ))
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        LOG.warning("could not count GPUs (%s); assuming none", result.stderr.strip()[-300:])
        return 0


def gpu_image_without_gpu(gpus: int) -> bool:
    """The GPU image started where no GPU is visible (a CPU instance): it then runs on the CPU."""
    return gpus == 0 and os.environ.get(IMAGE_VARIANT_VAR) == "gpu"
