"""The Flask app with a stand-in model: batch transform's execution parameters and the 500 path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.serving.app import create_app
from ssd_detector.serving.settings import ServeSettings


class BrokenModel:
    class_names: dict[int, str] = {}

    def predict(self, image_rgb, threshold=0.0, max_detections=None):
        raise RuntimeError("secret internals")


@pytest.mark.parametrize("workers,payload_mb,concurrency", [(2, 6, 2), (32, 6, 16), (4, 100, 1), (8, 20, 5)])
def test_execution_parameters_keep_concurrency_times_payload_within_100(tmp_path: Path, workers, payload_mb,
                                                                         concurrency):
    settings = ServeSettings.from_env(tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(payload_mb)}, cpu_count=2,
                                      workers=workers)
    body = create_app(BrokenModel(), settings).test_client().get("/execution-parameters").get_json()
    assert body == {"MaxConcurrentTransforms": concurrency, "BatchStrategy": "SingleRecord",
                    "MaxPayloadInMB": payload_mb}
    assert body["MaxConcurrentTransforms"] * body["MaxPayloadInMB"] <= 100


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
