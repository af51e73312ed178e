"""Pipe-mode channels read as streams: records -> samples -> shuffle buffer -> batches.

One pass reads one FIFO (``data.pipe``) to its end. A reader thread parses the records
(``data.stream_records``: RecordIO image records, or an augmented manifest's image and label
records) and checks every label as File mode does; the samples this worker owns go through a
shuffle buffer of a set size to the data workers, which decode, augment and build the SSD targets
as for File mode. Memory is bounded by the shuffle buffer, a short queue and the batches in
flight, whatever the channel's size. Problems are collected, never skipped silently: ``PassReport`` holds them for the caller,
which fails the job at the end of the pass.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import Stopped
from . import recordio
from .labels import check_class_ids
from .loader import Batch, LoaderError, TargetFn, Transform, make_batch, worker_given_batch, worker_pool
from .pipe import PipeStream, fifo_path
from .sample import ImageRef, Issue, Sample
from .stream_records import PARSERS, Parsed, StreamFormatError, image_header

LOG = logging.getLogger(__name__)

FORMATS = ("recordio", "manifest")
# Issues kept word for word per pass; beyond this only counted.
KEPT_ISSUES = 100
_END = object()


@dataclass(frozen=True)
class StreamSource:
    """A Pipe-mode channel: its name, what its records hold, and where its FIFOs are."""

    channel: str
    format: str  # "recordio" or "manifest"
    folder: Path  # where this process finds <channel>_<n>
    shown_folder: Path  # where the user knows them to be (/opt/ml/input/data)
    part_index: int = 0  # this worker keeps every num_parts-th image, from part_index
    num_parts: int = 1


@dataclass
class PassReport:
    """What one pass over a stream held."""

    channel: str
    number: int  # which FIFO: <channel>_<number>
    images: int = 0  # in the whole stream, every part
    own: int = 0  # this worker's part
    issues: list[Issue] = field(default_factory=list)
    issue_count: int = 0
    classes: set[int] = field(default_factory=set)
    class_names: dict[int, str] = field(default_factory=dict)  # from a streamed "-metadata" attribute
    complete: bool = False

    def add_issue(self, issue: Issue) -> None:
        self.issue_count += 1
        if len(self.issues) < KEPT_ISSUES:
            self.issues.append(issue)


@dataclass
class _Pass:
    """One pass being read: its reader thread fills ``out`` through the shuffle buffer."""

    epoch: int
    report: PassReport
    out: queue.Queue
    closing: threading.Event
    thread: threading.Thread | None = None

    def close(self) -> None:
        self.closing.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


class StreamLoader:
    """Batches from a Pipe-mode channel, one pass (FIFO) per call of ``batches``.

    shuffle_buffer: images held for mixing within a pass (0 or 1: stream order). num_workers=0
    builds batches in this process. should_stop is asked while waiting; when it answers True
    the pass ends early and ``stopped`` is set.
    """

    def __init__(self, source: StreamSource, batch_size: int, transform: Transform, *, num_classes: int,
                 label_width: int, shuffle_buffer: int = 0, seed: int = 0, num_workers: int = 0,
                 targets: TargetFn | None = None, max_objects: int | None = None,
                 should_stop: Callable[[], bool] = lambda: False, timeout: float = 900,
                 prefetch: int | None = None) -> None:
        if source.format not in FORMATS:
            raise ValueError(f"stream format {source.format!r} must be one of {FORMATS}")
        self.source = source
        self.batch_size = batch_size
        self.transform = transform
        self.num_classes = num_classes
        self.label_width = label_width
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_workers = num_workers
        self.targets = targets
        self.max_objects = max_objects
        self.should_stop = should_stop
        self.timeout = timeout
        self.prefetch = prefetch or max(2, 2 * num_workers)
        self.passes = 0
        self.report: PassReport | None = None
        self.stopped = False
        self._pool: ProcessPoolExecutor | None = None
        self._recent: deque[tuple[int, Sample]] = deque(maxlen=max(4 * batch_size, 64))
        self._epoch = 0
        self._ahead: _Pass | None = None  # the next pass, already being read

    # -- reading ----------------------------------------------------------------------------
    def _owned(self, index: int) -> bool:
        return index % self.source.num_parts == self.source.part_index

    def _start_pass(self, epoch: int) -> _Pass:
        """Starts reading the next FIFO, <channel>_<passes>, on a thread."""
        job = _Pass(epoch, PassReport(self.source.channel, self.passes),
                    queue.Queue(maxsize=max(8, 2 * self.batch_size)), threading.Event())
        self.passes += 1
        job.thread = threading.Thread(target=self._read, args=(job,), daemon=True,
                                      name=f"pipe-{self.source.channel}-{job.report.number}")
        job.thread.start()
        return job

    def _read(self, job: _Pass) -> None:
        """Parses the pass, checks every record, and hands this worker's samples on through the
        shuffle buffer: once it holds shuffle_buffer samples, each new one takes the place of a
        random one, which goes on; at the end the rest go on in random order. The buffer fills
        on this thread, so the next pass can fill while the current one still trains."""
        source, report, out, closing = self.source, job.report, job.out, job.closing
        path = fifo_path(source.folder, source.channel, report.number)
        user_path = str(fifo_path(source.shown_folder, source.channel, report.number))
        rng = np.random.default_rng([self.seed, job.epoch, source.part_index, 0x5EED])
        held: list[tuple[int, Sample]] = []
        cap = self.shuffle_buffer
        try:
            with PipeStream(path, user_path, self.timeout, lambda: closing.is_set() or self.should_stop()) as stream:
                for parsed in PARSERS[source.format](stream, f"{source.channel}_{report.number}"):
                    self._account(parsed, report)
                    if parsed.sample is None or not self._owned(parsed.index):
                        continue
                    report.own += 1
                    item = (parsed.index, parsed.sample)
                    if cap > 1 and len(held) < cap:
                        held.append(item)
                        continue
                    if cap > 1:
                        slot = int(rng.integers(cap))
                        item, held[slot] = held[slot], item
                    if not self._put(out, item, closing):
                        return
            report.complete = True
            rng.shuffle(held)  # type: ignore[arg-type]
            for item in held:
                if not self._put(out, item, closing):
                    return
            self._put(out, _END, closing)
        except recordio.RecordIOFormatError as exc:
            self._put(out, StreamFormatError(f"{exc} (Pipe mode, {user_path})"), closing)
        except BaseException as exc:  # handed to the consuming thread
            self._put(out, exc, closing)

    def _account(self, parsed: Parsed, report: PassReport) -> None:
        report.images = max(report.images, parsed.index + 1)
        problems = list(parsed.problems)
        sample = parsed.sample
        if sample is not None:
            problems += check_class_ids(sample.class_ids, self.num_classes)
            if not sample.width:  # a manifest's image had its header read when it was paired
                header = image_header(sample.image.read())
                if isinstance(header, str):
                    problems.append(header)
            if parsed.label_width > self.label_width:
                problems.append(f"label_width={self.label_width} is too small: this image has {sample.num_objects} "
                                f"objects, which needs a label width of at least {parsed.label_width}")
            report.classes.update(int(c) for c in sample.class_ids)
            for cid, name in parsed.class_names.items():
                report.class_names.setdefault(cid, name)
        for problem in problems:
            report.add_issue(Issue(sample.where if sample is not None else f"{self.source.channel}_{report.number} "
                                   f"image {parsed.index}", problem))
        if problems and sample is not None:
            parsed.sample = None  # a sample with a problem is not trained on (the job fails at the end)

    @staticmethod
    def _put(out: queue.Queue, item: Any, closing: threading.Event) -> bool:
        while not closing.is_set():
            try:
                out.put(item, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _samples(self, job: _Pass) -> Iterator[tuple[int, Sample]]:
        """The owned samples of the pass, in the shuffled order; ends early on should_stop."""
        while True:
            try:
                item = job.out.get(timeout=0.25)
            except queue.Empty:
                if self.should_stop():
                    self.stopped = True
                    return
                continue
            if item is _END:
                return
            if isinstance(item, Stopped) or self.should_stop():
                self.stopped = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- batches ----------------------------------------------------------------------------
    def _pool_ready(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self.num_workers, None, self.transform, self.seed, self.max_objects,
                                     self.targets)
        return self._pool

    def _submit(self, chunk: dict[int, Sample]) -> Future:
        if self.num_workers == 0:
            future: Future = Future()
            try:
                future.set_result(make_batch(chunk, list(chunk), self.transform, self.seed, self._epoch,
                                             self.max_objects, self.targets, tolerant=True))
            except BaseException as exc:  # raised when the result is asked for
                future.set_exception(exc)
            return future
        return self._pool_ready().submit(worker_given_batch, self._epoch, chunk)

    def batches(self, epoch: int, read_ahead: bool = False) -> Iterator[Batch]:
        """The batches of the next pass (FIFO <channel>_<passes>); ``report`` describes it after.
        read_ahead: another pass follows, so its FIFO is opened and its shuffle buffer filled as
        soon as this pass's stream has ended (while the last batches train and validation runs)."""
        self._epoch = epoch
        job = self._ahead or self._start_pass(epoch)  # FIFOs are read in order, whatever the epoch
        self._ahead = None
        self.report = job.report
        self.stopped = False
        pending: deque[Future] = deque()
        chunk: dict[int, Sample] = {}
        try:
            for index, sample in self._samples(job):
                self._recent.append((index, sample))
                chunk[index] = sample
                if len(chunk) == self.batch_size:
                    pending.append(self._submit(chunk))
                    chunk = {}
                while pending and (len(pending) > self.prefetch or pending[0].done()):
                    yield self._collect(pending.popleft(), job.report)
            if read_ahead and job.report.complete and not self.stopped:
                self._ahead = self._start_pass(epoch + 1)
            if chunk and not self.stopped:
                pending.append(self._submit(chunk))
            while pending and not self.stopped:
                yield self._collect(pending.popleft(), job.report)
        except BrokenProcessPool as exc:
            self.close()
            raise LoaderError("a data loading worker died (out of memory?); the batch was lost") from exc
        finally:
            job.close()
            for future in pending:
                future.cancel()

    @staticmethod
    def _collect(future: Future, report: PassReport) -> Batch:
        batch = future.result()
        for issue in batch.issues:
            report.add_issue(issue)
        return batch

    def extra_batch(self) -> Batch:
        """A batch of recently seen samples, re-augmented: for a worker whose part of the pass has
        run out while others still train (every worker makes the same number of steps)."""
        rng = np.random.default_rng([self.seed, self._epoch, self.source.part_index, len(self._recent)])
        if self._recent:
            picks = rng.integers(len(self._recent), size=self.batch_size)
            chunk = {i: self._recent[int(p)][1] for i, p in enumerate(picks)}
        else:  # this worker got nothing at all: blank images without objects
            blank = Sample(ImageRef("", data=b""), np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                           np.zeros((0,), bool), "blank")
            chunk = {i: blank for i in range(self.batch_size)}
        batch = self._submit(chunk).result()
        batch.issues = [i for i in batch.issues if i.where != "blank"]
        return batch

    def close(self) -> None:
        if self._ahead is not None:  # read ahead but not needed (the job ends): closed early
            self._ahead.close()
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
