"""Decoding and checking encoded images (JPEG, PNG)."""
from __future__ import annotations

import cv2
import numpy as np

JPEG_SOI = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Larger images are refused before decoding (a small file can decode to gigabytes).
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit


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


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    kind = image_kind(data)
    if kind == "png":
        if len(data) < 24:
            raise ImageError("PNG header is truncated")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return width, height
    if kind == "jpeg":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            seg_len = int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height = int.from_bytes(data[i + 5:i + 7], "big")
                width = int.from_bytes(data[i + 7:i + 9], "big")
                return width, height
            i += 2 + seg_len
        raise ImageError("JPEG has no frame header (SOF) giving its size")
    raise ImageError("not a JPEG or PNG image (unknown signature " + data[:8].hex() + ")")


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG -> (H, W, 3) uint8 RGB. Grey and RGBA images become RGB.

    Raises ImageError for anything that is not a complete, decodable JPEG or PNG.
    """
    if not data:
        raise ImageError("image file is empty")
    kind = image_kind(data)
    if kind is None:
        raise ImageError("not a JPEG or PNG image (unknown signature " + data[:8].hex() + ")")
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    if kind == "jpeg" and not _jpeg_complete(data):
        raise ImageError("JPEG is truncated (no end-of-image marker after the last scan)")
    if kind == "png" and not _png_complete(data):
        raise ImageError("PNG is truncated (no IEND chunk)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{kind.upper()} cannot be decoded")
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
