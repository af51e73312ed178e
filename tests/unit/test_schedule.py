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


def test_an_earlier_end_moves_the_steps_ahead_with_it():
    """time_budget_seconds: 24 epochs with steps 22,23 become 21 after epoch 9, steps 19,20."""
    schedule = StepWithWarmup(0.1, [22, 23], 0.1, updates_per_epoch=10, warmup=0)
    schedule.end_at(24, 21, updates_done=100, epochs_done=10, updates_per_epoch=10)
    assert schedule.step_epochs == [19, 20] and schedule.step_updates == [190, 200]
    assert schedule(189) == pytest.approx(0.1) and schedule(190) == pytest.approx(0.01)
    assert schedule(200) == pytest.approx(0.001)
    # Later again (a faster epoch): the steps still ahead follow; never beyond what the job gave.
    schedule.end_at(21, 22, updates_done=110, epochs_done=11, updates_per_epoch=10)
    assert schedule.step_epochs == [20, 21]


def test_a_step_the_new_end_puts_in_the_past_comes_next_and_passed_steps_stay():
    schedule = StepWithWarmup(0.1, [5, 18, 19], 0.1, updates_per_epoch=10, warmup=0)
    schedule.end_at(20, 13, updates_done=120, epochs_done=12, updates_per_epoch=10)
    # 5 had passed; 18 - 7 = 11 is behind, so it comes at the next update; 19 - 7 = 12 too.
    assert schedule.step_epochs == [5, 12, 12]
    assert schedule(120) == pytest.approx(0.1 * 0.1 ** 3)
    schedule.end_at(13, 15, updates_done=120, epochs_done=12, updates_per_epoch=10)
    assert schedule.step_epochs == [5, 12, 12], "steps that came stay passed"


def test_cosine_reaches_zero_at_the_new_end():
    schedule = CosineWithWarmup(0.1, epochs=10, updates_per_epoch=10, warmup=0)
    schedule.end_at(10, 6, updates_done=40, epochs_done=4, updates_per_epoch=10)
    assert schedule.epochs == 6 and schedule.total_updates == 60
    assert schedule(60) == pytest.approx(0.0) and schedule(40) < 0.1
