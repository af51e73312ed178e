"""Checkpoints for resuming (SageMaker managed spot training syncs ``checkpoints/`` with S3).

A checkpoint is the network's parameters, the optimizer state and a small JSON of loop state.
The JSON is written last, after the other two are in place, so it marks a complete checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mxnet import gluon

LOG = logging.getLogger(__name__)

PARAMS = "ssd-checkpoint.params"
STATES = "ssd-checkpoint.states"
STATE = "ssd-checkpoint.json"


@dataclass
class LoopState:
    next_epoch: int = 0  # the first epoch still to run
    best_map: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    num_update: int = 0


def save(directory: Path, net: gluon.Block, trainer: gluon.Trainer, state: LoopState) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, write in ((PARAMS, net.save_parameters), (STATES, trainer.save_states)):
        tmp = directory / (name + ".tmp")
        write(str(tmp))
        os.replace(tmp, directory / name)
    tmp = directory / (STATE + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, directory / STATE)
    LOG.info("saved checkpoint to %s (next epoch %d)", directory, state.next_epoch)


def load(directory: Path, net: gluon.Block, trainer: gluon.Trainer) -> LoopState | None:
    """Restores a complete checkpoint; None when there is none."""
    if not (directory / STATE).is_file():
        return None
    state = LoopState(**json.loads((directory / STATE).read_text()))
    net.load_parameters(str(directory / PARAMS), ctx=net.collect_params().list_ctx())
    trainer.load_states(str(directory / STATES))
    LOG.info("resuming from checkpoint in %s at epoch %d (best mAP %.4f)", directory, state.next_epoch,
             state.best_map)
    return state
