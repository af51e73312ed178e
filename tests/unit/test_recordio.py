"""RecordIO framing and detection records, checked against the format description and MXNet."""
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data import recordio
from ssd_detector.data.channel import read_recordio_channel, validate
from ssd_detector.data.images import encode
from ssd_detector.data.sample import ImageRef, Sample
from ssd_detector.data.writers import write_recordio


def tiny_jpeg(width: int = 32, height: int = 24, value: int = 128) -> bytes:
    image = np.full((height, width, 3), value, np.uint8)
    image[: height // 2, : width // 2] = (255, 0, 0)
    return encode(image, "jpeg")


def hand_record(label: list[float], image: bytes) -> bytes:
    """One record written byte by byte from the dmlc/MXNet description, not by any writer."""
    payload = struct.pack("<I", len(label))          # IRHeader.flag = number of label floats
    payload += struct.pack("<f", 0.0)               # IRHeader.label (unused when flag > 0)
    payload += struct.pack("<Q", 7) + struct.pack("<Q", 0)  # id, id2
    payload += b"".join(struct.pack("<f", v) for v in label)
    payload += image
    out = struct.pack("<I", 0xCED7230A) + struct.pack("<I", len(payload)) + payload  # cflag 0
    return out + b"\0" * ((4 - len(payload) % 4) % 4)


def test_hand_written_file_reads(tmp_path: Path):
    jpeg = tiny_jpeg()
    label_a = [2, 5, 1, 0.1, 0.2, 0.5, 0.6, 0, 0.5, 0.5, 0.9, 0.95]
    label_b = [2, 6, 0, 0.0, 0.0, 1.0, 1.0, 1]  # 6th column: difficult
    path = tmp_path / "hand.rec"
    path.write_bytes(hand_record(label_a, jpeg) + hand_record(label_b, jpeg + b"x"))
    data = read_recordio_channel(path)
    assert data.issues == []
    assert len(data.samples) == 2
    a, b = data.samples
    np.testing.assert_allclose(a.boxes, [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.95]], rtol=1e-6)
    assert a.class_ids.tolist() == [1, 0] and a.difficult.tolist() == [False, False]
    assert b.difficult.tolist() == [True]
    assert a.image.read() == jpeg and b.image.read() == jpeg + b"x"
    assert data.label_widths == [12, 8]


def test_split_record_round_trip():
    # A payload holding the magic at aligned offsets is split into parts (cflag 1, 2, 3).
    payload = b"abcd" + recordio.MAGIC_BYTES + b"efgh" + recordio.MAGIC_BYTES + b"xyz"
    stream = io.BytesIO()
    recordio.write_record(stream, payload)
    recordio.write_record(stream, b"next")
    raw = stream.getvalue()
    flags = []
    pos = 0
    while pos < len(raw):
        magic, lrec = struct.unpack_from("<II", raw, pos)
        assert magic == recordio.MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & recordio.MAX_LENGTH) + 3) & ~3)
    assert flags == [1, 2, 3, 0]
    records = list(recordio.iter_records(io.BytesIO(raw)))
    assert [r.payload for r in records] == [payload, b"next"]


def test_our_writer_reads_in_mxnet_and_mxnet_writer_reads_here(tmp_path: Path):
    import mxnet as mx
    jpeg = tiny_jpeg()
    ours = tmp_path / "ours.rec"
    sample = Sample(ImageRef(""), np.array([[0.1, 0.2, 0.3, 0.4]], np.float32), np.array([2], np.int32),
                    np.zeros(1, bool), "x")
    write_recordio(ours, [(sample, jpeg)])
    reader = mx.recordio.MXRecordIO(str(ours), "r")
    header, image = mx.recordio.unpack(reader.read())
    np.testing.assert_allclose(header.label, [2, 5, 2, 0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    assert image == jpeg
    reader.close()

    theirs = tmp_path / "theirs.rec"
    writer = mx.recordio.MXRecordIO(str(theirs), "w")
    label = np.array([2, 5, 1, 0.25, 0.25, 0.75, 0.75], np.float32)
    writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, label, 0, 0), jpeg))
    writer.close()
    data = read_recordio_channel(theirs)
    assert data.issues == []
    np.testing.assert_allclose(data.samples[0].boxes, [[0.25, 0.25, 0.75, 0.75]])


def test_image_det_record_iter_reads_converted_file(synth_set: Path):
    import mxnet as mx
    rec = synth_set / "recordio" / "validation" / "validation.rec"
    ours = read_recordio_channel(rec)
    it = mx.io.ImageDetRecordIter(path_imgrec=str(rec), data_shape=(3, 120, 160), batch_size=2,
                                  label_pad_width=64, shuffle=False)
    batch = next(iter(it))
    labels = batch.label[0].asnumpy()  # (2, 4 + 64): [3, H, W, raw length, raw label..., -1 padding]
    for row, sample in zip(labels, ours.samples[:2]):
        raw_len = int(row[3])
        raw = row[4:4 + raw_len]
        assert raw[0] == 2 and raw[1] == 5
        objects = raw[2:].reshape(-1, 5)  # (N, 5): cls, x0, y0, x1, y1
        np.testing.assert_allclose(objects[:, 0], sample.class_ids)
        np.testing.assert_allclose(objects[:, 1:], sample.boxes, atol=1e-6)
    assert batch.data[0].shape == (2, 3, 120, 160)


