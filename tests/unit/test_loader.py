"""Batching in worker processes, sharding, determinism and failures."""
import os
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.channel import read_channel
from ssd_detector.data.loader import DetectionLoader, LoaderError, shard_indices
from ssd_detector.data.sample import ImageRef, Sample
from ssd_detector.data.transforms import TrainTransform, ValTransform


class DieInWorker:
    """A transform that kills the worker process running it."""

    def __call__(self, image, boxes, rng, epoch=0):
        os._exit(3)


@pytest.fixture(scope="module")
def samples(synth_set: Path):
    return read_channel(synth_set / "recordio" / "train").samples


@pytest.mark.parametrize("n,parts", [(10, 3), (16, 2), (5, 4), (3, 5)])
def test_shards_are_disjoint_and_complete(n, parts):
    order = np.random.default_rng(0).permutation(n)
    shards = [shard_indices(order, i, parts) for i in range(parts)]
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(n))
    assert len(set(joined.tolist())) == n
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,parts", [(10, 3), (16, 2), (5, 4), (3, 5)])
def test_equal_shards_cover_everything_with_the_same_length(n, parts):
    order = np.random.default_rng(0).permutation(n)
    shards = [shard_indices(order, i, parts, equal=True) for i in range(parts)]
    assert {len(s) for s in shards} == {-(-n // parts)}
    assert set(np.concatenate(shards).tolist()) == set(range(n))
    assert sum(len(s) for s in shards) - n < parts, "only the last round repeats samples"


def test_interleaved_shards_batch_like_one_process():
    """Batch j of each of 2 parts with batch b, together, is batch j of one part with batch 2b."""
    order = np.random.default_rng(1).permutation(24)
    b = 3
    halves = [shard_indices(order, i, 2) for i in range(2)]
    for j in range(4):
        together = np.concatenate([h[j * b:(j + 1) * b] for h in halves])
        assert sorted(together.tolist()) == sorted(order[j * 2 * b:(j + 1) * 2 * b].tolist())


def test_loader_parts_cover_the_epoch_once(samples):
    seen = []
    for part in range(3):
        loader = DetectionLoader(samples, 4, ValTransform(64), shuffle=True, seed=1, part_index=part, num_parts=3,
                                 num_workers=0)
        loader.set_epoch(2)
        seen.extend(int(i) for batch in loader for i in batch.indices)
    assert sorted(seen) == list(range(len(samples)))


def test_shuffle_changes_with_epoch_and_is_repeatable(samples):
    loader = DetectionLoader(samples, 4, ValTransform(64), shuffle=True, seed=1, num_workers=0)
    loader.set_epoch(0)
    first = loader.epoch_indices().tolist()
    loader.set_epoch(1)
    assert loader.epoch_indices().tolist() != first
    loader.set_epoch(0)
    assert loader.epoch_indices().tolist() == first


def test_workers_give_the_same_batches_as_the_main_process(samples):
    transform = TrainTransform(96)
    serial = DetectionLoader(samples, 5, transform, shuffle=True, seed=4, num_workers=0, max_objects=8)
    with DetectionLoader(samples, 5, transform, shuffle=True, seed=4, num_workers=2, max_objects=8) as parallel:
        for epoch in (0, 1):
            serial.set_epoch(epoch)
            parallel.set_epoch(epoch)
            a, b = list(serial), list(parallel)
            assert len(a) == len(b) == len(serial) == 4
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.images, y.images)
                np.testing.assert_array_equal(x.labels, y.labels)
    assert a[0].images.shape == (5, 3, 96, 96) and a[0].labels.shape == (5, 8, 6)
    assert a[-1].images.shape[0] == 1  # 16 samples: the last batch keeps the remainder


def test_labels_are_padded_with_minus_one_and_keep_classes(samples):
    loader = DetectionLoader(samples, 16, ValTransform(64), shuffle=False, num_workers=0)
    batch = next(iter(loader))
    for row, index in zip(batch.labels, batch.indices):
        sample = samples[index]
        n = sample.num_objects
        np.testing.assert_array_equal(row[:n, 0], sample.class_ids)
        np.testing.assert_allclose(row[:n, 1:5], sample.boxes)
        assert np.all(row[n:] == -1)


def test_drop_last(samples):
    loader = DetectionLoader(samples, 5, ValTransform(64), shuffle=False, num_workers=0, drop_last=True)
    assert len(loader) == 3 and len(list(loader)) == 3


def test_bad_image_names_the_sample(tmp_path: Path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    sample = Sample(ImageRef(str(bad)), np.zeros((0, 4), np.float32), np.zeros(0, np.int32), np.zeros(0, bool),
                    "bad.jpg")
    with DetectionLoader([sample], 1, ValTransform(32), shuffle=False, num_workers=1) as loader:
        with pytest.raises(LoaderError, match="bad.jpg: ImageError"):
            list(loader)


def test_dead_worker_raises_instead_of_hanging(samples):
    with DetectionLoader(samples, 4, DieInWorker(), shuffle=False, num_workers=1) as loader:
        with pytest.raises(LoaderError, match="worker died"):
            list(loader)
