"""Checkpoints are whole or absent, the previous one is kept, and a restart resumes from the
newest one that loads, naming those it skipped."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from ssd_detector.training import checkpoint


def net_and_trainer(units: int = 3, seed: int = 0) -> tuple[gluon.nn.Dense, gluon.Trainer]:
    mx.random.seed(seed)
    net = gluon.nn.Dense(units, in_units=4)
    net.initialize(mx.init.Normal(1.0))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)
    return net, trainer


def weights(net: gluon.Block) -> np.ndarray:
    return net.weight.data().asnumpy().copy()


def test_save_keeps_two_and_leaves_no_temporary_files(tmp_path: Path):
    net, trainer = net_and_trainer()
    for epoch in range(1, 4):
        checkpoint.save(tmp_path, net, trainer, checkpoint.LoopState(next_epoch=epoch))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ssd-checkpoint-000002", "ssd-checkpoint-000003"]
    assert json.loads((tmp_path / names[-1] / checkpoint.STATE).read_text())["next_epoch"] == 3


def test_a_truncated_newest_checkpoint_is_skipped_and_named(tmp_path: Path, caplog):
    net, trainer = net_and_trainer(seed=1)
    checkpoint.save(tmp_path, net, trainer, checkpoint.LoopState(next_epoch=1))
    good = weights(net)
    net2, trainer2 = net_and_trainer(seed=2)
    newest = checkpoint.save(tmp_path, net2, trainer2, checkpoint.LoopState(next_epoch=2))
    params = newest / checkpoint.PARAMS
    params.write_bytes(params.read_bytes()[:40])  # a partial upload or a full disk
    fresh, fresh_trainer = net_and_trainer(seed=3)
    with caplog.at_level(logging.WARNING):
        state = checkpoint.load(tmp_path, fresh, fresh_trainer)
    assert state is not None and state.next_epoch == 1
    np.testing.assert_array_equal(weights(fresh), good)
    assert any("skipping checkpoint" in r.getMessage() and newest.name in r.getMessage() for r in caplog.records)


def test_mismatched_checkpoints_fall_back_to_the_initial_weights(tmp_path: Path, caplog):
    other, other_trainer = net_and_trainer(units=5)  # another network's shapes
    checkpoint.save(tmp_path, other, other_trainer, checkpoint.LoopState(next_epoch=4))
    (tmp_path / "ssd-checkpoint-000009").mkdir()
    (tmp_path / "ssd-checkpoint-000009" / checkpoint.STATE).write_text('{"next_epoch": "x"}')
    net, trainer = net_and_trainer()
    before = weights(net)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(tmp_path, net, trainer) is None
    np.testing.assert_array_equal(weights(net), before)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "ssd-checkpoint-000009" in messages and "ssd-checkpoint-000001" in messages
    assert "training starts from the beginning" in messages


def test_a_flat_checkpoint_of_an_earlier_release_still_resumes(tmp_path: Path):
    net, trainer = net_and_trainer(seed=4)
    net.save_parameters(str(tmp_path / checkpoint.PARAMS))
    trainer.save_states(str(tmp_path / checkpoint.STATES))
    (tmp_path / checkpoint.STATE).write_text(json.dumps({"next_epoch": 3, "best_map": 0.5, "best_epoch": 2,
                                                         "epochs_without_improvement": 0, "num_update": 9}))
    fresh, fresh_trainer = net_and_trainer(seed=5)
    state = checkpoint.load(tmp_path, fresh, fresh_trainer)
    assert state is not None and state.next_epoch == 3
    np.testing.assert_array_equal(weights(fresh), weights(net))


def test_loop_state_travels_as_one_array():
    """What the workers agree on after a resume: the whole state in one broadcast."""
    state = checkpoint.LoopState(next_epoch=7, best_map=0.625, best_epoch=5, epochs_without_improvement=2,
                                 end_epoch=21)
    values = state.to_array()
    assert values.dtype == np.float64 and values.shape == (5,)
    assert checkpoint.LoopState.from_array(values) == state
    floats = np.array([7.0000001, 0.625, 4.9999999, 2.0, 20.9999999])
    assert checkpoint.LoopState.from_array(floats) == state  # floats back to ints
    with pytest.raises(ValueError, match="5 numbers"):
        checkpoint.LoopState.from_array(np.zeros(4))


def test_a_checkpoint_of_an_earlier_version_without_end_epoch_loads(tmp_path: Path):
    net, trainer = net_and_trainer()
    saved = checkpoint.save(tmp_path, net, trainer, checkpoint.LoopState(next_epoch=3, end_epoch=9))
    raw = json.loads((saved / checkpoint.STATE).read_text())
    del raw["end_epoch"]
    (saved / checkpoint.STATE).write_text(json.dumps(raw))
    fresh, fresh_trainer = net_and_trainer()
    state = checkpoint.load(tmp_path, fresh, fresh_trainer)
    assert state == checkpoint.LoopState(next_epoch=3)
