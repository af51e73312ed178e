"""Incremental training from a model of SageMaker's built-in algorithm (made by
tests/builtin_models.py, given in the `model` channel as SageMaker delivers it): the job trains
the model's own network and writes an artifact of ours that serves as usual."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from builtin_models import VGG_MEANS, deploy_detections, write_builtin_model

from ssd_detector.inference import Predictor
from ssd_detector.sagemaker_env import write_job

CLI = [sys.executable, "-m", "ssd_detector.cli"]
# 16 images in batches of 8: 2 updates. A rate of 1e-12 leaves every weight as it was.
HYPER = {"num_classes": "3", "mini_batch_size": "8", "epochs": "1", "use_pretrained_model": "0",
         "augmentation": "none"}
VGG = {**HYPER, "base_network": "vgg-16", "image_shape": "300"}  # the example's VGG needs 300 or more
RESNET = {**HYPER, "base_network": "resnet-50", "image_shape": "128"}


def job(root: Path, synth_set: Path, model: Path, hyperparameters: dict) -> Path:
    """A job whose model channel holds model.tar.gz made from the folder `model`."""
    channels = {d.name: d for d in (synth_set / "recordio").iterdir() if d.is_dir()}
    base = write_job(root / "opt_ml", hyperparameters, channels).base
    (base / "input/data/model").mkdir(parents=True)
    with tarfile.open(base / "input/data/model/model.tar.gz", "w:gz") as tar:
        for item in sorted(model.iterdir()):
            tar.add(item, arcname=item.name)
    return base


def in_order(rows: np.ndarray) -> np.ndarray:
    """Rows by score, then class and corners (boxes of equal score come in either order)."""
    keys = np.round(rows, 4)
    return rows[np.lexsort([keys[:, i] for i in (5, 4, 3, 2, 0)] + [-keys[:, 1]])]


def train(base: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "train"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "0"})


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_builtin_model(tmp_path_factory.mktemp("builtin") / "model", "vgg-16", 3, 300)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_builtin_model(tmp_path_factory.mktemp("builtin") / "model", "resnet-50", 2, 128)


def test_the_same_classes_keep_every_weight_and_the_result_serves(tmp_path: Path, synth_set: Path, vgg: Path):
    """vgg-16: no batch norm, whose statistics training would move."""
    base = job(tmp_path, synth_set, vgg, {**VGG, "learning_rate": "1e-12"})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialized from the model of the built-in algorithm" in result.stderr
    assert "re-initialized" not in result.stderr
    hyper = json.loads((base / "model/hyperparams.json").read_text())
    assert json.loads(hyper["imported_from_builtin"])["base_network"] == "vgg-16"
    # The artifact is ours (an SSD detector graph); with the weights unchanged its detections are
    # the built-in model's deploy graph's.
    images = np.random.default_rng(3).integers(0, 256, (2, 3, 300, 300)).astype(np.uint8)
    expected = deploy_detections(vgg, images, VGG_MEANS)
    got = Predictor(base / "model").forward(images)
    for rows, want in zip(got, expected):
        rows, want = rows[rows[:, 0] >= 0], want[want[:, 0] >= 0]
        assert len(rows) == len(want) > 0
        np.testing.assert_allclose(in_order(rows), in_order(want), atol=1e-4)


def test_other_classes_start_the_class_predictors_afresh_and_a_second_round_trains(tmp_path: Path, synth_set: Path,
                                                                                   resnet: Path):
    three = {**RESNET, "learning_rate": "0.001"}  # the built-in model has 2 classes, the data 3
    first = job(tmp_path / "first", synth_set, resnet, three)
    result = train(first)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_classes 2 -> 3; re-initialized the class predictors" in result.stderr
    assert "_cls_pred_conv_weight" in result.stderr
    # The result, an artifact of ours holding the built-in network, is a starting point again.
    second = job(tmp_path / "second", synth_set, first / "model", three)
    again = train(second)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "initialized from the model of the built-in algorithm" in again.stderr
    assert "re-initialized" not in again.stderr
    rows = Predictor(second / "model").forward(np.zeros((1, 3, 128, 128), np.uint8))[0]
    assert rows.shape[1] == 6 and (rows[:, 0] < 3).all() and (rows[:, 0] >= 0).any()


def test_another_base_network_fails_naming_both(tmp_path: Path, synth_set: Path, resnet: Path):
    base = job(tmp_path, synth_set, resnet, {**RESNET, "base_network": "vgg-16", "learning_rate": "0.001"})
    result = train(base)
    assert result.returncode != 0
    failure = (base / "output/failure").read_text()
    assert "'resnet-50'" in failure and "base_network='vgg-16'" in failure, failure
