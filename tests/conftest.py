"""Shared fixtures: small synthetic sets made by the project's own generator."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssd_detector.data.synthetic import SynthSpec, generate

import ports  # tests/ports.py: this conftest puts the tests' folder on sys.path


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
    """scripts/pipe_feed.py (SageMaker's side of Pipe mode) as a module: the writer the Pipe-mode
    tests feed their FIFOs with."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts/pipe_feed.py"
    spec = importlib.util.spec_from_file_location("pipe_feed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipe_feed"] = module
    spec.loader.exec_module(module)
    return module