def test_truncated_file_names_record_and_offset(tmp_path: Path):
    jpeg = tiny_jpeg()
    whole = hand_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], jpeg)
    path = tmp_path / "cut.rec"
    path.write_bytes(whole + whole[: len(whole) // 2])
    data = read_recordio_channel(path)
    assert len(data.samples) == 1
    assert len(data.issues) == 1
    assert "record 1 at byte %d is truncated" % len(whole) in data.issues[0].what


def test_wrong_magic(tmp_path: Path):
    path = tmp_path / "bad.rec"
    path.write_bytes(b"\x00" * 64)
    data = read_recordio_channel(path)
    assert "does not start with the RecordIO magic number" in data.issues[0].what
    assert "record 0 at byte 0" in data.issues[0].what


@pytest.mark.parametrize("label,message", [
    ([2, 5, 0, 0.1, 0.1, 0.5], "not a multiple of the object width 5"),
    ([2, 4, 0, 0.1, 0.1, 0.5], "object width 4 must be a whole number >= 5"),
    ([1, 5, 0, 0.1, 0.1, 0.5, 0.5], "header width 1"),
    ([2, 5, 0, 10, 20, 200, 150], "looks like pixels"),
    ([2, 5, 0, 0.5, 0.5, 0.5, 0.9], "zero area"),
    ([2, 5, 0, -0.2, 0.1, 0.5, 0.9], "outside the image"),
    ([2, 5, 1.5, 0.1, 0.1, 0.5, 0.9], "class id 1.5 is not a whole number"),
    # Not finite: NaN passes every comparison, so each needs its own check.
    ([2, 5, 0, float("nan"), 0.1, 0.5, 0.9], "not a finite number"),
    ([2, 5, 0, 0.1, 0.1, float("inf"), 0.9], "not a finite number"),
    ([float("nan"), 5, 0, 0.1, 0.1, 0.5, 0.9], "must be finite numbers"),
    ([2, float("inf"), 0, 0.1, 0.1, 0.5, 0.9], "must be finite numbers"),
    ([2, 5, float("nan"), 0.1, 0.1, 0.5, 0.9], "class id is not a finite number"),
    ([2, 5, 4294967296, 0.1, 0.1, 0.5, 0.9], "beyond the largest supported class id 9999"),
])
def test_bad_labels(tmp_path: Path, label, message):
    path = tmp_path / "x.rec"
    path.write_bytes(hand_record(label, tiny_jpeg()))
    data = read_recordio_channel(path)
    assert any(message in issue.what for issue in data.issues), data.issues
    assert data.issues[0].where == "x.rec#0"


def test_scalar_label_asks_for_pack_label(tmp_path: Path):
    path = tmp_path / "x.rec"
    with open(path, "wb") as handle:
        recordio.write_record(handle, recordio.pack_image_record(3.0, tiny_jpeg()))
    data = read_recordio_channel(path)
    assert "--pack-label" in data.issues[0].what


def test_padding_rows_are_dropped_and_extra_header_kept(tmp_path: Path):
    path = tmp_path / "x.rec"
    label = [4, 5, 32, 24, 1, 0.1, 0.1, 0.5, 0.5, -1, -1, -1, -1, -1]
    path.write_bytes(hand_record(label, tiny_jpeg()))
    data = read_recordio_channel(path)
    assert data.issues == []
    assert data.samples[0].class_ids.tolist() == [1]


def test_undecodable_image_in_record(tmp_path: Path):
    path = tmp_path / "x.rec"
    jpeg = tiny_jpeg()
    path.write_bytes(hand_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], b"not an image")
                     + hand_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], jpeg[: len(jpeg) - 40]))
    data = read_recordio_channel(path)
    issues = validate(data, num_classes=1)
    assert [i.where for i in issues] == ["x.rec#0", "x.rec#1"]
    assert "not a JPEG or PNG" in issues[0].what
    assert "truncated" in issues[1].what


def test_channel_of_several_rec_files_without_idx(tmp_path: Path):
    jpeg = tiny_jpeg()
    (tmp_path / "part-a.rec").write_bytes(hand_record([2, 5, 0, 0.1, 0.1, 0.5, 0.5], jpeg))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "part-b.rec").write_bytes(hand_record([2, 5, 1, 0.2, 0.2, 0.6, 0.6], jpeg) * 2)
    data = read_recordio_channel(tmp_path)
    assert data.issues == []
    assert [s.where for s in data.samples] == ["part-a.rec#0", "part-b.rec#0", "part-b.rec#1"]
