"""Shared fixtures: small synthetic sets made by the project's own generator."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssd_detector.data.synthetic import SynthSpec, generate
from ssd_detector.sagemaker_env import write_job

import ports  # tests/ports.py, beside this conftest (pytest's rootdir import mode finds it)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 4 validation images of 3 classes, in both formats (OUT/json, OUT/recordio)."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthSpec(train=16, validation=4, classes=3, width=160, height=120, seed=7, format="both",
                            image_format="mixed"))
    return out


@pytest.fixture
def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    return ports.free_port()


@pytest.fixture(scope="session")
def pipe_feed():
    """scripts/pipe_feed.py (SageMaker's side of Pipe mode): the writer the Pipe-mode tests feed
    their FIFOs with."""
    import pipe_feed as module

    return module


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, synth_set: Path) -> tuple[Path, str]:
    """A briefly trained SSD (4 epochs on synth_set's JSON channels, mobilenet-0.25@128) -> its
    model folder and the training log. An untrained network's class scores all sit within 1e-3 of
    1 / (classes + 1), where comparisons would test tie-breaking instead of the graph."""
    channels = {d.name: d for d in (synth_set / "json").iterdir() if d.is_dir()}
    hyperparameters = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "128",
                       "mini_batch_size": "8", "learning_rate": "0.01", "optimizer": "adam", "epochs": "4",
                       "use_pretrained_model": "0", "augmentation": "light"}
    base = write_job(tmp_path_factory.mktemp("trained") / "opt_ml", hyperparameters, channels).base
    result = subprocess.run([sys.executable, "-m", "ssd_detector.cli", "train"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "model", result.stderr


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialized mobilenet-0.25@128 model of 3 classes (for serving tests)."""
    from ssd_detector.model.untrained import export_untrained

    return export_untrained(tmp_path_factory.mktemp("small-model") / "model",
                            {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "128"})
