"""Request bodies in, response bodies out: content types, Accept negotiation and the
X-Amzn-SageMaker-Custom-Attributes controls. A registry maps each media type to its codec."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data.images import IMAGE_CONTENT_TYPES, ImageError, decode_rgb, encode, image_kind
from ..drawing import draw
from .errors import BadRequest, NotAcceptable, UnsupportedMediaType
from .settings import ACCEPT_TYPES

# Clients that send bytes without saying what they are (the SDK's default Predictor sends
# application/octet-stream): the body is taken when it is a JPEG or PNG, refused with 415 otherwise.
SNIFFED_CONTENT_TYPES = ("application/octet-stream",)
# The only Accept parameter that selects an encoder; others (charset=utf-8, ...) are ignored.
SELECTING_PARAMETERS = ("annotation",)
# Drawn images show only confident boxes unless the request sets a threshold.
DRAW_THRESHOLD = 0.5


@dataclass(frozen=True)
class Controls:
    """Per-request options from X-Amzn-SageMaker-Custom-Attributes."""
    threshold: float | None = None
    max_detections: int | None = None


@dataclass(frozen=True)
class Result:
    image: np.ndarray  # (H, W, 3) uint8 RGB, as sent
    rows: np.ndarray  # (K, 6) [class_id, score, xmin, ymin, xmax, ymax] normalized, by score
    class_names: dict[int, str]


Encoder = Callable[[Result], bytes]


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'."""
    return (header or "").split(";")[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """-> the media type, or UnsupportedMediaType naming what was sent."""
    kind = media_type(content_type)
    if kind not in IMAGE_CONTENT_TYPES + SNIFFED_CONTENT_TYPES:
        shown = content_type if content_type else "(none)"
        raise UnsupportedMediaType(f"Content-Type {shown!r} is not supported; send the image bytes as "
                                   + ", ".join(IMAGE_CONTENT_TYPES + SNIFFED_CONTENT_TYPES))
    return kind


def decode_image(content_type: str | None, body: bytes, max_pixels: int) -> np.ndarray:
    kind = check_content_type(content_type)
    if kind in SNIFFED_CONTENT_TYPES and image_kind(body) is None:
        raise UnsupportedMediaType(f"the {kind} body ({len(body)} bytes, starting {body[:8].hex() or 'empty'}) "
                                   "is neither a JPEG nor a PNG image")
    try:
        return decode_rgb(body, max_pixels)
    except ImageError as exc:
        raise BadRequest(f"the {kind} body ({len(body)} bytes) is not a usable image: {exc}") from None


def _rows(result: Result) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in result.rows]


def encode_json(result: Result) -> bytes:
    return json.dumps({"prediction": _rows(result)}).encode()


def encode_jsonlines(result: Result) -> bytes:
    """One JSON line per image, for batch transform's `AssembleWith: Line` output."""
    return encode_json(result) + b"\n"


def encode_annotation(result: Result) -> bytes:
    """Ground Truth style: pixel left/top/width/height on the image as sent."""
    h, w = result.image.shape[:2]
    annotations = []
    for cls, score, x0, y0, x1, y1 in result.rows:
        left, top = int(round(x0 * w)), int(round(y0 * h))
        annotations.append({"class_id": int(cls), "score": round(float(score), 6), "left": left, "top": top,
                            "width": int(round(x1 * w)) - left, "height": int(round(y1 * h)) - top})
    return json.dumps({"image_size": [{"width": w, "height": h, "depth": 3}], "annotations": annotations}).encode()


JPEG_MAX_SIDE = 65_535  # JPEG stores each side in 16 bits


def check_drawable(chosen: str, image: np.ndarray) -> None:
    """A drawn JPEG answer must fit JPEG's size limit; the client learns so before any work."""
    h, w = image.shape[:2]
    if chosen == "image/jpeg" and max(h, w) > JPEG_MAX_SIDE:
        raise NotAcceptable(f"a {w}x{h} image cannot be drawn as image/jpeg (at most {JPEG_MAX_SIDE} pixels a "
                            "side); ask for image/png or application/json")


def _drawn(kind: str) -> Encoder:
    def encoder(result: Result) -> bytes:
        return encode(draw(result.image, result.rows, result.class_names), kind)
    return encoder


# media type (with the parameter that selects it) -> (response Content-Type, encoder)
ENCODERS: dict[str, tuple[str, Encoder]] = dict(zip(ACCEPT_TYPES, (
    ("application/json", encode_json),
    ("application/json", encode_annotation),
    ("image/png", _drawn("png")),
    ("image/jpeg", _drawn("jpeg")),
    ("application/jsonlines", encode_jsonlines),
)))
WILDCARDS = {"*/*": "application/json", "application/*": "application/json", "image/*": "image/png"}


def _parse_range(item: str) -> tuple[str, float]:
    first, *rest = item.split(";")
    if not first.strip():
        raise NotAcceptable(f"Accept has a media range without a type: {item.strip()!r}")
    kind, quality, params = first.strip().lower(), 1.0, []
    for param in (p.strip() for p in rest if p.strip()):
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"')
        if key == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = float("nan")
            if not 0.0 <= quality <= 1.0:
                raise NotAcceptable(f"Accept has a bad quality value {value!r} in {item.strip()!r}")
        elif key in SELECTING_PARAMETERS:
            params.append(f"{key}={value}")
    return ";".join([kind] + params), quality


def negotiate(accept: str | None, default: str) -> tuple[str, str, Encoder]:
    """-> (chosen media type, response Content-Type, encoder). No Accept, or */*, gives default."""
    if not accept or not accept.strip():
        accept = default
    ranges = [_parse_range(item) for item in accept.split(",") if item.strip()]
    # Highest quality first; ties keep the client's order (sorted is stable).
    for kind, quality in sorted(ranges, key=lambda r: -r[1]):
        if quality <= 0:
            continue
        chosen = default if kind == "*/*" else WILDCARDS.get(kind, kind)
        if chosen in ENCODERS:
            content_type, encoder = ENCODERS[chosen]
            return chosen, content_type, encoder
    raise NotAcceptable(f"Accept {accept!r} asks for nothing this server returns; use one of "
                        + ", ".join(ENCODERS))


def parse_controls(header: str | None) -> Controls:
    """'threshold=0.3;max_detections=50' -> Controls. Unknown keys are ignored (SageMaker
    clients may send attributes meant for others); known keys with bad values are a 400."""
    if not header:
        return Controls()
    threshold, max_detections = None, None
    for item in header.split(";"):
        key, _, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "threshold":
            try:
                threshold = float(value)
            except ValueError:
                threshold = float("nan")
            if not 0.0 <= threshold <= 1.0:
                raise BadRequest(f"custom attribute threshold={value!r} must be a number from 0 to 1")
        elif key == "max_detections":
            try:
                max_detections = int(value)
            except ValueError:
                max_detections = -1
            if max_detections < 1:
                raise BadRequest(f"custom attribute max_detections={value!r} must be an integer >= 1")
    return Controls(threshold, max_detections)
