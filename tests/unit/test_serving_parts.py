"""Serving pieces without a server: Accept negotiation, custom attributes, settings, the 500 path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.errors import UserError
from ssd_detector.serving import codecs
from ssd_detector.serving.app import create_app
from ssd_detector.serving.errors import BadRequest, NotAcceptable
from ssd_detector.serving.settings import ServeSettings


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


def test_settings_from_env(tmp_path: Path):
    s = ServeSettings.from_env(tmp_path, {}, cpu_count=4)
    assert (s.port, s.workers, s.timeout, s.max_payload_mb, s.threads_per_worker, s.gpus) == (8080, 4, 60, 6, 1, 0)
    s = ServeSettings.from_env(tmp_path, {"SAGEMAKER_BIND_TO_PORT": "9000", "MODEL_SERVER_WORKERS": "2",
                                          "MODEL_SERVER_TIMEOUT": "120", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"},
                               cpu_count=8)
    assert (s.port, s.workers, s.timeout, s.max_payload_mb, s.threads_per_worker) == (9000, 2, 120, 20, 4)
    s = ServeSettings.from_env(tmp_path, {"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "MODEL_SERVER_WORKERS": "5"},
                               cpu_count=8)
    assert s.workers == 3, "the SageMaker name wins"
    s = ServeSettings.from_env(tmp_path, {"SSD_NUM_GPUS": "4"}, cpu_count=8)
    assert (s.workers, s.gpus) == (4, 4), "one worker per GPU"
    s = ServeSettings.from_env(tmp_path, {"MODEL_SERVER_WORKERS": "9"}, cpu_count=8, workers=1, port=1234)
    assert (s.workers, s.port) == (1, 1234), "command-line options win"
    for env, words in (({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "0"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT=0"),
                       ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "SAGEMAKER_BIND_TO_PORT=70000"),
                       ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}, "text/csv")):
        with pytest.raises(UserError, match=words):
            ServeSettings.from_env(tmp_path, env, cpu_count=2)


def test_jsonlines_is_one_line_holding_the_json_answer():
    result = codecs.Result(np.zeros((4, 4, 3), np.uint8), np.array([[1, 0.5, 0.1, 0.2, 0.3, 0.4]]), {})
    _, content_type, encoder = codecs.negotiate("application/jsonlines", "application/json")
    body = encoder(result)
    assert content_type == "application/jsonlines" and body.endswith(b"\n") and body.count(b"\n") == 1
    assert json.loads(body) == json.loads(codecs.encode_json(result)) == {"prediction": [[1, 0.5, 0.1, 0.2, 0.3, 0.4]]}


@pytest.mark.parametrize("workers,payload_mb,concurrency", [(2, 6, 2), (32, 6, 16), (4, 100, 1), (8, 20, 5)])
def test_execution_parameters_keep_concurrency_times_payload_within_100(tmp_path: Path, workers, payload_mb,
                                                                         concurrency):
    settings = ServeSettings.from_env(tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(payload_mb)}, cpu_count=2,
                                      workers=workers)
    body = create_app(BrokenModel(), settings).test_client().get("/execution-parameters").get_json()
    assert body == {"MaxConcurrentTransforms": concurrency, "BatchStrategy": "SingleRecord",
                    "MaxPayloadInMB": payload_mb}
    assert body["MaxConcurrentTransforms"] * body["MaxPayloadInMB"] <= 100


def test_octet_stream_is_sniffed(tmp_path: Path):
    image = np.zeros((8, 8, 3), np.uint8)
    for body in (encode(image, "jpeg"), encode(image, "png")):
        assert codecs.decode_image("application/octet-stream", body, 10_000).shape == (8, 8, 3)
        assert codecs.decode_image("image/jpg", body, 10_000).shape == (8, 8, 3)
    from ssd_detector.serving.errors import UnsupportedMediaType
    with pytest.raises(UnsupportedMediaType, match="neither a JPEG nor a PNG"):
        codecs.decode_image("application/octet-stream", b"GIF89a....", 10_000)


class BrokenModel:
    class_names: dict[int, str] = {}

    def predict(self, image_rgb, threshold=0.0, max_detections=None):
        raise RuntimeError("secret internals")


def test_internal_error_is_500_without_traceback(tmp_path: Path):
    """A model that fails stands in for any internal failure."""
    app = create_app(BrokenModel(), ServeSettings(tmp_path))
    client = app.test_client()
    image = np.zeros((20, 30, 3), np.uint8)
    response = client.post("/invocations", data=encode(image, "png"), content_type="image/png")
    assert response.status_code == 500
    body = json.loads(response.data)
    assert body == {"error": "internal_error", "message": "the server failed: RuntimeError"}
    assert client.get("/ping").status_code == 200


def test_worker_i_uses_gpu_i_mod_n():
    """No GPU here: the choice is checked as a function of the worker number and GPU count."""
    from ssd_detector.serving.server import worker_gpu

    assert [worker_gpu(age, 4) for age in range(1, 7)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu(3, 0) is None
