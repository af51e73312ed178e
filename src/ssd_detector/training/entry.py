"""The ``train`` command of a host: the whole job in this process, the launcher of this host's
Horovod workers, or one such worker. A worker's training reads top-down: its inputs
(``inputs``), the job assembled from them (``assembly``), the epochs (``loop``)."""
from __future__ import annotations

import logging
import time

import mxnet as mx

from ..sagemaker_env import Paths, require_job_config
from . import distributed, launcher, protocol
from .assembly import assemble, data_workers, host_contexts, visible_gpus, worker_contexts
from .inputs import TrainingInputs, read_training_inputs
from .loop import Loop
from .signals import StopRequested


def run_training(inputs: TrainingInputs, contexts: list[mx.Context], workers: int, world: distributed.World) -> None:
    """Assembles this worker's job (``workers`` data workers) and runs its epochs."""
    created = time.monotonic()  # the time budget counts from here, data loading included
    stop = StopRequested()  # Pipe-mode readers ask it while they wait for data
    job = assemble(inputs, contexts, workers, world, should_stop=lambda: stop.flag)
    Loop(job, inputs, world, stop, created).run()


def train_single(paths: Paths) -> None:
    """A job of one worker: this process, every device of the host."""
    inputs = read_training_inputs(paths)
    contexts = host_contexts()
    run_training(inputs, contexts, data_workers(contexts), distributed.World())


def train_worker(paths: Paths) -> None:
    """One Horovod worker started by the launcher: one device, one shard of the data."""
    # Inputs first: every host checks the same data, so a data error is reported by all alike.
    inputs = read_training_inputs(paths)
    world = distributed.current_world()
    protocol.mark_joined()
    if not world.is_root:
        logging.getLogger("ssd_detector").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        contexts = worker_contexts(world.local_rank, visible_gpus())
        run_training(inputs, contexts, data_workers(contexts, sharing=world.local_size), world)
    except BaseException:
        world.shutdown(clean=False)
        raise
    world.shutdown()


def train(paths: Paths) -> None:
    """The ``train`` entry point of a host: a worker of a distributed job, the launcher of this
    host's workers, or the whole job in this process."""
    require_job_config(paths)
    if distributed.is_worker():
        train_worker(paths)
        return
    host_launcher = launcher.for_host(paths)
    if host_launcher is None:
        train_single(paths)
    else:
        host_launcher.run()
