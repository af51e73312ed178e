"""A training job assembled from its inputs before the first step, top-down: the devices and
data workers of this process, the network with its starting weights (an earlier model, ImageNet
weights, or none) and frozen layers, the loaders (File or Pipe mode), and the optimizer with its
schedule in a (distributed) trainer, and the update step that uses them. ``assemble`` returns all
of it as one ``Job``, which ``loop.Loop`` runs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mxnet as mx
from mxnet import gluon

from ..config import Hyperparameters
from ..data.loader import DetectionLoader, Transform
from ..data.pipe import pipe_timeout
from ..data.stream import StreamLoader, StreamSource
from ..data.transforms import ValTransform, train_transform
from ..machine import gpu_count, gpu_image_without_gpu
from ..errors import HyperparameterError
from ..model.loss import SSDLoss
from ..model.ssd import SSDDetector
from ..model.targets import TargetEncoder
from ..sagemaker_env import Paths, env_int
from . import distributed
from .inputs import PipeChannel, TrainingInputs
from .protocol import pipe_folder
from .averaging import WeightAverage
from .schedule import StepWithWarmup, batches_per_epoch, make_schedule
from .starting import Network, build_network
from .step import UpdateStep

LOG = logging.getLogger(__name__)

DATA_WORKERS_ENV = "SSD_DATA_WORKERS"
VALIDATION_BATCH = 16


def visible_gpus() -> int:
    """The GPUs this process trains on (machine.gpu_count); says so when the GPU image runs
    where there are none."""
    count = gpu_count()
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


def make_optimizer(hp: Hyperparameters, updates_per_epoch: int) -> tuple[str, dict]:
    schedule = make_schedule(hp.lr_schedule, hp.learning_rate, hp.epochs, hp.lr_scheduler_step,
                             hp.lr_scheduler_factor, updates_per_epoch)
    if hp.lr_schedule == "cosine" and {"lr_scheduler_step", "lr_scheduler_factor"} & hp.given:
        LOG.warning("lr_scheduler_step and lr_scheduler_factor apply to lr_schedule=step; ignored with "
                    "lr_schedule=cosine")
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


# ------------------------------------------------------------------------------------ the job
Loader = DetectionLoader | StreamLoader


@dataclass
class Job:
    """Everything the loop runs, built before its first step."""
    net: Network  # our SSD, or a built-in model's own network (incremental training from it)
    detector: SSDDetector  # the network with decoding and NMS: validation and the artifact
    loss: SSDLoss
    train_loader: Loader
    val_loader: Loader | None
    trainer: gluon.Trainer
    schedule: StepWithWarmup
    step: UpdateStep  # one update: loss, gradients, clipping, the optimizer, the weight average
    average: WeightAverage | None  # ema_decay's weight average
    contexts: list[mx.Context]
    batch_size: int  # per worker
    updates_per_epoch: int
    artifact_entries: dict[str, str] = field(default_factory=dict)  # added to the artifact's hyperparams.json


def assemble(inputs: TrainingInputs, contexts: list[mx.Context], workers: int, world: distributed.World,
             should_stop: Callable[[], bool]) -> Job:
    """The job of this process: `workers` data workers, `world` its place among the job's workers,
    should_stop asked by Pipe-mode readers while they wait for data (SIGTERM)."""
    hp = inputs.hyperparameters
    batch_size = worker_batch_size(hp.mini_batch_size, world.local_size)
    mx.random.seed(hp.seed)
    start = build_network(hp, contexts, inputs.paths.channel_dir("model"))
    net = start.net
    detector = SSDDetector(net, nms_threshold=hp.nms_threshold, nms_topk=hp.nms_topk)
    detector.hybridize(static_alloc=True)
    loss = SSDLoss(weighted=hp.object_balance > 0)
    loss.hybridize()
    train_loader, val_loader = make_loaders(inputs, net, batch_size, workers, world, should_stop)
    assert hp.num_training_samples is not None  # counted by read_training_inputs when not given
    updates_per_epoch = batches_per_epoch(hp.num_training_samples, batch_size * world.size)
    optimizer, params = make_optimizer(hp, updates_per_epoch)
    trainable = {k: v for k, v in net.collect_params().items() if v.grad_req != "null"}
    trainer = world.trainer(trainable, optimizer, params, kvstore="device" if len(contexts) > 1 else None,
                            update_on_kvstore=False if hp.max_gradient_norm > 0 else None)
    average = WeightAverage(net.collect_params(), hp.ema_decay) if hp.ema_decay > 0 else None
    step = UpdateStep(net, loss, trainer, contexts, world, hp.max_gradient_norm, average)
    return Job(net, detector, loss, train_loader, val_loader, trainer, params["lr_scheduler"], step, average,
               list(contexts), batch_size, updates_per_epoch, start.artifact_entries)


def worker_batch_size(mini_batch_size: int, local_size: int) -> int:
    """mini_batch_size is per host (the built-in's meaning), split across the host's workers."""
    if mini_batch_size < local_size:
        raise HyperparameterError(f"mini_batch_size={mini_batch_size} is smaller than the {local_size} workers "
                                  f"of a host; use at least {local_size}")
    return mini_batch_size // local_size


def make_loaders(inputs: TrainingInputs, net: Network, batch_size: int, workers: int, world: distributed.World,
                 should_stop: Callable[[], bool]) -> tuple[Loader, Loader | None]:
    """The training loader (with SSD targets for net's anchors) and the validation loader, if any."""
    hp = inputs.hyperparameters
    transform = train_transform(hp.augmentation, hp.image_shape, hp.epochs)
    targets = TargetEncoder(net.anchors, hp.match_threshold, topk=hp.match_topk, balance=hp.object_balance)
    train: Loader
    if isinstance(inputs.train, PipeChannel):
        train = stream_loader(inputs.train, inputs.paths, hp, batch_size, transform, workers, targets,
                              world, should_stop)
    else:
        # Rank r takes every size-th sample of the epoch's order, padded so every worker runs the
        # same number of steps; batch j of all workers is batch j of one process with the global batch.
        train = DetectionLoader(inputs.train.samples, batch_size, transform, shuffle=True, seed=hp.seed,
                                part_index=world.rank, num_parts=world.size, equal_parts=world.size > 1,
                                num_workers=workers, targets=targets)
    validation: Loader | None = None
    if isinstance(inputs.validation, PipeChannel):
        # Every worker validates on the whole stream (rank 0's figure is broadcast).
        validation = stream_loader(inputs.validation, inputs.paths, hp, VALIDATION_BATCH,
                                   ValTransform(hp.image_shape), workers, None, world, should_stop, whole=True)
    elif inputs.validation is not None:
        validation = DetectionLoader(inputs.validation.samples, VALIDATION_BATCH, ValTransform(hp.image_shape),
                                     shuffle=False, num_workers=workers)
    return train, validation


def stream_loader(channel: PipeChannel, paths: Paths, hp: Hyperparameters, batch_size: int, transform: Transform,
                  workers: int, targets: TargetEncoder | None, world: distributed.World,
                  should_stop: Callable[[], bool], whole: bool = False) -> StreamLoader:
    """A Pipe-mode channel. With FullyReplicated every host gets the whole stream, so the job's
    workers take disjoint parts; with ShardedByS3Key a host's workers split what it gets."""
    if whole:
        part, parts = 0, 1
    elif channel.distribution == "ShardedByS3Key":
        part, parts = world.local_rank, world.local_size
    else:
        part, parts = world.rank, world.size
    source = StreamSource(channel.name, channel.format, pipe_folder(paths), paths.data_dir,
                          part_index=part, num_parts=parts)
    return StreamLoader(source, batch_size, transform, num_classes=hp.num_classes, label_width=hp.label_width,
                        shuffle_buffer=0 if whole else hp.pipe_shuffle_buffer, seed=hp.seed, num_workers=workers,
                        targets=targets, should_stop=should_stop, timeout=pipe_timeout())
