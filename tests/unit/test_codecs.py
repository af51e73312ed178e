"""Serving codecs without a server: Accept negotiation, custom attributes, image decoding, encoders."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.serving import codecs
from ssd_detector.serving.errors import BadRequest, NotAcceptable, UnsupportedMediaType


@pytest.mark.parametrize("accept,chosen", [
    (None, "application/json"), ("", "application/json"), ("*/*", "application/json"),
    ("application/json", "application/json"), ("Application/JSON; annotation=1", "application/json;annotation=1"),
    ("image/*", "image/png"), ("image/jpeg", "image/jpeg"),
    ("text/html, image/png;q=0.9, application/json;q=0.5", "image/png"),
    ("application/json;q=0, image/jpeg", "image/jpeg"),
    # Parameters other than annotation do not change the type (the SDK sends charset=utf-8).
    ("application/json; charset=utf-8", "application/json"),
    ("application/json; charset=utf-8; annotation=1", "application/json;annotation=1"),
    ("image/png;q=0.2, application/json; charset=UTF-8; q=0.8", "application/json"),
    ("application/jsonlines", "application/jsonlines"),
    ("application/jsonlines;q=1, application/json;q=0.9", "application/jsonlines"),
])
def test_negotiate(accept, chosen):
    assert codecs.negotiate(accept, "application/json")[0] == chosen


def test_negotiate_uses_the_configured_default_for_star():
    assert codecs.negotiate("*/*", "application/json;annotation=1")[0] == "application/json;annotation=1"


@pytest.mark.parametrize("accept", ["text/csv", "application/json;q=0", "image/gif", "application/json;q=x",
                                    "application/json;q=2"])
def test_negotiate_refuses(accept):
    with pytest.raises(NotAcceptable, match="Accept"):
        codecs.negotiate(accept, "application/json")


def test_parse_controls():
    assert codecs.parse_controls(None) == codecs.Controls()
    assert codecs.parse_controls("threshold=0.3;max_detections=50") == codecs.Controls(0.3, 50)
    assert codecs.parse_controls(" trace=1 ; threshold = 1 ") == codecs.Controls(1.0, None)
    for bad in ("threshold=-0.1", "threshold=nan", "max_detections=2.5", "max_detections=-3"):
        with pytest.raises(BadRequest, match=bad.split("=")[1]):
            codecs.parse_controls(bad)


def test_jsonlines_is_one_line_holding_the_json_answer():
    result = codecs.Result(np.zeros((4, 4, 3), np.uint8), np.array([[1, 0.5, 0.1, 0.2, 0.3, 0.4]]), {})
    _, content_type, encoder = codecs.negotiate("application/jsonlines", "application/json")
    body = encoder(result)
    assert content_type == "application/jsonlines" and body.endswith(b"\n") and body.count(b"\n") == 1
    assert json.loads(body) == json.loads(codecs.encode_json(result)) == {"prediction": [[1, 0.5, 0.1, 0.2, 0.3, 0.4]]}


def test_octet_stream_is_sniffed():
    image = np.zeros((8, 8, 3), np.uint8)
    for body in (encode(image, "jpeg"), encode(image, "png")):
        assert codecs.decode_image("application/octet-stream", body, 10_000).shape == (8, 8, 3)
        assert codecs.decode_image("image/jpg", body, 10_000).shape == (8, 8, 3)
    with pytest.raises(UnsupportedMediaType, match="neither a JPEG nor a PNG"):
        codecs.decode_image("application/octet-stream", b"GIF89a....", 10_000)
