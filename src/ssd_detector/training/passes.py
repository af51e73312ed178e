"""Passes over Pipe-mode channels (one FIFO per pass): keeping the job's workers in step over
streams of different lengths, and what is checked when a pass ends (bad records, the classes,
the number of training images), for every worker alike.

A File-mode loader knows its length in advance; a stream's is known only at its end, so each
step asks every worker whether any still has a batch, and the first training pass counts the
images that ``num_training_samples`` promised.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, MutableMapping

import numpy as np

from ..data.loader import Batch
from ..data.sample import Issue
from ..data.stream import StreamLoader
from ..errors import DataError, Stopped
from . import distributed
from .inputs import format_issues

LOG = logging.getLogger(__name__)


class StreamPasses:
    """The pass accounting of one worker.

    ``class_names`` gains the names a stream carries (a manifest's ``-metadata``);
    ``on_train_count(images, epoch)`` is called after the first training pass with the number
    of training images the whole job streamed."""

    def __init__(self, world: distributed.World, num_classes: int, class_names: MutableMapping[int, str],
                 on_train_count: Callable[[int, int], None]) -> None:
        self.world = world
        self.num_classes = num_classes
        self.class_names = class_names
        self.on_train_count = on_train_count
        self.stopped = False  # the latest training pass ended by SIGTERM while waiting for the stream

    def train_batches(self, loader: StreamLoader, epoch: int, read_ahead: bool) -> Iterator[Batch]:
        """This worker's batches of one training pass, as many as the longest part has: a worker
        whose part has run out trains on recent samples meanwhile. A worker stopped while waiting
        for its stream stops them all (``stopped``)."""
        batches = loader.batches(epoch, read_ahead=read_ahead)
        self.stopped = False
        while True:
            batch = next(batches, None)
            if self.world.size > 1:
                more, stops = self.world.allreduce_sum(np.array([float(batch is not None), float(loader.stopped)]))
                if stops:
                    self.stopped = True
                    return
                if more == 0:
                    break
                if batch is None:
                    batch = loader.extra_batch()
            elif batch is None:
                break
            yield batch
        if loader.stopped:
            self.stopped = True
            return
        self.end_pass(loader, "train", epoch)

    def end_pass(self, loader: StreamLoader, split: str, epoch: int) -> None:
        """After a pass: fail on any bad record (all workers together), check the classes, keep
        the streamed class names, and count the training images after the first pass."""
        report = loader.report
        assert report is not None  # set once a pass has begun
        where = f" (Pipe mode, {report.channel}_{report.number})"
        issues, count = list(report.issues), report.issue_count
        sees_all = split != "train" or loader.source.num_parts == self.world.size  # the whole data set passed by
        if report.number == 0 and split == "train" and sees_all:
            missing = sorted(set(range(self.num_classes)) - report.classes)
            if missing and report.images:
                listed = ", ".join(str(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
                issues.append(Issue(split, f"class ids must be contiguous from 0 to {self.num_classes - 1}: "
                                           f"no object has class id {listed}"))
                count += 1
        if not report.images and not count:
            issues.append(Issue(f"{report.channel}_{report.number}", "the stream held no images"))
            count = 1
        found = self.world.allreduce_sum(np.array([float(count > 0)]))[0]
        if count:
            raise DataError(format_issues(split, issues, count, where))
        if found:
            raise DataError(f"channel '{split}'{where}: {distributed.PEER_FAILED_TEXT}")
        for cid, name in report.class_names.items():
            self.class_names.setdefault(cid, name)
        if split == "train" and report.number == 0:
            self.on_train_count(self._job_images(loader), epoch)

    def _job_images(self, loader: StreamLoader) -> int:
        """The training images of the whole job in the first pass."""
        report = loader.report
        assert report is not None
        if loader.source.num_parts == self.world.size:  # every worker saw the whole stream go by
            return report.images
        # ShardedByS3Key: each host counted its own share (its local rank 0 speaks for it).
        return int(self.world.allreduce_sum(np.array([float(report.images if self.world.local_rank == 0
                                                            else 0)]))[0])

    def validation_batches(self, loader: StreamLoader, epoch: int) -> Iterator[Batch]:
        """One validation pass (every worker reads the whole stream); SIGTERM while waiting for
        it raises Stopped."""
        yield from loader.batches(epoch)
        if loader.stopped:
            raise Stopped("SIGTERM while reading the validation stream")
        self.end_pass(loader, "validation", epoch)
