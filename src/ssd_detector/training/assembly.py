"""The pieces a training job is assembled from, decided before the first step: the devices
and data workers of this process, the starting weights (an earlier model), frozen layers, and the
optimizer with its schedule."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import mxnet as mx

from ..config import Hyperparameters
from ..environment import gpu_image_without_gpu
from ..errors import HyperparameterError, UserError
from ..model import artifact
from ..model.ssd import SSD, short_parameter_names
from ..sagemaker_env import env_int
from .schedule import StepWithWarmup

LOG = logging.getLogger(__name__)

DATA_WORKERS_ENV = "SSD_DATA_WORKERS"


def visible_gpus() -> int:
    """The GPUs MXNet sees; says so when the GPU image runs where there are none."""
    count = mx.context.num_gpus()
    if gpu_image_without_gpu(count):
        LOG.warning("no GPU is visible in this container: the GPU image trains on the CPU")
    return count


def host_contexts() -> list[mx.Context]:
    """Every GPU of the host, else the CPU."""
    count = visible_gpus()
    return [mx.gpu(i) for i in range(count)] if count else [mx.cpu()]


def data_workers(contexts: list[mx.Context], environ: dict | None = None, sharing: int = 1) -> int:
    """Worker processes for data: $SSD_DATA_WORKERS, else on GPU hosts all cores but one, shared
    by the host's `sharing` training workers, and one on CPU hosts (where MXNet's own threads
    need the cores)."""
    env = os.environ if environ is None else environ
    if env.get(DATA_WORKERS_ENV, "").strip():
        return env_int(env, DATA_WORKERS_ENV, 0, 0, 256)
    if contexts[0].device_type == "gpu":
        return max(1, max(1, (os.cpu_count() or 2) - 1) // sharing)
    return 1


def worker_contexts(local_rank: int, gpus: int) -> list[mx.Context]:
    """A Horovod worker's device: the GPU of its local rank, else the CPU."""
    return [mx.gpu(local_rank % gpus)] if gpus else [mx.cpu()]


def freeze_layers(net: SSD, pattern: str) -> list[str]:
    """Stops gradients for parameters whose short name matches (re.match) the pattern."""
    if not pattern:
        return []
    names = short_parameter_names(net)
    regex = re.compile(pattern)
    frozen = [name for name in names if regex.match(name)]
    if not frozen:
        examples = ", ".join(n for n in list(names)[2:8])
        raise HyperparameterError(
            f"freeze_layer_pattern={pattern!r} matches no parameter of {net.base_network}; "
            f"names look like {examples}")
    for name in frozen:
        names[name].grad_req = "null"
    LOG.info("froze %d parameters matching %r (first: %s)", len(frozen), pattern, ", ".join(frozen[:5]))
    return frozen


def load_earlier_model(net: SSD, model_dir: Path, hp: Hyperparameters) -> None:
    """Incremental training: start from an earlier artifact of this algorithm. A different
    num_classes keeps everything but the class predictors, which start afresh."""
    earlier = artifact.read_hyperparameters(model_dir)
    if earlier.get("base_network") != hp.base_network:
        raise UserError(f"the model channel holds a {earlier.get('base_network')!r} model but "
                        f"base_network={hp.base_network!r}; incremental training needs the same base network")
    saved = artifact.read_parameters(model_dir)
    reinitialized = []
    for name, param in net.collect_params().items():
        if name not in saved:
            raise UserError(f"the model in the model channel lacks parameter {name}; was it trained by "
                            "this algorithm?")
        if saved[name].shape != param.shape:
            reinitialized.append(name)
            continue
        param.set_data(saved[name])
    if reinitialized:
        LOG.warning("model channel: num_classes %s -> %d; re-initialized the class predictors (%s)",
                    earlier.get("num_classes"), hp.num_classes, ", ".join(reinitialized))
    LOG.info("initialized from the model in %s", model_dir)


def make_optimizer(hp: Hyperparameters, updates_per_epoch: int) -> tuple[str, dict]:
    schedule = StepWithWarmup(hp.learning_rate, hp.lr_scheduler_step, hp.lr_scheduler_factor, updates_per_epoch)
    params: dict = {"learning_rate": hp.learning_rate, "lr_scheduler": schedule}
    if hp.optimizer == "sgd":
        params.update(momentum=hp.momentum, wd=hp.weight_decay)
    elif hp.optimizer == "rmsprop":
        params.update(wd=hp.weight_decay)
    elif "weight_decay" in hp.given:
        LOG.warning("weight_decay applies to sgd and rmsprop only; ignored with optimizer=%s", hp.optimizer)
    if hp.optimizer != "sgd" and "momentum" in hp.given:
        LOG.warning("momentum applies to sgd only; ignored with optimizer=%s", hp.optimizer)
    return hp.optimizer, params
