"""Decoding and checking encoded images (JPEG, PNG)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_SOI = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Larger images are refused before decoding (a small file can decode to gigabytes).
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit
# The content types that name an encoded image: a training channel's (with annotations) and a request's.
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "image/jpg")


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says why."""


def image_kind(data: bytes) -> str | None:
    if data.startswith(JPEG_SOI):
        return "jpeg"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    return None


def _jpeg_complete(data: bytes) -> bool:
    # A truncated JPEG still decodes (libjpeg fills the rest with grey), so check that an
    # end-of-image marker follows the last start-of-scan. Inside scan data 0xFF is stuffed,
    # so these markers cannot occur by chance; an EXIF thumbnail comes before the main scan.
    last_sos = data.rfind(b"\xff\xda")
    return last_sos > 0 and data.find(b"\xff\xd9", last_sos) > 0


def _png_complete(data: bytes) -> bool:
    return data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")


class HeaderIncomplete(ImageError):
    """The bytes end before the header that gives the size: more of the file is needed."""


# Frame headers (SOFn) that libjpeg decodes; the hierarchical ones (C5-C7, CD-CF) and JPG (C8) it
# refuses, and so do we.
_SOF_DECODED = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB))
_SOF_REFUSED = frozenset((0xC5, 0xC6, 0xC7, 0xC8, 0xCD, 0xCE, 0xCF))
# Markers without a length: restarts and TEM.
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}
# Markers with a length that libjpeg reads or skips before the first scan.
_SKIPPED = frozenset(range(0xE0, 0xF0)) | {0xFE, 0xC4, 0xDB, 0xDD, 0xCC, 0xDC}
SOS, SOI, EOI = 0xDA, 0xD8, 0xD9


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walks the markers as libjpeg does up to the first scan: bytes between markers are skipped,
    FF fill bytes are skipped, FF 00 is stuffed data (no segment), and only one frame header may
    appear. Anything libjpeg would refuse, or read differently, is refused here."""
    i, size = 2, None
    while True:
        while i < len(data) and data[i] != 0xFF:
            i += 1  # libjpeg skips "extraneous bytes" before a marker
        while i < len(data) and data[i] == 0xFF:
            i += 1  # fill bytes
        if i >= len(data):
            raise HeaderIncomplete("JPEG ends before its first scan")
        marker = data[i]
        i += 1
        if marker == 0x00 or marker in _STANDALONE:
            continue  # FF 00 outside a scan: libjpeg discards the pair
        if marker == SOI:
            raise ImageError("JPEG has a second start-of-image marker before its first scan")
        if marker == EOI:
            raise ImageError("JPEG ends (EOI) before any scan")
        if i + 2 > len(data):
            raise HeaderIncomplete("JPEG ends inside a marker segment")
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            raise ImageError(f"JPEG marker FF{marker:02X} has an impossible length {length}")
        if marker == SOS:
            if size is None:
                raise ImageError("JPEG has no frame header (SOF) before its first scan")
            return size
        if marker in _SOF_DECODED:
            if size is not None:
                raise ImageError("JPEG has more than one frame header (SOF); refusing an ambiguous size")
            if i + 7 > len(data):
                raise HeaderIncomplete("JPEG ends inside its frame header")
            height = int.from_bytes(data[i + 3:i + 5], "big")
            width = int.from_bytes(data[i + 5:i + 7], "big")
            size = (width, height)
        elif marker in _SOF_REFUSED:
            raise ImageError(f"JPEG uses an unsupported coding process (marker FF{marker:02X})")
        elif marker not in _SKIPPED:
            raise ImageError(f"JPEG has an unknown marker FF{marker:02X} before its first scan")
        i += length


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels, read the way the decoder
    reads it. HeaderIncomplete when data is a prefix that ends before the size is known."""
    kind = image_kind(data)
    if kind == "png":
        if len(data) < 24:
            raise HeaderIncomplete("PNG header is truncated")
        # libpng requires IHDR (13 bytes) as the first chunk.
        if data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13:
            raise ImageError("PNG does not start with its IHDR header chunk")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return width, height
    if kind == "jpeg":
        return _jpeg_size(data)
    raise ImageError("not a JPEG or PNG image (unknown signature " + data[:8].hex() + ")")


def image_size_of_file(path: Path, head_bytes: int = 1 << 16) -> tuple[int, int]:
    """image_size of a file, reading more than its first head_bytes only when the header needs it
    (large ICC or XMP segments can come before the frame header)."""
    with open(path, "rb") as handle:
        head = handle.read(head_bytes)
        try:
            return image_size(head)
        except HeaderIncomplete:
            if len(head) < head_bytes:
                raise
            return image_size(head + handle.read())


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG -> (H, W, 3) uint8 RGB. Grey and RGBA images become RGB.

    Raises ImageError for anything that is not a complete, decodable JPEG or PNG.
    """
    if not data:
        raise ImageError("image file is empty")
    kind = image_kind(data)
    if kind is None:
        raise ImageError("not a JPEG or PNG image (unknown signature " + data[:8].hex() + ")")
    try:
        width, height = image_size(data)
    except HeaderIncomplete as exc:
        raise ImageError(f"{exc} (truncated)") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    if kind == "jpeg" and not _jpeg_complete(data):
        raise ImageError("JPEG is truncated (no end-of-image marker after the last scan)")
    if kind == "png" and not _png_complete(data):
        raise ImageError("PNG is truncated (no IEND chunk)")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. over OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS, set in the image)
        raise ImageError(f"{kind.upper()} cannot be decoded: {str(exc).strip().splitlines()[-1]}") from None
    if bgr is None:
        raise ImageError(f"{kind.upper()} cannot be decoded")
    # EXIF orientation may swap the sides; anything else means the header lied.
    if bgr.shape[:2] not in ((height, width), (width, height)):
        raise ImageError(f"{kind.upper()} header says {width}x{height} but it decodes to "
                         f"{bgr.shape[1]}x{bgr.shape[0]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode(image_rgb: np.ndarray, kind: str = "jpeg", quality: int = 92) -> bytes:
    """(H, W, 3) uint8 RGB -> encoded bytes."""
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif kind == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"unknown image kind {kind!r}; use jpeg or png")
    if not ok:
        raise ImageError(f"cannot encode a {image_rgb.shape} image as {kind}")
    return buf.tobytes()
