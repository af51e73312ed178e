"""Pipe-mode pass accounting on fake streams: workers kept in step over parts of different
lengths, what a pass's end checks, the first pass's count, and SIGTERM while waiting."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from ssd_detector.data.sample import Issue
from ssd_detector.data.stream import PassReport
from ssd_detector.errors import DataError, Stopped
from ssd_detector.training.distributed import World
from ssd_detector.training.passes import StreamPasses


@dataclass
class FakeSource:
    num_parts: int = 1


@dataclass
class FakeStream:
    """What StreamPasses reads of a StreamLoader: batches, stopped, report, source, extra_batch."""
    items: list
    report: PassReport
    stopped: bool = False
    source: FakeSource = field(default_factory=FakeSource)
    extras: int = 0

    def batches(self, epoch: int, read_ahead: bool = False):
        yield from self.items

    def extra_batch(self) -> str:
        self.extras += 1
        return f"extra{self.extras}"


class TwoWorkers(World):
    """Rank 0 of two; the other worker's share of each allreduce is given in advance."""
    size = 2

    def __init__(self, others: list[list[float]]) -> None:
        self.others = [np.array(o, np.float64) for o in others]

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return values + self.others.pop(0)


def report(number: int = 0, images: int = 4, classes=(0, 1), **kwargs) -> PassReport:
    return PassReport("train", number, images=images, own=images, classes=set(classes), **kwargs)


def accounting(world: World | None = None, num_classes: int = 2):
    counts: list[tuple[int, int]] = []
    names: dict[int, str] = {0: "given"}
    passes = StreamPasses(world or World(), num_classes, names, lambda n, e: counts.append((n, e)))
    return passes, counts, names


def test_a_clean_first_pass_yields_every_batch_and_counts_the_images():
    passes, counts, names = accounting()
    stream = FakeStream(["b0", "b1"], report(images=5, class_names={0: "streamed", 1: "square"}))
    assert list(passes.train_batches(stream, 0, read_ahead=True)) == ["b0", "b1"]
    assert counts == [(5, 0)] and not passes.stopped
    assert names == {0: "given", 1: "square"}  # names given with the job win


def test_only_the_first_training_pass_counts():
    passes, counts, _ = accounting()
    list(passes.train_batches(FakeStream(["b0"], report(number=3)), 3, read_ahead=False))
    assert counts == []


@pytest.mark.parametrize("bad, message", [
    (report(issues=[Issue("train_0#7", "truncated JPEG")], issue_count=12), r"12 problem\(s\).*train_0#7: truncated JPEG; and 11 more"),
    (report(classes=(0,)), "contiguous from 0 to 1: no object has class id 1"),
    (report(images=0, classes=()), "the stream held no images"),
])
def test_a_bad_pass_fails_at_its_end_naming_the_fifo_and_the_problem(bad, message):
    passes, counts, _ = accounting()
    with pytest.raises(DataError, match=message) as raised:
        list(passes.train_batches(FakeStream(["b0"], bad), 0, read_ahead=False))
    assert "Pipe mode, train_0" in str(raised.value)
    assert counts == []


def test_a_worker_whose_part_ran_out_trains_on_extra_batches_until_all_are_done():
    # Per step the other worker reports [has a batch, stopped]; then its share of the pass checks.
    world = TwoWorkers([[1, 0], [1, 0], [1, 0], [0, 0], [0]])
    passes, counts, _ = accounting(world)
    stream = FakeStream(["b0"], report(), source=FakeSource(num_parts=2))
    assert list(passes.train_batches(stream, 0, read_ahead=False)) == ["b0", "extra1", "extra2"]
    assert counts == [(4, 0)]


def test_a_problem_found_by_the_other_worker_stops_this_one_too():
    world = TwoWorkers([[0, 0], [1]])
    passes, _, _ = accounting(world)
    with pytest.raises(DataError, match="another worker found problems"):
        list(passes.train_batches(FakeStream([], report(), source=FakeSource(2)), 0, read_ahead=False))


def test_sigterm_while_waiting_for_the_stream_ends_the_pass_unchecked():
    passes, counts, _ = accounting()
    stream = FakeStream(["b0"], report(images=0, classes=()), stopped=True)
    assert list(passes.train_batches(stream, 0, read_ahead=False)) == ["b0"]
    assert passes.stopped and counts == []
    # Another worker stopped: every worker leaves the pass at the same step.
    passes, _, _ = accounting(TwoWorkers([[1, 1]]))
    assert list(passes.train_batches(FakeStream(["b0"], report(), source=FakeSource(2)), 0, False)) == []
    assert passes.stopped


def test_a_validation_pass_is_checked_and_sigterm_during_it_raises_stopped():
    passes, counts, _ = accounting()
    val = PassReport("validation", 0, images=2, own=2, classes={0})  # validation may lack classes
    assert list(passes.validation_batches(FakeStream(["v0"], val), 0)) == ["v0"]
    assert counts == []
    with pytest.raises(Stopped):
        list(passes.validation_batches(FakeStream(["v0"], val, stopped=True), 0))
