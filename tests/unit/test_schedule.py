"""The learning-rate schedule: warm-up, steps in epochs, rebased when Pipe mode counts the images."""
import pytest

from ssd_detector.training.schedule import StepWithWarmup, batches_per_epoch


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
