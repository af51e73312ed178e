"""dmlc RecordIO, as written by MXNet's ``im2rec``, read and written without MXNet.

Framing (dmlc-core ``recordio.h``): each record is ``uint32 magic 0xced7230a``, ``uint32 lrec``
(``cflag << 29 | length``), the payload, and zero padding to a 4-byte boundary. A payload that
contains the magic at a 4-byte aligned offset is split there into parts (cflag 1 first, 2 middle,
3 last) and the reader puts the magic back. An image record's payload is an ``IRHeader``
(``struct 'IfQQ'``: flag, label, id, id2); ``flag`` > 0 means ``flag`` float32 label values
follow, then the encoded image.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
MAX_LENGTH = (1 << 29) - 1


class RecordIOFormatError(Exception):
    """The byte stream is not valid RecordIO; the message says where and why."""


@dataclass(frozen=True)
class Record:
    index: int  # position in the file, from 0
    offset: int  # byte offset of the record's first header
    payload_offset: int  # byte offset of the payload when it is one piece, else -1
    payload: bytes


def _encode_lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


def write_record(stream: BinaryIO, payload: bytes) -> None:
    """Appends one record, splitting it where the magic stands at an aligned offset (as dmlc does)."""
    length = len(payload)
    if length > MAX_LENGTH:
        raise ValueError(f"record of {length} bytes is longer than RecordIO's limit of {MAX_LENGTH}")
    start = 0
    for i in range(0, (length >> 2) << 2, 4):
        if payload[i:i + 4] == MAGIC_BYTES:
            stream.write(MAGIC_BYTES + _encode_lrec(1 if start == 0 else 2, i - start))
            stream.write(payload[start:i])
            start = i + 4
    stream.write(MAGIC_BYTES + _encode_lrec(3 if start else 0, length - start))
    stream.write(payload[start:])
    pad = (-length) % 4
    if pad:
        stream.write(b"\0" * pad)


def iter_records(stream: BinaryIO, name: str = "<stream>") -> Iterator[Record]:
    """Yields every record; raises RecordIOFormatError naming the record index and byte offset."""
    index = 0
    offset = 0
    while True:
        head = stream.read(8)
        if not head:
            return
        record_offset = offset
        parts: list[bytes] = []
        payload_offset = offset + 8
        while True:
            if len(head) < 8:
                raise RecordIOFormatError(
                    f"{name}: record {index} at byte {offset} is truncated (header has {len(head)} of 8 bytes)")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOFormatError(
                    f"{name}: record {index} at byte {offset} does not start with the RecordIO magic number "
                    f"0xced7230a (found 0x{magic:08x}); is this a RecordIO file written with im2rec?")
            cflag, length = lrec >> 29, lrec & MAX_LENGTH
            padded = (length + 3) & ~3
            body = stream.read(padded)
            if len(body) < length:
                raise RecordIOFormatError(
                    f"{name}: record {index} at byte {offset} is truncated "
                    f"({len(body)} of {length} payload bytes present)")
            offset += 8 + len(body)
            parts.append(body[:length])
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise RecordIOFormatError(f"{name}: record {index} at byte {offset} has an unknown part flag {cflag}")
            parts.append(MAGIC_BYTES)
            payload_offset = -1
            head = stream.read(8)
        yield Record(index=index, offset=record_offset, payload_offset=payload_offset, payload=b"".join(parts))
        index += 1


def pack_image_record(label: np.ndarray | float, image: bytes, record_id: int = 0) -> bytes:
    """The payload of an image record: IRHeader, the float32 label values, the encoded image."""
    if isinstance(label, (int, float)):
        return struct.pack(IR_FORMAT, 0, float(label), record_id, 0) + image
    values = np.asarray(label, dtype="<f4").reshape(-1)  # any shape -> (L,)
    return struct.pack(IR_FORMAT, values.size, 0.0, record_id, 0) + values.tobytes() + image


@dataclass(frozen=True)
class ImageRecord:
    label: np.ndarray  # (flag,) float32, or (1,) holding the scalar label when flag == 0
    packed: bool  # False when the record carries one scalar label (no --pack-label)
    record_id: int
    image_start: int  # where the image bytes begin within the payload


def unpack_image_record(payload: bytes) -> ImageRecord:
    if len(payload) < IR_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than the {IR_SIZE}-byte image record header")
    flag, scalar, record_id, _ = struct.unpack_from(IR_FORMAT, payload)
    if flag == 0:
        return ImageRecord(np.array([scalar], np.float32), False, record_id, IR_SIZE)
    end = IR_SIZE + 4 * flag
    if end > len(payload):
        raise ValueError(f"header announces {flag} label values but the record holds only "
                         f"{(len(payload) - IR_SIZE) // 4}")
    label = np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return ImageRecord(label, True, record_id, end)


class RecordWriter:
    """Writes image records to ``path`` and the ``.idx`` sidecar (``key\\toffset`` lines)."""

    def __init__(self, path: Path | str, write_index: bool = True) -> None:
        self.path = Path(path)
        self._rec = open(self.path, "wb")
        self._idx = open(self.path.with_suffix(".idx"), "w", encoding="ascii") if write_index else None
        self._count = 0

    def write(self, label: np.ndarray | float, image: bytes) -> None:
        if self._idx is not None:
            self._idx.write(f"{self._count}\t{self._rec.tell()}\n")
        write_record(self._rec, pack_image_record(label, image, self._count))
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
