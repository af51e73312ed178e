"""Checkpoints for resuming (SageMaker managed spot training syncs ``checkpoints/`` with S3).

Each checkpoint is one folder ``ssd-checkpoint-NNNNNN`` holding the network's parameters, the
optimizer state and a small JSON of loop state. It is written whole into a hidden temporary
folder, every file and the folder synced to disk, then renamed into place, so a folder with the
final name is complete. The previous checkpoint is kept until a newer one exists. A restart
resumes from the newest checkpoint that loads, saying which were skipped and why: a truncated or
mismatched checkpoint costs one checkpoint, never every restart.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from mxnet import gluon

from .averaging import WeightAverage

LOG = logging.getLogger(__name__)

PARAMS = "ssd-checkpoint.params"
STATES = "ssd-checkpoint.states"
STATE = "ssd-checkpoint.json"
AVERAGE = "ssd-checkpoint-average.params"  # the weight average, when ema_decay is set
FOLDER_PREFIX = "ssd-checkpoint-"
FOLDER_PATTERN = re.compile(rf"^{re.escape(FOLDER_PREFIX)}(\d{{6}})$")
SCRATCH_PREFIX = f".{FOLDER_PREFIX}tmp-"
KEEP = 2  # the newest and the one before it


@dataclass
class LoopState:
    next_epoch: int = 0  # the first epoch still to run
    best_map: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    end_epoch: int = 0  # the epoch the job ends before when time_budget_seconds moved it; 0: epochs

    def to_array(self) -> np.ndarray:
        """-> (5,) float64, to send to the other workers whole."""
        return np.array([self.next_epoch, self.best_map, self.best_epoch, self.epochs_without_improvement,
                         self.end_epoch], np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> "LoopState":
        """The inverse of to_array."""
        if np.shape(values) != (5,):
            raise ValueError(f"a loop state is 5 numbers, got shape {np.shape(values)}")
        next_epoch, best_map, best_epoch, without, end_epoch = (float(v) for v in values)
        return cls(round(next_epoch), best_map, round(best_epoch), round(without), round(end_epoch))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders, newest first; a flat checkpoint of an earlier release last."""
    if not directory.is_dir():
        return []
    found = sorted((p for p in directory.iterdir() if FOLDER_PATTERN.match(p.name) and p.is_dir()),
                   key=lambda p: p.name, reverse=True)
    if (directory / STATE).is_file():
        found.append(directory)
    return found


def save(directory: Path, net: gluon.Block, trainer: gluon.Trainer, state: LoopState,
         average: WeightAverage | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{SCRATCH_PREFIX}*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    numbered = [int(m.group(1)) for p in directory.iterdir() if (m := FOLDER_PATTERN.match(p.name))]
    final = directory / f"{FOLDER_PREFIX}{max(numbered, default=0) + 1:06d}"
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=directory))
    try:
        net.save_parameters(str(scratch / PARAMS))
        trainer.save_states(str(scratch / STATES))
        (scratch / STATE).write_text(json.dumps(asdict(state)))
        names = [PARAMS, STATES, STATE]
        if average is not None:
            average.save(scratch / AVERAGE)
            names.append(AVERAGE)
        for name in names:
            _fsync(scratch / name)
        os.chmod(scratch, 0o755)
        os.rename(scratch, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for old in checkpoints(directory)[KEEP:]:
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    LOG.info("saved checkpoint %s (next epoch %d)", final, state.next_epoch)
    return final


def _read_state(folder: Path) -> LoopState:
    raw = json.loads((folder / STATE).read_text())
    if isinstance(raw, dict):
        raw.pop("num_update", None)  # written by earlier versions, never read (the trainer keeps its own)
        raw.setdefault("end_epoch", 0)  # absent from earlier versions' checkpoints
    names = {f.name for f in fields(LoopState)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise ValueError(f"{STATE} holds {sorted(raw) if isinstance(raw, dict) else raw!r}, not the fields "
                         f"{sorted(names)}")
    return LoopState(**raw)


def load(directory: Path, net: gluon.Block, trainer: gluon.Trainer,
         average: WeightAverage | None = None) -> LoopState | None:
    """Restores the newest checkpoint that loads; None when there is none (then net and trainer
    are as they were). A checkpoint written without a weight average restarts average from the
    restored weights."""
    candidates = checkpoints(directory)
    if not candidates:
        return None
    with tempfile.TemporaryDirectory(prefix="ssd-initial-") as keep:
        initial = Path(keep) / "initial.params"
        net.save_parameters(str(initial))
        for folder in candidates:
            try:
                state = _read_state(folder)
                net.load_parameters(str(folder / PARAMS), ctx=net.collect_params().list_ctx())
                trainer.load_states(str(folder / STATES))
                if average is not None:
                    if (folder / AVERAGE).is_file():
                        average.load(folder / AVERAGE)
                    else:
                        LOG.warning("checkpoint %s holds no weight average (ema_decay was 0): the average "
                                    "starts from its weights", folder)
                        average.restart()
            except Exception as exc:  # any unreadable checkpoint is skipped, and said
                LOG.warning("skipping checkpoint %s: it does not load (%s: %s)", folder, type(exc).__name__,
                            str(exc).splitlines()[0][:300] if str(exc) else "")
                continue
            LOG.info("resuming from checkpoint %s at epoch %d (best mAP %.4f)", folder, state.next_epoch,
                     state.best_map)
            return state
        net.load_parameters(str(initial), ctx=net.collect_params().list_ctx())
        if average is not None:  # a checkpoint that failed half-way may have loaded its average
            average.restart()
    LOG.warning("no checkpoint in %s loads (%d tried); training starts from the beginning", directory,
                len(candidates))
    return None
