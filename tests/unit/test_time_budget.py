"""time_budget_seconds: how many epochs fit in what is left of the budget."""
import pytest

from ssd_detector.training.time_budget import END_SECONDS, TimeBudget, fitting_end, seconds_per_epoch


def test_the_epoch_estimate_leaves_out_the_first_epoch_and_takes_the_slower_of_latest_and_mean():
    assert seconds_per_epoch([50.0]) == 50.0
    assert seconds_per_epoch([50.0, 40.0]) == 40.0  # the first epoch hybridizes and warms caches
    assert seconds_per_epoch([50.0, 40.0, 42.0, 38.0]) == pytest.approx(40.0)  # mean of the last 3
    assert seconds_per_epoch([50.0, 38.0, 38.0, 44.0]) == 44.0  # slowing down: the latest
    assert seconds_per_epoch([50.0] + [40.0] * 10 + [10.0, 10.0, 10.0]) == 10.0  # only the last 3 count
    with pytest.raises(ValueError, match="no epoch"):
        seconds_per_epoch([])


def test_fitting_end_counts_whole_epochs_in_what_is_left():
    # 900 s, 100 used, 40 s epochs, 20 s for the end: 780 s hold 19 more epochs.
    assert fitting_end(900, 100, [40.0, 40.0], next_epoch=2, end=30, final_seconds=20) == 21
    assert fitting_end(900, 100, [40.0, 40.0], next_epoch=2, end=10, final_seconds=20) == 10  # never past end
    assert fitting_end(900, 890, [40.0, 40.0], next_epoch=2, end=30, final_seconds=20) == 2  # nothing more fits
    assert fitting_end(900, 950, [40.0], next_epoch=1, end=30, final_seconds=20) == 1  # already over


def test_the_budget_moves_the_end_later_only_with_an_epoch_to_spare():
    budget = TimeBudget(seconds=500, started=0.0)
    # After epoch 0 (60 s): (500 - 60 - 5 - 10) / 60 -> 7 more epochs, so the job ends before epoch 8.
    assert budget.end_after(60.0, 60.0, validation_seconds=5, next_epoch=1, end=30, most=30) == 8
    # Epoch 1 took 40 s: 2 + (500 - 100 - 15) / 40 = 11.6 would end before 11, but a later end
    # keeps an epoch to spare: 2 + (385 - 40) / 40 -> 10. Then the estimate wobbles (39.5 s, 41 s)
    # and the end holds, where without the spare epoch it would move to 11 and back.
    assert budget.end_after(100.0, 40.0, validation_seconds=5, next_epoch=2, end=8, most=30) == 10
    assert budget.end_after(139.0, 39.0, validation_seconds=5, next_epoch=3, end=10, most=30) == 10
    assert budget.end_after(180.0, 41.0, validation_seconds=5, next_epoch=4, end=10, most=30) == 10
    # Slower from here: the end moves earlier at once, with no spare epoch asked.
    assert budget.end_after(260.0, 80.0, validation_seconds=5, next_epoch=5, end=10, most=30) == 7
    assert END_SECONDS == 10


class FakeSchedule:
    """Records the moves of the end; steps move as StepWithWarmup.end_at moves them."""

    def __init__(self, steps: list[int]) -> None:
        self.step_epochs = steps
        self.moves: list[tuple[int, int]] = []

    def end_at(self, old_end: int, new_end: int, updates_done: int, epochs_done: int, updates_per_epoch: int) -> None:
        self.moves.append((old_end, new_end))
        self.step_epochs = [e if e <= epochs_done else e + new_end - old_end for e in self.step_epochs]


def test_the_end_moves_earlier_with_the_schedule_when_the_epochs_left_do_not_fit():
    from ssd_detector.training.checkpoint import LoopState
    from ssd_detector.training.distributed import World
    from ssd_detector.training.time_budget import JobEnd

    schedule = FakeSchedule([28, 29])
    end = JobEnd(30, schedule, TimeBudget(900.0, started=0.0), World())
    state = LoopState(next_epoch=1)
    # 100 s for epoch 0 and 5 s of validation: 900 - 100 - 15 leave 7 more epochs, ending before 8.
    end.fit(state, 0, now=100.0, validation_seconds=5.0, updates_done=10, updates_per_epoch=10)
    assert end.planned(state) == 8 == state.end_epoch
    assert schedule.moves == [(30, 8)] and schedule.step_epochs == [6, 7]


def test_a_job_that_reached_its_end_ends_there_though_a_faster_epoch_would_leave_room():
    from ssd_detector.training.checkpoint import LoopState
    from ssd_detector.training.distributed import World
    from ssd_detector.training.time_budget import JobEnd

    def run(last_epoch_seconds: float, through: int) -> tuple[int, list]:
        schedule = FakeSchedule([28, 29])
        end = JobEnd(30, schedule, TimeBudget(900.0, started=0.0), World())
        state = LoopState(next_epoch=1)
        now = 0.0
        for epoch in range(through + 1):  # 100 s an epoch: the end moves to 8 after epoch 0
            now += last_epoch_seconds if epoch == through else 100.0
            state.next_epoch = epoch + 1
            end.fit(state, epoch, now=now, validation_seconds=5.0, updates_done=10 * (epoch + 1),
                    updates_per_epoch=10)
        return end.planned(state), schedule.moves

    # A 10 s epoch 6 (not the last): room for one more epoch, and the end moves later.
    assert run(10.0, through=6) == (9, [(30, 8), (8, 9)])
    # The same 10 s for epoch 7, the last: validated and saved as the last, the job ends there.
    assert run(10.0, through=7) == (8, [(30, 8)])


def test_without_a_budget_the_job_runs_every_epoch_and_a_resume_keeps_the_budgets_end():
    from ssd_detector.training.checkpoint import LoopState
    from ssd_detector.training.distributed import World
    from ssd_detector.training.time_budget import JobEnd

    schedule = FakeSchedule([28, 29])
    unbudgeted = JobEnd(30, schedule, None, World())
    state = LoopState(next_epoch=5, end_epoch=12)  # checkpointed by a budgeted run
    unbudgeted.resume(state, 50, 10)
    assert unbudgeted.planned(state) == 30 and schedule.moves == []
    unbudgeted.fit(state, 5, now=1e9, validation_seconds=0.0, updates_done=60, updates_per_epoch=10)
    assert unbudgeted.planned(state) == 30

    budgeted = JobEnd(30, schedule, TimeBudget(900.0, started=0.0), World())
    state = LoopState(next_epoch=5, end_epoch=12)
    budgeted.resume(state, 50, 10)
    assert budgeted.planned(state) == 12 and schedule.moves == [(30, 12)]
