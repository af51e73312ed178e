"""The learning-rate schedule: warm-up, steps in epochs, rebased when Pipe mode counts the images."""
import pytest

from ssd_detector.training.schedule import CosineWithWarmup, StepWithWarmup, batches_per_epoch, make_schedule


def test_schedule_warms_up_then_steps_in_epochs():
    updates = batches_per_epoch(1000, 32)
    assert updates == 32
    schedule = StepWithWarmup(0.1, (2, 4), 0.1, updates)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(16) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert schedule(32) == pytest.approx(0.1)
    assert schedule(2 * 32 - 1) == pytest.approx(0.1)
    assert schedule(2 * 32) == pytest.approx(0.01)
    assert schedule(4 * 32) == pytest.approx(0.001)


def test_schedule_rebased_on_the_real_batch_count():
    """Pipe mode learns the real batch count after its first epoch: steps still ahead move, steps
    passed stay passed."""
    schedule = StepWithWarmup(0.1, [3, 5], 0.1, updates_per_epoch=10, warmup=0)
    assert schedule.step_updates == [30, 50]
    schedule.rebase(updates_done=25, epochs_done=1, updates_per_epoch=25)  # epoch 0 had 25 batches, not 10
    assert schedule.step_updates == [25 + 2 * 25, 25 + 4 * 25]
    assert schedule(74) == pytest.approx(0.1) and schedule(75) == pytest.approx(0.01)
    passed = StepWithWarmup(0.1, [1, 4], 0.1, updates_per_epoch=10, warmup=0)
    passed.rebase(updates_done=60, epochs_done=3, updates_per_epoch=20)
    assert passed.step_updates == [10, 80] and passed(60) == pytest.approx(0.01)


def test_cosine_decays_to_zero_over_the_epochs_after_the_warm_up():
    schedule = make_schedule("cosine", 0.1, epochs=4, step_epochs=(2,), factor=0.1, updates_per_epoch=10)
    assert isinstance(schedule, CosineWithWarmup) and schedule.warmup == 10
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(20) == pytest.approx(0.05)  # half-way: half the rate; the step at epoch 2 is not applied
    assert schedule(40) == pytest.approx(0.0) and schedule(400) == pytest.approx(0.0)
    rates = [schedule(u) for u in range(10, 41)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_cosine_rebased_on_the_real_batch_count():
    schedule = CosineWithWarmup(0.1, epochs=3, updates_per_epoch=10, warmup=0)
    schedule.rebase(updates_done=25, epochs_done=1, updates_per_epoch=25)
    assert schedule.total_updates == 75 and schedule(75) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'linear'"):
        make_schedule("linear", 0.1, 3, (), 0.1, 10)
