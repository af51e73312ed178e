"""The image header parser reads sizes as the decoder (libjpeg, libpng) does, so the pixel limit
cannot be bypassed by a header that says one thing and decodes to another."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd_detector.data.images import ImageError, decode_rgb, encode, image_size, image_size_of_file


def jpeg(width: int, height: int) -> bytes:
    return encode(np.full((height, width, 3), 90, np.uint8), "jpeg")


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def fake_sof(width: int, height: int) -> bytes:
    return segment(0xC0, bytes([8]) + struct.pack(">HH", height, width) + bytes([1, 1, 0x11, 0]))


def test_stuffed_ff00_cannot_hide_the_real_frame_header():
    """SOI, FF 00 <len>, a real 2000x2000 stream, then a fake 16x16 frame header that a parser
    taking FF 00 for a segment would land on."""
    real = jpeg(2000, 2000)[2:]  # without its SOI
    length = len(real) + 2
    assert 0xFF not in struct.pack(">H", length)
    crafted = b"\xff\xd8\xff\x00" + struct.pack(">H", length) + real + fake_sof(16, 16)
    decoded = cv2.imdecode(np.frombuffer(crafted, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == (2000, 2000), "libjpeg reads the real stream"
    assert image_size(crafted) == (2000, 2000)
    with pytest.raises(ImageError, match="2000x2000 = 4000000 pixels, over the limit of 1000000"):
        decode_rgb(crafted, max_pixels=1_000_000)


def test_two_frame_headers_are_refused():
    data = jpeg(32, 24)
    crafted = data[:2] + fake_sof(16, 16) + data[2:]
    with pytest.raises(ImageError, match="more than one frame header"):
        image_size(crafted)


@pytest.mark.parametrize("insert,words", [
    (b"\xff\xd8", "second start-of-image"),
    (b"\xff\xd9", "ends \\(EOI\\) before any scan"),
    (b"\xff\x02\x00\x04ab", "unknown marker FF02"),
    (segment(0xC5, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00"), "unsupported coding process"),
])
def test_markers_libjpeg_refuses_are_refused(insert: bytes, words: str):
    data = jpeg(32, 24)
    with pytest.raises(ImageError, match=words):
        image_size(data[:2] + insert + data[2:])


def test_fill_bytes_restart_markers_and_extraneous_bytes_are_skipped_as_libjpeg_does():
    data = jpeg(40, 30)
    crafted = data[:2] + b"\xff\xff\xff" + b"\xff\xd0" + b"junk" + data[2:]
    assert image_size(crafted) == (40, 30)
    assert decode_rgb(crafted).shape == (30, 40, 3)


def test_large_metadata_before_the_frame_header(tmp_path: Path):
    """An ICC profile or XMP packet of 200 kB before SOF: the size is still found."""
    data = jpeg(48, 36)
    icc = b"".join(segment(0xE2, b"ICC_PROFILE\x00" + bytes(60_000)) for _ in range(4))
    big = data[:2] + icc + data[2:]
    path = tmp_path / "big.jpg"
    path.write_bytes(big)
    assert image_size_of_file(path) == (48, 36)
    assert decode_rgb(big).shape == (36, 48, 3)
    with pytest.raises(ImageError, match="truncated"):
        decode_rgb(big[:70_000])


def test_png_must_start_with_ihdr():
    data = encode(np.zeros((10, 20, 3), np.uint8), "png")
    assert image_size(data) == (20, 10)
    crafted = data[:12] + b"IHDX" + data[16:]
    with pytest.raises(ImageError, match="IHDR"):
        image_size(crafted)
