"""Property-based tests of every parser a user's input reaches: the image header parser against
OpenCV's decoder, the RecordIO reader, the label parser, the JSON annotation reader, the
hyperparameter parser and the HTTP app. Each may only answer with a listed problem (or a 4xx),
never crash, hang or 500. A fixed budget, derandomized (the same examples every run)."""
from __future__ import annotations

import functools
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssd_detector.config import parse_hyperparameters, SCHEMA
from ssd_detector.data.channel import read_json_channel, read_recordio_channel
from ssd_detector.data.images import ImageError, decode_rgb, encode, image_size
from ssd_detector.data.labels import LabelError, check_boxes, unpack_detection_label
from ssd_detector.data.writers import write_recordio
from ssd_detector.data.sample import ImageRef, Sample
from ssd_detector.errors import HyperparameterError

# SSD_FUZZ_EXAMPLES raises the budget for a longer hunt (SSD_FUZZ_RANDOM=1: new examples each run).
EXAMPLES = int(os.environ.get("SSD_FUZZ_EXAMPLES", "200"))
DERANDOMIZE = os.environ.get("SSD_FUZZ_RANDOM", "") != "1"
BUDGET = settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Small constant images (encoding them is cheap; the module has no other import-time work).
SMALL_JPEG = encode(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8), "jpeg")
SMALL_PNG = encode(np.random.default_rng(2).integers(0, 255, (20, 12, 3), dtype=np.uint8), "png")
MARKERS = [bytes([0xFF, m]) for m in (0x00, 0x01, 0xC0, 0xC2, 0xC4, 0xC5, 0xC8, 0xCC, 0xD0, 0xD8, 0xD9, 0xDA,
                                      0xDB, 0xDD, 0xE0, 0xE1, 0xEF, 0xF0, 0xFE, 0xFF, 0x02)]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid JPEG or PNG with markers, lengths, bytes and cuts changed at random places."""
    data = bytearray(draw(st.sampled_from([SMALL_JPEG, SMALL_PNG])))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["marker", "segment", "byte", "cut", "length", "sof"]))
        if action == "marker":
            data[where:where] = draw(st.sampled_from(MARKERS))
        elif action == "segment":
            payload = draw(st.binary(max_size=40))
            data[where:where] = draw(st.sampled_from(MARKERS)) + struct.pack(">H", len(payload) + 2) + payload
        elif action == "byte" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        elif action == "length" and where + 2 <= len(data):
            data[where:where + 2] = struct.pack(">H", draw(st.integers(0, 0xFFFF)))
        elif action == "sof":
            h, w = draw(st.integers(0, 70000)), draw(st.integers(0, 70000))
            data[where:where] = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", h & 0xFFFF, w & 0xFFFF) + \
                b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return bytes(data)


@BUDGET
@given(mutated_images())
def test_an_accepted_header_is_what_the_decoder_reads(data: bytes):
    try:
        width, height = image_size(data)
    except ImageError:
        return
    if width * height > 4_000_000 or width == 0 or height == 0:
        return  # refused before decoding anyway; not worth decoding in a test
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if raw is not None:
        assert raw.shape[:2] == (height, width), f"header {width}x{height}, decoded {raw.shape[1]}x{raw.shape[0]}"


@BUDGET
@given(mutated_images())
def test_decode_rgb_answers_an_image_or_a_reason(data: bytes):
    try:
        image = decode_rgb(data, max_pixels=4_000_000)
    except ImageError as exc:
        assert str(exc)
        return
    width, height = image_size(data)
    assert image.shape[:2] in ((height, width), (width, height)) and image.shape[2] == 3


@functools.cache
def rec_file() -> bytes:
    """Three records of a valid .rec file, as the writer makes them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.rec"
        samples = [Sample(ImageRef("", data=SMALL_JPEG), np.array([[0.1, 0.1, 0.6, 0.7]], np.float32),
                          np.array([i % 2], np.int32), np.zeros(1, bool), f"s{i}") for i in range(3)]
        write_recordio(path, [(s, SMALL_JPEG) for s in samples])
        return path.read_bytes()


REC_SIZE = 3 * (len(SMALL_JPEG) + 64)  # about; edits past the end append


@BUDGET
@given(st.lists(st.tuples(st.integers(0, REC_SIZE), st.binary(min_size=1, max_size=12)), min_size=1, max_size=4),
       st.integers(0, REC_SIZE))
def test_recordio_reader_lists_problems_never_crashes(edits, cut):
    data = bytearray(rec_file())
    for where, replacement in edits:
        data[where:where + len(replacement)] = replacement
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.rec"
        path.write_bytes(bytes(data[:max(cut, 1)]))
        channel = read_recordio_channel(path)
    for issue in channel.issues:
        assert issue.where and issue.what


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@BUDGET
@given(st.lists(floats, max_size=40) | st.lists(st.integers(-3, 12).map(float), max_size=40))
def test_label_parser_raises_only_label_errors(values):
    try:
        boxes, class_ids, difficult, width = unpack_detection_label(np.array(values, np.float32))
    except LabelError as exc:
        assert str(exc)
        return
    assert boxes.shape == (len(class_ids), 4) and len(difficult) == len(class_ids)
    check_boxes(boxes)  # lists problems, whatever the numbers


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
ANNOTATION_KEYS = ["class_id", "left", "top", "width", "height"]


