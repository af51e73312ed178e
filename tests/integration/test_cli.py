"""The ssd-detector command, run as a user runs it: a real process, its output and exit code."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssd_detector.sagemaker_env import write_job

CLI = [sys.executable, "-m", "ssd_detector.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "data"
    result = run("synth", str(out), "--train", "12", "--validation", "4", "--classes", "3", "--image-size", "128x96",
                 "--format", "both", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["train"] == 12
    return out


def test_check_data_clean_channels(made: Path):
    for args in ([str(made / "json/train"), "--annotations", str(made / "json/train_annotation")],
                 [str(made / "recordio/train/train.rec")]):
        result = run("check-data", *args, "--num-classes", "3", "--label-width", "350")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        for key in ("images", "objects", "classes", "max_objects_per_image", "min_label_width", "errors"):
            assert key in report
        assert report["images"] == 12 and report["errors"] == []


def test_check_data_reports_errors_and_exits_1(made: Path, tmp_path: Path):
    broken = tmp_path / "train.rec"
    data = (made / "recordio/train/train.rec").read_bytes()
    broken.write_bytes(data[: len(data) - 100])
    result = run("check-data", str(broken), "--num-classes", "2", "--label-width", "10")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    whats = " ".join(e["what"] for e in report["errors"])
    assert "truncated" in whats
    assert "out of range for num_classes=2" in whats
    assert "label_width=10 is too small" in whats


def test_check_job_writes_failure_file_for_bad_hyperparameters(made: Path, tmp_path: Path):
    base = write_job(tmp_path / "opt_ml", {"num_classes": "3", "optimizer": "nag"},
                     {"train": made / "recordio/train"}, link=True).base
    result = run("check-job", "--write-failure", env={"SAGEMAKER_BASE_DIR": str(base)})
    assert result.returncode == 1
    failure = (base / "output/failure").read_text()
    assert "optimizer='nag'" in failure and "one of sgd, adam, rmsprop, adadelta" in failure
    write_job(base, {"num_classes": "3", "anchor_sizes": "0.1,0.5"})  # a count only the network can check
    (base / "output/failure").unlink()
    result = run("check-job", "--write-failure", env={"SAGEMAKER_BASE_DIR": str(base)})
    assert result.returncode == 1
    assert "anchor_sizes=0.1,0.5 has 2 sizes" in (base / "output/failure").read_text()
    write_job(base, {"num_classes": "3"})  # the same job, its hyperparameters corrected
    (base / "output/failure").unlink()
    result = run("check-job", env={"SAGEMAKER_BASE_DIR": str(base)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["train"]["images"] == 12


def test_train_without_a_job_configuration_fails_with_a_reason(tmp_path: Path):
    base = tmp_path / "opt_ml"
    base.mkdir()
    result = run("train", env={"SAGEMAKER_BASE_DIR": str(base)})
    assert result.returncode == 1, result.stderr
    failure = (base / "output/failure").read_text()
    assert f"no training job configuration: {base / 'input/config'} does not exist" in failure
    assert not (base / "model").exists() or not any((base / "model").iterdir())


def terminate_within_seconds(process: subprocess.Popen) -> str:
    """SIGTERM, then the rest of its stderr; it must have ended within 10 s."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=30)[1]
    assert time.monotonic() - start < 10
    return rest


def test_sigterm_before_training_stops_within_seconds(made: Path, tmp_path: Path):
    """While the job waits for a host that never comes up, SIGTERM stops it at once (as PID 1 in
    a container, Python's default would ignore it until the training loop's handler)."""
    base = write_job(tmp_path / "opt_ml", {"num_classes": "3"}, {"train": made / "recordio/train"}, link=True,
                     resource_config={"current_host": "algo-2", "hosts": ["algo-1", "algo-2"],
                                      "network_interface_name": "lo"}).base
    process = subprocess.Popen([*CLI, "train"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_JOIN_TIMEOUT": "300",
                                    "SSD_WORKERS_PER_HOST": "1"})
    for line in process.stderr:
        if "resolving the hosts" in line:
            break
    time.sleep(1)
    rest = terminate_within_seconds(process)
    assert process.returncode == 0, rest
    assert "stopped: SIGTERM" in rest
    assert not (base / "output/failure").exists()


def test_sigterm_stops_a_tool_with_143(tmp_path: Path):
    process = subprocess.Popen([*CLI, "synth", str(tmp_path / "many"), "--train", "100000", "--classes", "3",
                                "--image-size", "320x240"], stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    rest = terminate_within_seconds(process)
    assert process.returncode == 143, rest
    assert "stopped: SIGTERM during synth" in rest


def test_help_describes_the_commands():
    result = run("--help")
    assert result.returncode == 0 and "as they land" not in result.stdout
    assert "train" in result.stdout and "serve" in result.stdout


def test_convert_round_trip(made: Path, tmp_path: Path):
    result = run("convert", "recordio", str(made / "recordio/train"), "--to", "json", "--output",
                 str(tmp_path / "train"))
    assert result.returncode == 0, result.stderr
    result = run("convert", "json", str(tmp_path / "train"), "--annotations", str(tmp_path / "train_annotation"),
                 "--to", "recordio", "--output", str(tmp_path / "again.rec"))
    assert result.returncode == 0, result.stderr
    result = run("check-data", str(tmp_path / "again.rec"), "--num-classes", "3")
    assert result.returncode == 0 and json.loads(result.stdout)["images"] == 12


def test_convert_refuses_bad_input(tmp_path: Path):
    (tmp_path / "x.rec").write_bytes(b"\x01" * 40)
    result = run("convert", "recordio", str(tmp_path / "x.rec"), "--to", "json", "--output", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "magic number" in result.stderr and "nothing written" in result.stderr
    assert not (tmp_path / "o").exists()


def test_synth_bad_arguments(tmp_path: Path):
    result = run("synth", str(tmp_path / "s"), "--train", "2", "--classes", "11")
    assert result.returncode == 1 and "--classes 11" in result.stderr


def test_init_model_writes_a_servable_untrained_model(tmp_path: Path, made: Path):
    out = tmp_path / "model"
    result = run("init-model", str(out), "--num-classes", "3", "--base-network", "mobilenet-0.25",
                 "--image-shape", "64")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "hyperparams.json").read_text())["num_classes"] == "3"
    image = next((made / "json/validation").iterdir())
    result = run("predict", str(image), "--model-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert image.name in json.loads(result.stdout)
    result = run("init-model", str(tmp_path / "bad"), "--num-classes", "0")
    assert result.returncode == 1 and "num_classes='0'" in result.stderr
