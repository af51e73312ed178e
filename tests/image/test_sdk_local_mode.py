"""The image driven by the real SageMaker Python SDK's local mode (docker compose under the SDK),
as users run it before they pay for instances: v3 ModelTrainer with 1 and 2 instances, v2 Estimator
with 2 instances, v2 deploy + predict with no serializer chosen, and v2 batch transform over a
folder of images. Each SDK runs in its own virtualenv (`make sdk-venvs`) through
tests/sdk/local_mode.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, generate, make_image

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests/sdk/local_mode.py"
IMAGE = os.environ.get("SSD_IMAGE", "ssd-detector:cpu")
# The way each SDK user writes them: Python values, not strings (v3 serializes them as JSON).
HYPER = {"num_classes": 3, "base_network": "mobilenet-0.25", "image_shape": 64, "mini_batch_size": 8,
         "epochs": 2, "learning_rate": 0.02, "use_pretrained_model": False, "lr_scheduler_step": [1]}
MODEL_FILES = ["classes.json", "hyperparams.json", "model_algo_1-0000.params", "model_algo_1-symbol.json"]


def sdk_python(major: int) -> Path:
    python = ROOT / f".venv-sdk{major}/bin/python"
    if not python.exists():
        pytest.fail(f"{python} is missing: make sdk-venvs")
    return python


def remove_containers_of(image: str) -> None:
    """Local mode leaves its containers stopped; they go with the test run."""
    listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True,
                            text=True, timeout=60).stdout.split()
    if listed:
        subprocess.run(["docker", "rm", "-f", *listed], capture_output=True, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def engine():  # a fixture that yields
    usable = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True,
                                                       timeout=60).returncode == 0
    if not usable:
        if os.environ.get("CI"):
            pytest.fail("Docker cannot run here, and CI must run the image tests")
        pytest.skip("Docker cannot run on this machine (no engine answers `docker info`)")
    if not (shutil.which("docker-compose") or subprocess.run(["docker", "compose", "version"],
                                                             capture_output=True).returncode == 0):
        pytest.fail("neither docker-compose nor the compose plugin is installed (docker/prepare.sh installs it)")
    yield
    remove_containers_of(IMAGE)


def drive(major: int, action: str, *args: str, timeout: float = 900) -> dict:
    result = subprocess.run([str(sdk_python(major)), str(DRIVER), action, "--image", IMAGE, *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-4000:] + result.stderr[-4000:])
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "log": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdk-data")
    generate(out, SynthSpec(train=16, validation=4, classes=3, width=128, height=96, seed=4, format="recordio"))
    return out


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name.lstrip("./") for m in tar.getmembers() if m.isfile())


def hyperparams_in(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "hyperparams.json")
        return json.loads(tar.extractfile(member).read())


@pytest.mark.parametrize("instances", [1, 2])
def test_v3_local_container_training(tmp_path: Path, data: Path, instances: int):
    out = drive(3, "v3-train", "--data", str(data), "--instances", str(instances), "--root", str(tmp_path),
                "--hyperparameters", json.dumps(HYPER))
    archive = Path(out["model_tar"])
    assert members(archive) == MODEL_FILES, "model.tar.gz holds the model"
    written = hyperparams_in(archive)
    assert written["use_pretrained_model"] == "0" and written["lr_scheduler_step"] == "1"
    if instances == 2:
        # v3 names `ethwe`, which the containers lack; Gloo ran on the interface that reaches algo-1.
        assert "network interface 'ethwe', which this host does not have" in out["log"]
        assert "using 'eth0'" in out["log"]


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory, data: Path) -> Path:
    """A model trained by SDK v2's local mode on two instances."""
    root = tmp_path_factory.mktemp("v2-train")
    out = drive(2, "v2-train", "--data", str(data), "--instances", "2", "--root", str(root),
                "--hyperparameters", json.dumps(HYPER))
    assert out["model_data"].startswith("file://")
    archive = Path(out["model_data"][len("file://"):])
    return archive


def test_v2_local_training_with_two_instances(v2_model: Path):
    assert members(v2_model) == MODEL_FILES


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(8)
    for i in range(3):
        image = make_image(rng, SynthSpec(train=1, validation=0, classes=3, width=160, height=120))[0]
        (folder / f"picture-{i}.jpg").write_bytes(encode(image, "jpeg"))
    return folder


def check_prediction(answer: dict) -> None:
    rows = np.array(answer["prediction"], dtype=float).reshape(-1, 6)
    assert len(rows) > 0
    assert np.all((rows[:, 0] >= 0) & (rows[:, 0] < 3))
    assert np.all((rows[:, 2:] >= 0) & (rows[:, 2:] <= 1))


def test_v2_local_deploy_predicts_with_the_default_serializer(v2_model: Path, pictures: Path):
    out = drive(2, "v2-deploy", "--model-data", str(v2_model), "--picture", str(pictures / "picture-0.jpg"))
    assert out["content_type"] == "application/octet-stream", "the SDK's default, not chosen by us"
    check_prediction(out["answer"])


def test_v2_local_batch_transform_over_a_folder(v2_model: Path, pictures: Path, tmp_path: Path):
    out = drive(2, "v2-transform", "--model-data", str(v2_model), "--input", str(pictures), "--root", str(tmp_path))
    assert sorted(out["outputs"]) == [f"picture-{i}.jpg.out" for i in range(3)]
    for answer in out["outputs"].values():
        check_prediction(answer)