@st.composite
def annotation_docs(draw) -> str:
    objects = draw(st.lists(st.fixed_dictionaries({k: json_values | st.integers(-5, 50) for k in ANNOTATION_KEYS}),
                            max_size=3) | json_values)
    doc = {"file": draw(st.sampled_from(["a.jpg", "../a.jpg", "/a.jpg", "b.jpg"]) | json_values),
           "annotations": objects}
    if draw(st.booleans()):
        doc["image_size"] = draw(json_values | st.just([{"width": 32, "height": 24, "depth": 3}]))
    if draw(st.booleans()):
        doc["categories"] = draw(st.lists(st.fixed_dictionaries({"class_id": json_values, "name": json_values}),
                                          max_size=2) | json_values)
    text = json.dumps(doc, allow_nan=True)
    return draw(st.sampled_from([text, text[: len(text) // 2], text.replace("1", "1e999")]))


@BUDGET
@given(annotation_docs())
def test_json_annotation_reader_lists_problems_never_crashes(text: str):
    with tempfile.TemporaryDirectory() as tmp:
        images, annotations = Path(tmp) / "train", Path(tmp) / "train_annotation"
        images.mkdir()
        annotations.mkdir()
        (images / "a.jpg").write_bytes(SMALL_JPEG)
        (annotations / "a.json").write_text(text)
        channel = read_json_channel(images, annotations)
    for issue in channel.issues:
        assert issue.where and issue.what
    for sample in channel.samples:
        assert np.all(np.isfinite(sample.boxes)) and np.all(sample.class_ids >= 0)


@st.composite
def manifest_streams(draw) -> bytes:
    """An augmented manifest's RecordIO stream: images, labels (valid or not), other bytes, in any
    order, sometimes cut short."""
    import io

    from ssd_detector.data.recordio import write_record

    out = io.BytesIO()
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["image", "label", "json", "bytes"]))
        if kind == "image":
            payload = draw(st.sampled_from([SMALL_JPEG, SMALL_PNG]) | mutated_images())
        elif kind == "label":
            objects = draw(st.lists(st.fixed_dictionaries({k: json_values | st.integers(-5, 50)
                                                           for k in ANNOTATION_KEYS}), max_size=3) | json_values)
            label = {"image_size": draw(json_values | st.just([{"width": 32, "height": 24}])), "annotations": objects}
            payload = json.dumps(draw(st.sampled_from([label, {"job": label}])), allow_nan=True).encode()
        elif kind == "json":
            payload = json.dumps(draw(json_values), allow_nan=True).encode()
        else:
            payload = draw(st.binary(max_size=30))
        write_record(out, payload)
    data = out.getvalue()
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@BUDGET
@given(manifest_streams())
def test_manifest_stream_parser_lists_problems_never_crashes(data: bytes):
    import io

    from ssd_detector.data.recordio import RecordIOFormatError
    from ssd_detector.data.stream_records import StreamFormatError, parse_manifest

    try:
        parsed = list(parse_manifest(io.BytesIO(data), "train_0"))
    except (StreamFormatError, RecordIOFormatError):
        return
    for item in parsed:
        assert item.sample is not None or item.problems
        if item.sample is not None:
            assert np.all(np.isfinite(item.sample.boxes)) and np.all(item.sample.class_ids >= 0)


hyper_values = (st.text(max_size=12) | st.integers(-10 ** 20, 10 ** 20) | st.floats() | st.booleans()
                | st.lists(st.integers(-3, 40), max_size=4) | st.none())


@BUDGET
@given(st.dictionaries(st.sampled_from([p.name for p in SCHEMA] + ["other"]), hyper_values, max_size=8))
def test_hyperparameter_parser_names_problems_never_crashes(raw):
    raw = {"num_classes": "3", **raw}
    try:
        hp = parse_hyperparameters(raw)
    except HyperparameterError as exc:
        assert str(exc).startswith("invalid hyperparameters:")
        return
    assert 1 <= hp.num_classes <= 10_000 and 1 <= hp.epochs <= 10_000
    assert math.isfinite(hp.learning_rate)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from ssd_detector.inference import Predictor
    from ssd_detector.model.untrained import export_untrained
    from ssd_detector.serving.app import create_app
    from ssd_detector.serving.settings import ServeSettings

    model = export_untrained(tmp_path_factory.mktemp("fuzz") / "model",
                             {"num_classes": "2", "base_network": "mobilenet-0.25", "image_shape": "64"})
    settings = ServeSettings.from_env(model, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}, cpu_count=1, workers=1)
    return create_app(Predictor(model), settings).test_client()


media = st.sampled_from(["image/jpeg", "image/png", "image/jpg", "application/x-image", "application/octet-stream",
                         "text/csv", "", "image/jpeg; charset=x", "IMAGE/PNG", "application/json"])
accepts = (st.sampled_from(["", "*/*", "application/json", "application/json;annotation=1", "image/png",
                            "image/jpeg", "application/jsonlines", "text/html", "application/json; charset=utf-8",
                            "image/*;q=0.5, application/json;q=0.9", "application/json;q=abc", "image/png;q=2",
                            ";;,", "*/*;q=0"])
           | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30))


@settings(max_examples=EXAMPLES * 3 // 4, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated_images(), st.binary(max_size=200)), media, accepts,
       st.sampled_from(["", "threshold=0.5", "max_detections=2", "threshold=x", "max_detections=-1;threshold=2",
                        "a=b;;c"]))
def test_http_app_answers_client_input_with_2xx_or_4xx(client, body: bytes, content_type: str, accept: str,
                                                       attributes: str):
    headers = {"Accept": accept, "X-Amzn-SageMaker-Custom-Attributes": attributes}
    response = client.post("/invocations", data=body, content_type=content_type or None, headers=headers)
    assert response.status_code < 500, response.get_data()[:300]
    if response.status_code >= 400:
        parsed = response.get_json()
        assert set(parsed) == {"error", "message"} and "Traceback" not in parsed["message"]
