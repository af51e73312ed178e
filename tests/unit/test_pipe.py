"""Pipe mode pieces: FIFO reading, stream parsing, Ground Truth labels and manifests."""
from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data import recordio
from ssd_detector.data.images import encode
from ssd_detector.data.loader import Batch
from ssd_detector.data.manifest import ImageResolver, parse_label, read_manifest
from ssd_detector.data.pipe import PipeFanout, PipeStalled, PipeStream
from ssd_detector.data.stream import StreamLoader, StreamSource
from ssd_detector.data.stream_records import StreamFormatError, parse_manifest
from ssd_detector.data.transforms import ValTransform
from ssd_detector.errors import Stopped

def jpeg(width: int = 40, height: int = 30) -> bytes:
    return encode(np.full((height, width, 3), 120, np.uint8), "jpeg")


def label(*objects: tuple, width: int = 40, height: int = 30) -> dict:
    return {"image_size": [{"width": width, "height": height, "depth": 3}],
            "annotations": [dict(zip(("class_id", "left", "top", "width", "height"), o)) for o in objects]}


def framed(*payloads: bytes) -> bytes:
    out = io.BytesIO()
    for payload in payloads:
        recordio.write_record(out, payload)
    return out.getvalue()


def write_later(path: Path, data: bytes, delay: float = 0.2, chunks: int = 3) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with open(path, "wb") as fifo:
            step = max(1, len(data) // chunks)
            for i in range(0, len(data), step):
                fifo.write(data[i:i + step])
                fifo.flush()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- FIFOs ---------------------------------------------------------------------------------------
def test_fifo_read_to_end_and_empty_pass(tmp_path: Path):
    path = tmp_path / "train_0"
    os.mkfifo(path)
    writer = write_later(path, b"x" * 100_000)
    with PipeStream(path, "train_0", timeout=10).open() as stream:
        assert stream.read(60_000) == b"x" * 60_000
        assert stream.read(60_000) == b"x" * 40_000
        assert stream.read(10) == b""
    writer.join()
    os.unlink(path)
    os.mkfifo(path)
    writer = write_later(path, b"")
    with PipeStream(path, "train_0", timeout=10).open() as stream:
        assert stream.read(8) == b""  # a writer that opens and closes: an empty pass, not a wait
    writer.join()


def test_fifo_that_never_appears_or_never_gets_a_writer(tmp_path: Path):
    start = time.monotonic()
    with pytest.raises(PipeStalled, match=r"the FIFO of /opt/ml/input/data/train_0 did not come within 1 s"):
        PipeStream(tmp_path / "train_0", "/opt/ml/input/data/train_0", timeout=1).open()
    os.mkfifo(tmp_path / "validation_3")
    with PipeStream(tmp_path / "validation_3", "validation_3", timeout=1) as stream:
        with pytest.raises(PipeStalled, match="a writer of validation_3"):
            stream.read(8)
    assert time.monotonic() - start < 5


def test_stop_while_waiting_on_a_fifo(tmp_path: Path):
    os.mkfifo(tmp_path / "train_0")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    with PipeStream(tmp_path / "train_0", "train_0", timeout=600, should_stop=stop.is_set) as stream:
        with pytest.raises(Stopped):
            stream.read(8)
    assert time.monotonic() - start < 3


def test_feeder_and_fanout_give_every_worker_every_pass(tmp_path: Path, pipe_feed):
    feed = pipe_feed
    source, workers = tmp_path / "data", [tmp_path / "w0", tmp_path / "w1"]
    source.mkdir()
    payload = os.urandom(3_000_000)
    feeder = feed.PipeFeeder(source, "train", lambda: iter([payload[:1_000_000], payload[1_000_000:]])).start()
    fanout = PipeFanout(source, workers, ["train"], timeout=20).start()
    try:
        for number in range(2):
            results = {}

            def read(folder: Path) -> None:
                with PipeStream(folder / f"train_{number}", "train", timeout=20) as stream:
                    results[folder] = stream.read(10_000_000)
            threads = [threading.Thread(target=read, args=(w,)) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert all(results[w] == payload for w in workers)
    finally:
        fanout.stop()
        feeder.stop()
    assert feeder.completed == 2 and fanout.error is None and feeder.error is None


# -- Ground Truth labels -------------------------------------------------------------------------
def test_ground_truth_label_plain_wrapped_and_empty():
    boxes, ids, problems = parse_label(label((1, 4, 3, 20, 15)), 40, 30)
    assert problems == [] and ids.tolist() == [1]
    np.testing.assert_allclose(boxes, [[0.1, 0.1, 0.6, 0.6]], atol=1e-6)
    wrapped = {"my-labels": label((0, 0, 0, 40, 30))}
    assert parse_label(wrapped, 40, 30)[1].tolist() == [0]
    boxes, ids, problems = parse_label({"annotations": []}, 40, 30)
    assert boxes.shape == (0, 4) and not problems


@pytest.mark.parametrize("value, message", [
    (label((0, 0, 0, 10, 10), width=50), "image_size says 50x30 but the image is 40x30"),
    (label((0, 30, 0, 20, 10)), "lies outside"),
    (label((0, 0, 0, 0, 10)), "zero area"),
    ({"annotations": [{"class_id": 0, "left": 1}]}, "lacks top, width, height"),
])
def test_ground_truth_label_problems(value, message):
    assert message in " ".join(parse_label(value, 40, 30)[2])


def test_video_and_non_labels_are_refused():
    with pytest.raises(ValueError, match="video-frame"):
        parse_label({"frames-ref": "s3://b/SeqLabel.json"}, 40, 30)
    with pytest.raises(ValueError, match="no 'annotations'"):
        parse_label({"class-map": {"0": "a"}}, 40, 30)


# -- streams -------------------------------------------------------------------------------------
def test_manifest_stream_pairs_images_with_labels():
    stream = io.BytesIO(framed(jpeg(), json.dumps(label((0, 1, 1, 10, 10))).encode(),
                               json.dumps({"class-map": {"0": "dog"}}).encode(),
                               jpeg(), json.dumps({"annotations": []}).encode()))
    parsed = list(parse_manifest(stream, "train_0"))
    assert [p.index for p in parsed] == [0, 1]
    assert parsed[0].sample.class_ids.tolist() == [0] and parsed[0].class_names == {0: "dog"}
    assert parsed[1].sample.num_objects == 0 and not parsed[1].problems
    assert "records 3-4" in parsed[1].sample.where


def test_manifest_stream_in_the_wrong_attribute_order():
    stream = io.BytesIO(framed(json.dumps(label()).encode(), jpeg()))
    with pytest.raises(StreamFormatError, match="AttributeNames must list \"source-ref\" first"):
        list(parse_manifest(stream, "train_0"))


def test_manifest_stream_image_without_label():
    parsed = list(parse_manifest(io.BytesIO(framed(jpeg(), jpeg(), json.dumps(label()).encode())), "train_0"))
    assert parsed[0].sample is None and "no label record" in parsed[0].problems[0]
    assert parsed[1].sample is not None


def _loader(tmp_path: Path, fmt: str = "manifest", **kwargs) -> StreamLoader:
    source = StreamSource("train", fmt, tmp_path, Path("/opt/ml/input/data"), **{
        k: kwargs.pop(k) for k in ("part_index", "num_parts") if k in kwargs})
    return StreamLoader(source, 2, ValTransform(32), num_classes=2, label_width=350, **kwargs)


def _pass(loader: StreamLoader, tmp_path: Path, data: bytes, number: int = 0) -> list[Batch]:
    os.mkfifo(tmp_path / f"train_{number}")
    writer = write_later(tmp_path / f"train_{number}", data)
    batches = list(loader.batches(number))
    writer.join()
    return batches


def test_stream_loader_parts_shuffle_and_report(tmp_path: Path):
    records = []
    for i in range(7):
        records += [jpeg(), json.dumps(label((i % 2, 1, 1, 10, 10))).encode()]
    data = framed(*records)
    seen = []
    for part in range(2):
        folder = tmp_path / str(part)
        folder.mkdir()
        loader = _loader(folder, part_index=part, num_parts=2, shuffle_buffer=3, seed=1)
        batches = _pass(loader, folder, data)
        seen.append(sorted(int(i) for b in batches for i in b.indices))
        assert loader.report.images == 7 and loader.report.issue_count == 0 and loader.report.complete
        assert loader.report.own == len(seen[-1])
    assert seen == [[0, 2, 4, 6], [1, 3, 5]]


def test_stream_loader_reports_bad_records_and_keeps_going(tmp_path: Path):
    data = framed(jpeg(), json.dumps(label((5, 1, 1, 10, 10))).encode(),  # class 5 of num_classes=2
                  b"\xff\xd8 not really a jpeg", json.dumps(label()).encode(),
                  jpeg(), json.dumps(label((1, 1, 1, 10, 10))).encode())
    loader = _loader(tmp_path)
    batches = _pass(loader, tmp_path, data)
    report = loader.report
    assert report.issue_count == 2 and report.images == 3
    assert "train_0 image 0" in report.issues[0].where and "out of range for num_classes=2" in report.issues[0].what
    assert "image 1" in report.issues[1].where
    assert [int(i) for b in batches for i in b.indices] == [2]


def test_stream_loader_truncated_stream(tmp_path: Path):
    data = framed(jpeg(), json.dumps(label()).encode())
    loader = _loader(tmp_path)
    with pytest.raises(StreamFormatError, match="truncated"):
        _pass(loader, tmp_path, data[:-30])


def test_stream_loader_undecodable_image_is_an_issue_of_the_batch(tmp_path: Path):
    broken = jpeg()[:-2]  # header intact, no end-of-image marker: fails only when decoded
    data = framed(broken, json.dumps(label()).encode(), jpeg(), json.dumps(label()).encode())
    loader = _loader(tmp_path)
    batches = _pass(loader, tmp_path, data)
    assert len(batches) == 1 and batches[0].images.shape == (2, 3, 32, 32)
    assert loader.report.issue_count == 1 and "truncated" in loader.report.issues[0].what
    assert "image 0" in loader.report.issues[0].where
    assert (batches[0].labels[list(batches[0].indices).index(0)] == -1).all()  # blank, no objects
    extra = loader.extra_batch()
    assert extra.images.shape == (2, 3, 32, 32)


def test_recordio_stream(tmp_path: Path, synth_set: Path):
    data = (synth_set / "recordio/train/train.rec").read_bytes()
    source = StreamSource("train", "recordio", tmp_path, tmp_path)
    loader = StreamLoader(source, 4, ValTransform(32), num_classes=3, label_width=350)
    batches = _pass(loader, tmp_path, data)
    assert sum(len(b.images) for b in batches) == 16 and loader.report.issue_count == 0


def test_stop_while_the_stream_waits(tmp_path: Path):
    stop = threading.Event()
    loader = _loader(tmp_path, should_stop=stop.is_set)
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    assert list(loader.batches(0)) == []
    assert loader.stopped and time.monotonic() - start < 3


# -- manifests in File mode ----------------------------------------------------------------------
def test_read_manifest_resolves_local_and_s3_refs(tmp_path: Path):
    images = tmp_path / "images"
    (images / "bucket-a/photos").mkdir(parents=True)
    (images / "bucket-a/photos/a.jpg").write_bytes(jpeg())
    (tmp_path / "b.jpg").write_bytes(jpeg())
    lines = [{"source-ref": "s3://bucket-a/photos/a.jpg", "job": label((0, 1, 1, 5, 5)),
              "job-metadata": {"class-map": {"0": "cat"}, "type": "groundtruth/object-detection"}},
             {"source-ref": "b.jpg", "job": label((1, 1, 1, 5, 5))},
             {"source-ref": "missing.jpg", "job": label()}]
    manifest = tmp_path / "out.manifest"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    resolver = ImageResolver(tmp_path, images)
    data = read_manifest(manifest, resolver)
    assert len(data.samples) == 2 and data.class_names == {0: "cat"}
    assert len(data.issues) == 1 and data.issues[0].where == "out.manifest:3"


def test_video_manifest_is_refused(tmp_path: Path):
    from ssd_detector.errors import UserError

    manifest = tmp_path / "video.manifest"
    manifest.write_text(json.dumps({"source-ref": "s3://b/seq/frames.json", "track-ref": "s3://b/SeqLabel.json",
                                    "track-ref-metadata": {"type": "groundtruth/video-object-detection"}}))
    with pytest.raises(UserError, match="video-frame object detection"):
        read_manifest(manifest, ImageResolver(tmp_path, None))


def test_the_next_pass_is_read_ahead(tmp_path: Path, pipe_feed):
    """With read_ahead the next FIFO is opened (and its shuffle buffer filled) as soon as the
    current stream has ended; without it no FIFO is opened beyond the passes asked for."""
    records = []
    for i in range(6):
        records += [jpeg(), json.dumps(label((i % 2, 1, 1, 10, 10))).encode()]
    data = framed(*records)
    feeder = pipe_feed.PipeFeeder(tmp_path, "train", lambda: iter([data])).start()
    loader = _loader(tmp_path, shuffle_buffer=4)
    try:
        first = list(loader.batches(0, read_ahead=True))
        deadline = time.monotonic() + 10
        while feeder.completed < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert feeder.completed == 2, "train_1 was read while pass 0 was still in use"
        second = list(loader.batches(1))
        assert sorted(i for b in second for i in b.indices) == sorted(i for b in first for i in b.indices)
        assert loader.report.number == 1 and loader.report.images == 6
        time.sleep(0.5)
        assert feeder.completed == 2, "no read-ahead was asked for after pass 1"
    finally:
        loader.close()
        feeder.stop()
