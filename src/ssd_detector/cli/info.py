"""``ssd-detector info``: what this installation is made of, as one JSON-ready report: MXNet and
the features it was built with, the GPUs it sees, Horovod's collective backends, and the CUDA
libraries (wheels) beside it. The GPU image's checks and scripts/gpu_check.sh read this instead
of guessing."""
from __future__ import annotations

import importlib.metadata
import os
import platform

from .. import __version__
from ..errors import UserError
from ..machine import IMAGE_VARIANT_VAR, gpu_count

FEATURES = ("CUDA", "CUDNN", "NCCL", "CUDA_RTC", "MKLDNN", "OPENMP")


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_wheels() -> dict[str, str]:
    """The CUDA 11 library wheels installed beside MXNet (docker/gpu-requirements.txt), by name."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-") and name.endswith("-cu11"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def describe() -> dict:
    """One JSON-ready report. Loads MXNet and Horovod (this is a tool's process, not a server's)."""
    import mxnet as mx

    from ..training.distributed import horovod_build

    features = mx.runtime.Features()
    try:
        gpus = gpu_count()
        gpu_error = None
    except (mx.base.MXNetError, UserError) as exc:
        gpus, gpu_error = 0, str(exc).strip().splitlines()[0]
    report = {
        "ssd_detector": __version__,
        "python": platform.python_version(),
        "image_variant": os.environ.get(IMAGE_VARIANT_VAR),
        "mxnet": {"version": mx.__version__, "distribution": "mxnet-cu112" if installed("mxnet-cu112") else "mxnet",
                  "features": {name: features.is_enabled(name) for name in FEATURES}},
        "gpus": gpus,
        "horovod": horovod_build(),
        "cuda_wheels": cuda_wheels(),
    }
    if gpu_error:
        report["gpu_error"] = gpu_error
    return report
