"""Serving settings from the environment: SageMaker's names, defaults, command-line options, bad values."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ssd_detector.errors import UserError
from ssd_detector.serving.settings import ServeSettings


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
    s = ServeSettings.from_env(tmp_path, {}, cpu_count=8, gpus=4)
    assert (s.workers, s.gpus) == (4, 4), "one worker per GPU"
    s = ServeSettings.from_env(tmp_path, {"SSD_NUM_GPUS": "0"}, cpu_count=8)
    assert (s.workers, s.gpus) == (8, 0), "SSD_NUM_GPUS=0: the CPU"
    s = ServeSettings.from_env(tmp_path, {"MODEL_SERVER_WORKERS": "9"}, cpu_count=8, workers=1, port=1234)
    assert (s.workers, s.port) == (1, 1234), "command-line options win"
    for env, words in (({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "0"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT=0"),
                       ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "SAGEMAKER_BIND_TO_PORT=70000"),
                       ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}, "text/csv")):
        with pytest.raises(UserError, match=words):
            ServeSettings.from_env(tmp_path, env, cpu_count=2)


def test_settings_reach_the_gunicorn_process_unchanged():
    settings = ServeSettings.from_env(Path("/opt/ml/model"), {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "7"}, cpu_count=4,
                                      workers=2)
    behind = dataclasses.replace(settings, socket=Path("/tmp/s/gunicorn.sock"), ready_file=Path("/tmp/s/ready"))
    assert ServeSettings.from_json(behind.to_json()) == behind
    assert behind.bind == "unix:/tmp/s/gunicorn.sock" and settings.bind == "0.0.0.0:8080"


def test_multi_model_mode_and_its_memory_come_from_the_environment():
    on = ServeSettings.from_env(Path("m"), {"SAGEMAKER_MULTI_MODEL": "TRUE", "SSD_MODELS_MEMORY_MB": "512"},
                                cpu_count=2, models_root=Path("/x/models"))
    assert on.multi_model and on.models_memory_bytes == 512 << 20 and on.models_root == Path("/x/models")
    assert not ServeSettings.from_env(Path("m"), {}, cpu_count=2).multi_model
    assert ServeSettings.from_env(Path("m"), {"SAGEMAKER_MULTI_MODEL": "false"}, cpu_count=2,
                                  multi_model=True).multi_model, "--multi-model wins"
    for environ, words in (({"SAGEMAKER_MULTI_MODEL": "yes"}, "SAGEMAKER_MULTI_MODEL='yes'"),
                           ({"SSD_MODELS_MEMORY_MB": "lots"}, "SSD_MODELS_MEMORY_MB='lots'")):
        with pytest.raises(UserError, match=words):
            ServeSettings.from_env(Path("m"), environ, cpu_count=2)
