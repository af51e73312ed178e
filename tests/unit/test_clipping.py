"""max_gradient_norm: the global norm's arithmetic, every device's copy, frozen layers, and a
trainer that updates from the clipped gradients."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from ssd_detector.training.clipping import clip_global_norm


def two_params(contexts: list[mx.Context]) -> list[gluon.Parameter]:
    """Two parameters whose gradients are set by hand: a = (3, 0), b = (0, 4), global norm 5."""
    params = []
    for name in ("a", "b"):
        p = gluon.Parameter(name, shape=(2,))
        p.initialize(mx.init.Zero(), ctx=contexts)
        params.append(p)
    for grad in params[0].list_grad():
        grad[:] = mx.nd.array([3.0, 0.0], ctx=grad.context)
    for grad in params[1].list_grad():
        grad[:] = mx.nd.array([0.0, 4.0], ctx=grad.context)
    return params


def grads(params: list[gluon.Parameter], index: int = 0) -> list[np.ndarray]:
    return [p.list_grad()[index].asnumpy() for p in params]


def test_a_gradient_above_the_limit_is_scaled_down_to_it_in_its_direction():
    params = two_params([mx.cpu()])
    norm = clip_global_norm(params, 1.0, factor=1.0)
    assert norm.asscalar() == pytest.approx(5.0)
    a, b = grads(params)
    np.testing.assert_allclose(a, [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(b, [0.0, 0.8], rtol=1e-6)


def test_a_gradient_within_the_limit_is_left_as_it_is():
    params = two_params([mx.cpu()])
    assert clip_global_norm(params, 5.5, factor=1.0).asscalar() == pytest.approx(5.0)
    a, b = grads(params)
    np.testing.assert_array_equal(a, [3.0, 0.0])
    np.testing.assert_array_equal(b, [0.0, 4.0])


def test_the_norm_is_the_applied_gradients_the_factor_the_trainers_rescaling():
    """The gradients times 10 have norm 50: a limit of 25 halves them."""
    params = two_params([mx.cpu()])
    assert clip_global_norm(params, 25.0, factor=10.0).asscalar() == pytest.approx(50.0)
    np.testing.assert_allclose(grads(params)[1], [0.0, 2.0], rtol=1e-6)


def test_every_devices_copy_is_scaled_by_the_same_ratio():
    params = two_params([mx.cpu(0), mx.cpu(1)])
    clip_global_norm(params, 2.5, factor=1.0)
    for index in (0, 1):
        a, b = grads(params, index)
        np.testing.assert_allclose(a, [1.5, 0.0], rtol=1e-6)
        np.testing.assert_allclose(b, [0.0, 2.0], rtol=1e-6)


def test_a_frozen_parameter_neither_counts_nor_changes():
    params = two_params([mx.cpu()])
    frozen = gluon.Parameter("frozen", shape=(2,), grad_req="null")
    frozen.initialize(mx.init.One())
    assert clip_global_norm([*params, frozen], 1.0, factor=1.0).asscalar() == pytest.approx(5.0)
    np.testing.assert_array_equal(frozen.data().asnumpy(), [1.0, 1.0])


@pytest.mark.parametrize("limit", [0.0, -1.0])
def test_a_limit_of_zero_or_less_is_refused(limit: float):
    with pytest.raises(ValueError, match=f"max_norm {limit}"):
        clip_global_norm(two_params([mx.cpu()]), limit, factor=1.0)


@pytest.mark.parametrize("kvstore", [None, "device"])
def test_a_trainer_updates_from_the_clipped_gradient(kvstore: str | None):
    """SGD at rate 1 on two devices (kvstore device: the summed gradient): the step taken is the
    clipped gradient, the trainer's way in the loop (allreduce_grads, clip, update)."""
    contexts = [mx.cpu(0), mx.cpu(1)] if kvstore else [mx.cpu()]
    w = gluon.Parameter("w", shape=(2,))
    w.initialize(mx.init.Zero(), ctx=contexts)
    trainer = gluon.Trainer([w], "sgd", {"learning_rate": 1.0}, kvstore=kvstore,
                            update_on_kvstore=False if kvstore else None)
    target = mx.nd.array([30.0, 40.0])
    with autograd.record():
        # d/dw of -(target . w) is -target, on each device: the sum over devices is that times their count.
        losses = [-mx.nd.sum(w.data(c) * target.as_in_context(c)) for c in contexts]
    autograd.backward(losses)
    trainer.allreduce_grads()
    norm = clip_global_norm([w], 5.0, factor=trainer._scale)
    trainer.update(1)
    assert norm.asscalar() == pytest.approx(50.0 * len(contexts))
    for data in w.list_data():
        np.testing.assert_allclose(data.asnumpy(), [3.0, 4.0], rtol=1e-5)
