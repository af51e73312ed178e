"""The ``train`` command of a host: the whole job in this process, the launcher of this host's
Horovod workers, or one such worker; training itself ends in Training.run()."""
from __future__ import annotations

import logging

from ..sagemaker_env import Paths, require_job_config
from . import distributed, launcher, protocol
from .assembly import data_workers, host_contexts, visible_gpus, worker_contexts
from .inputs import read_training_inputs
from .loop import Training


def train_single(paths: Paths) -> None:
    """A job of one worker: this process, every device of the host."""
    inputs = read_training_inputs(paths)
    contexts = host_contexts()
    Training(inputs, contexts, data_workers(contexts)).run()


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
        Training(inputs, contexts, data_workers(contexts, sharing=world.local_size), world).run()
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
