"""The weight average of ema_decay: its arithmetic, swapping it in and out, and its round trip
through a file and a checkpoint."""
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from ssd_detector.training import checkpoint
from ssd_detector.training.averaging import WeightAverage


def small_net() -> gluon.nn.HybridSequential:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=3), gluon.nn.BatchNorm(in_channels=4), gluon.nn.Dense(2, in_units=4))
    net.initialize(mx.init.Xavier())
    net[2].weight.grad_req = "null"  # a frozen layer
    return net


def weights(net: gluon.Block) -> dict[str, np.ndarray]:
    return {name: p.data().asnumpy().copy() for name, p in net.collect_params().items()}


def test_the_average_follows_its_formula_and_leaves_frozen_and_running_values_alone():
    net = small_net()
    average = WeightAverage(net.collect_params(), 0.9)
    trained = net[0].weight
    expected = trained.data().asnumpy().copy()
    for t in range(25):
        trained.set_data(trained.data() + 1.0)  # stands in for an optimizer step
        average.update()
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * trained.data().asnumpy()
    before = weights(net)
    with average.applied():
        inside = weights(net)
    np.testing.assert_allclose(inside[trained.name], expected, rtol=1e-5)
    for name, value in before.items():  # the trained weights are back after the block
        np.testing.assert_array_equal(weights(net)[name], value)
    frozen = [net[2].weight.name, net[1].running_mean.name, net[1].running_var.name]
    for name in frozen:  # neither averaged nor changed
        np.testing.assert_array_equal(inside[name], before[name])
    assert not np.allclose(inside[trained.name], before[trained.name])


def test_the_trained_weights_come_back_when_the_block_raises():
    net = small_net()
    average = WeightAverage(net.collect_params(), 0.5)
    net[0].weight.set_data(net[0].weight.data() * 3)
    before = weights(net)
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("validation interrupted")
    for name, value in before.items():
        np.testing.assert_array_equal(weights(net)[name], value)


def test_a_saved_average_loads_and_a_foreign_one_is_refused(tmp_path: Path):
    net = small_net()
    average = WeightAverage(net.collect_params(), 0.99)
    for _ in range(3):
        net[0].weight.set_data(net[0].weight.data() + 1.0)
        average.update()
    average.save(tmp_path / "a.params")
    other = WeightAverage(net.collect_params(), 0.99)
    other.load(tmp_path / "a.params")
    assert other.updates == 3
    with average.applied():
        first = weights(net)
    with other.applied():
        np.testing.assert_array_equal(weights(net)[net[0].weight.name], first[net[0].weight.name])
    foreign = gluon.nn.Dense(5, in_units=2)
    foreign.initialize()
    with pytest.raises(ValueError, match="not a weight average of this network"):
        WeightAverage(foreign.collect_params(), 0.9).load(tmp_path / "a.params")
    with pytest.raises(ValueError, match="must be in"):
        WeightAverage(net.collect_params(), 1.0)


def test_a_checkpoint_keeps_the_average_and_one_without_it_restarts_it(tmp_path: Path):
    net = small_net()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    average = WeightAverage(net.collect_params(), 0.9)
    for _ in range(4):
        net[0].weight.set_data(net[0].weight.data() + 1.0)
        average.update()
    with average.applied():
        averaged = weights(net)[net[0].weight.name]
    checkpoint.save(tmp_path / "with", net, trainer, checkpoint.LoopState(next_epoch=2), average)
    checkpoint.save(tmp_path / "without", net, trainer, checkpoint.LoopState(next_epoch=2))
    resumed = WeightAverage(net.collect_params(), 0.9)
    assert checkpoint.load(tmp_path / "with", net, trainer, resumed) is not None
    assert resumed.updates == 4
    with resumed.applied():
        np.testing.assert_allclose(weights(net)[net[0].weight.name], averaged)
    restarted = WeightAverage(net.collect_params(), 0.9)
    net[0].weight.set_data(net[0].weight.data() * 0)
    restarted.update()  # an average of other weights, which the checkpoint must replace
    assert checkpoint.load(tmp_path / "without", net, trainer, restarted) is not None
    assert restarted.updates == 0
    restored = weights(net)[net[0].weight.name]
    assert not np.allclose(restored, 0)
    with restarted.applied():  # the average is the restored weights themselves
        np.testing.assert_array_equal(weights(net)[net[0].weight.name], restored)
