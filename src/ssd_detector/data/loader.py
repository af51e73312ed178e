"""Batches of transformed samples, made in worker processes, sharded for distributed training.

Each worker builds whole batches (decode, transform, stack) so the training process only
receives finished arrays. Randomness comes from (seed, epoch, sample index), so a batch is the
same whatever the worker count. A dead worker raises at once instead of hanging.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .images import decode_rgb
from .sample import Issue, Sample, empty_objects

LOG = logging.getLogger(__name__)

# A transform maps (image (H, W, 3) uint8, boxes (N, 4), rng, epoch) -> (image (3, S, S), boxes (K, 4), kept (N,)).
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
# A target encoder maps (boxes (K, 4), class ids (K,)) -> (class target (A,), box target (A, 4)).
TargetFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
LABEL_COLUMNS = 6  # class id, xmin, ymin, xmax, ymax, difficult


class LoaderError(RuntimeError):
    """A batch could not be made; the message names the sample."""


@dataclass
class Batch:
    images: np.ndarray  # (B, 3, S, S) uint8
    labels: np.ndarray  # (B, M, 6) float32: class id, corners, difficult; rows of -1 pad
    indices: np.ndarray  # (B,) sample indices, for tests and evaluation
    cls_targets: np.ndarray | None = None  # (B, A) float32, 0 = background, class + 1
    box_targets: np.ndarray | None = None  # (B, A, 4) float32; (B, A, 5) with a loss weight (object_balance)
    issues: list[Issue] = field(default_factory=list)  # images that failed (tolerant batches only)


def shard_indices(order: np.ndarray, part_index: int, num_parts: int, equal: bool = False) -> np.ndarray:
    """Part ``part_index`` of ``num_parts`` of an epoch's order: disjoint, together complete,
    sizes differing by at most one. Interleaved, so batch j of every part together is batch j
    of one process given num_parts times the batch size.

    equal=True makes every part ceil(N / num_parts) long by continuing cyclically from the start
    of the order (distributed workers must run the same number of steps)."""
    if not 0 <= part_index < num_parts:
        raise ValueError(f"part index {part_index} must be in [0, {num_parts})")
    if equal and len(order):
        longest = -(-len(order) // num_parts)
        order = np.resize(order, longest * num_parts)  # np.resize repeats cyclically
    return order[part_index::num_parts]


def make_batch(samples: Sequence[Sample] | Mapping[int, Sample], indices: Sequence[int] | np.ndarray, transform: Transform,
               seed: int, epoch: int, max_objects: int | None, targets: TargetFn | None = None,
               tolerant: bool = False) -> Batch:
    """The batch of samples[i] for i in indices. tolerant: an image that cannot be used becomes a
    blank image without objects and an issue of the batch (Pipe mode reports them all at the
    end of the pass) instead of an error."""
    images, labels, cls_targets, box_targets = [], [], [], []
    issues: list[Issue] = []
    for index in indices:
        sample = samples[index]
        rng = np.random.default_rng([seed, epoch, int(index)])
        try:
            image = decode_rgb(sample.image.read())
            out, boxes, kept = transform(image, sample.boxes, rng, epoch)
        except Exception as exc:  # the sample is named, whatever went wrong
            if not tolerant:
                raise LoaderError(f"{sample.where}: {type(exc).__name__}: {exc}") from exc
            issues.append(Issue(sample.where, str(exc)))
            sample = Sample(sample.image, *empty_objects(), sample.where)
            out, boxes, kept = transform(np.zeros((8, 8, 3), np.uint8), sample.boxes, rng, epoch)
        rows = np.concatenate([sample.class_ids[kept, None].astype(np.float32), boxes,
                               sample.difficult[kept, None].astype(np.float32)], axis=1)  # (K, 6)
        images.append(out)
        labels.append(rows)
        if targets is not None:
            cls_t, box_t = targets(boxes, sample.class_ids[kept])
            cls_targets.append(cls_t)
            box_targets.append(box_t)
    width = max_objects if max_objects is not None else max((len(r) for r in labels), default=0)
    width = max(width, 1)
    padded = np.full((len(labels), width, LABEL_COLUMNS), -1, np.float32)
    for i, rows in enumerate(labels):
        padded[i, :min(len(rows), width)] = rows[:width]
    batch = Batch(np.stack(images), padded, np.asarray(indices, np.int64), issues=issues)
    if targets is not None:
        batch.cls_targets, batch.box_targets = np.stack(cls_targets), np.stack(box_targets)
    return batch


_WORKER_STATE: dict = {}


def _worker_init(samples: Sequence[Sample] | None, transform: Transform, seed: int, max_objects: int | None,
                 targets: TargetFn | None) -> None:
    import signal

    import cv2
    cv2.setNumThreads(1)  # the workers are the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    # Not the training process's SIGTERM handler (inherited through fork): a worker sent SIGTERM ends.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_STATE.update(samples=samples, transform=transform, seed=seed, max_objects=max_objects, targets=targets)


def _worker_batch(epoch: int, indices: np.ndarray) -> Batch:
    state = _WORKER_STATE
    return make_batch(state["samples"], indices, state["transform"], state["seed"], epoch, state["max_objects"],
                      state["targets"])


def worker_given_batch(epoch: int, samples: Mapping[int, Sample]) -> Batch:
    """A batch of samples sent along (Pipe mode: the bytes come from the stream, not a file)."""
    state = _WORKER_STATE
    return make_batch(samples, list(samples), state["transform"], state["seed"], epoch, state["max_objects"],
                      state["targets"], tolerant=True)


def worker_pool(num_workers: int, samples: Sequence[Sample] | None, transform: Transform, seed: int,
                max_objects: int | None, targets: TargetFn | None) -> ProcessPoolExecutor:
    # spawn: workers never inherit the training process's MXNet engine threads.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=context, initializer=_worker_init,
                               initargs=(samples, transform, seed, max_objects, targets))


class DetectionLoader:
    """Iterates batches of one epoch at a time; call ``set_epoch`` before each epoch.

    num_workers=0 makes batches in the calling process (tests, debugging).
    """

    def __init__(self, samples: Sequence[Sample], batch_size: int, transform: Transform, *, shuffle: bool,
                 seed: int = 0, part_index: int = 0, num_parts: int = 1, num_workers: int | None = None,
                 drop_last: bool = False, max_objects: int | None = None, prefetch: int | None = None,
                 targets: TargetFn | None = None, equal_parts: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} must be >= 1")
        self.samples = list(samples)
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.part_index = part_index
        self.num_parts = num_parts
        self.equal_parts = equal_parts
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        self.drop_last = drop_last
        self.max_objects = max_objects
        self.prefetch = prefetch or max(2, 2 * self.num_workers)
        self.targets = targets
        self.epoch = 0
        self._pool: ProcessPoolExecutor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This part's sample indices for an epoch, in order."""
        epoch = self.epoch if epoch is None else epoch
        order = np.arange(len(self.samples))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 2**31 - 1]).permutation(len(self.samples))
        return shard_indices(order, self.part_index, self.num_parts, self.equal_parts)

    def __len__(self) -> int:
        if self.equal_parts:
            count = -(-len(self.samples) // self.num_parts)
        else:
            count = len(range(self.part_index, len(self.samples), self.num_parts))  # this part's share
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def _batches(self) -> list[np.ndarray]:
        indices = self.epoch_indices()
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self.num_workers, self.samples, self.transform, self.seed, self.max_objects,
                                     self.targets)
        return self._pool

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        if self.num_workers == 0:
            for indices in batches:
                yield make_batch(self.samples, indices, self.transform, self.seed, self.epoch, self.max_objects,
                                 self.targets)
            return
        pool = self._ensure_pool()
        pending: deque[Future] = deque()
        upcoming = iter(batches)
        epoch = self.epoch
        try:
            for indices in upcoming:
                pending.append(pool.submit(_worker_batch, epoch, indices))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(_worker_batch, epoch, following))
                yield batch
        except BrokenProcessPool as exc:
            self.close()
            raise LoaderError("a data loading worker died (out of memory?); the batch was lost") from exc
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            # Waiting lets the executor's manager thread end now, not in an atexit hook that
            # would write to an already closed pipe.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "DetectionLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
