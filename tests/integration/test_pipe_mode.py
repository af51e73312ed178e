"""`train` in Pipe mode: a real process reading FIFOs that a writer in the test fills as SageMaker
does (one FIFO per pass, RecordIO or an augmented manifest wrapped as RecordIO)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssd_detector.sagemaker_env import write_job
from ssd_detector.training.metrics import METRIC_DEFINITIONS

CLI = [sys.executable, "-m", "ssd_detector.cli"]
TINY = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "64", "mini_batch_size": "4",
        "learning_rate": "0.01", "use_pretrained_model": "0", "epochs": "2", "num_training_samples": "16"}
PIPE_RECORDIO = {"TrainingInputMode": "Pipe", "ContentType": "application/x-recordio", "RecordWrapperType": "None",
                 "S3DistributionType": "FullyReplicated"}
PIPE_MANIFEST = {**PIPE_RECORDIO, "RecordWrapperType": "RecordIO"}
ATTRIBUTES = ["source-ref", "bounding-box"]


def make_job(root: Path, hyperparameters: dict, channels: dict, resource_config: dict | None = None) -> Path:
    return write_job(root / "opt_ml", hyperparameters, input_data_config=channels,
                     resource_config=resource_config).base


def run(base: Path, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "train"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "1", **env})


def metric(log: str, name: str) -> list[float]:
    import re
    regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
    return [float(m.group(1)) for m in re.finditer(regex, log)]


def fed_run(feed, base: Path, passes: dict, **env) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Runs `train` while SageMaker's side (feed: scripts/pipe_feed.py) feeds each channel's FIFOs;
    returns the result and how many passes of each channel were read to the end."""
    folder = base / "input/data"
    running = [feed.PipeFeeder(folder, name, one_pass).start() for name, one_pass in passes.items()]
    try:
        result = run(base, **env)
    finally:
        for feeder in running:
            feeder.stop()
    return result, [f.completed for f in running]


def test_recordio_train_and_validation_in_pipe_mode(tmp_path: Path, synth_set: Path, pipe_feed):
    hp = {**TINY, "num_training_samples": "10"}  # wrong on purpose: corrected after the first pass
    base = make_job(tmp_path, hp, {"train": PIPE_RECORDIO, "validation": PIPE_RECORDIO})
    result, passes = fed_run(pipe_feed, base, {"train": pipe_feed.recordio_pass(synth_set / "recordio/train"),
                                               "validation": pipe_feed.recordio_pass(synth_set / "recordio/validation")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert passes == [2, 2]  # one pass per epoch of each channel
    assert len(metric(result.stderr, "validation:mAP")) == 2
    assert "num_training_samples=10 but the first epoch streamed 16 training images" in result.stderr
    hyper = json.loads((base / "model/hyperparams.json").read_text())
    assert hyper["num_training_samples"] == "16"
    assert "Traceback" not in result.stderr


def test_manifest_in_pipe_mode_with_class_names(tmp_path: Path, synth_set: Path, pipe_feed):
    base = make_job(tmp_path, TINY, {"train": PIPE_MANIFEST, "validation": PIPE_MANIFEST})
    # The metadata as a third attribute carries the class names.
    result, _ = fed_run(pipe_feed, base, {
        "train": pipe_feed.manifest_pass(synth_set / "manifest/train.manifest", [*ATTRIBUTES, "bounding-box-metadata"]),
        "validation": pipe_feed.manifest_pass(synth_set / "manifest/validation.manifest", ATTRIBUTES)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "but the first epoch streamed" not in result.stderr  # 16 was right
    assert json.loads((base / "model/classes.json").read_text()) == {"0": "circle", "1": "square", "2": "triangle"}
    assert metric(result.stderr, "train:progress")[-1] == 100


def test_two_horovod_workers_share_one_stream(tmp_path: Path, synth_set: Path, pipe_feed, free_port: int):
    base = make_job(tmp_path, {**TINY, "epochs": "2"}, {"train": PIPE_MANIFEST, "validation": PIPE_RECORDIO})
    result, passes = fed_run(
        pipe_feed, base, {"train": pipe_feed.manifest_pass(synth_set / "manifest/train.manifest", ATTRIBUTES),
                          "validation": pipe_feed.recordio_pass(synth_set / "recordio/validation")},
        timeout=400, SSD_WORKERS_PER_HOST="2", SSD_DATA_WORKERS="0", SSD_RENDEZVOUS_PORT=str(free_port))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharing train, validation between the 2 workers" in result.stderr
    assert "worker 0 of 2 (batch 2 each)" in result.stderr
    assert passes == [2, 2]
    assert len(metric(result.stderr, "validation:mAP")) == 2
    assert (base / "model/model_algo_1-0000.params").exists()


def bad_manifest(synth_set: Path, target: Path) -> Path:
    lines = [json.loads(t) for t in (synth_set / "manifest/train.manifest").read_text().splitlines()]
    for line in lines:
        line["source-ref"] = str((synth_set / "manifest" / line["source-ref"]).resolve())
    lines[3]["bounding-box"]["annotations"][0]["class_id"] = 7
    lines[5]["bounding-box"]["annotations"][0]["left"] = 500
    target.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return target


def test_bad_labels_fail_the_job_at_the_end_of_the_first_pass(tmp_path: Path, synth_set: Path, pipe_feed):
    base = make_job(tmp_path, TINY, {"train": PIPE_MANIFEST})
    manifest = bad_manifest(synth_set, tmp_path / "bad.manifest")
    result, _ = fed_run(pipe_feed, base, {"train": pipe_feed.manifest_pass(manifest, ATTRIBUTES)})
    assert result.returncode == 1, result.stderr[-3000:]
    failure = (base / "output/failure").read_text()
    assert "channel 'train' (Pipe mode, train_0) has 2 problem(s)" in failure
    assert "train_0 image 3 (records 6-7)" in failure and "class id 7 is out of range for num_classes=3" in failure
    assert "train_0 image 5" in failure and "lies outside" in failure
    assert not (base / "model/model_algo_1-0000.params").exists()


def test_truncated_stream_fails_with_the_record(tmp_path: Path, synth_set: Path, pipe_feed):
    base = make_job(tmp_path, TINY, {"train": PIPE_RECORDIO})
    data = (synth_set / "recordio/train/train.rec").read_bytes()
    result, _ = fed_run(pipe_feed, base, {"train": lambda: iter([data[:len(data) // 2 + 3]])})
    assert result.returncode == 1, result.stderr[-3000:]
    failure = (base / "output/failure").read_text()
    assert "train_0: record" in failure and "is truncated" in failure and "Pipe mode" in failure


def test_writer_that_never_opens_the_fifo(tmp_path: Path):
    base = make_job(tmp_path, TINY, {"train": PIPE_RECORDIO})
    os.mkfifo(base / "input/data/train_0")  # made, never opened by a writer
    start = time.monotonic()
    result = run(base, SSD_PIPE_TIMEOUT="3")
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - start < 60
    failure = (base / "output/failure").read_text()
    assert f"a writer of {base}/input/data/train_0 did not come within 3 s (SSD_PIPE_TIMEOUT)" in failure


def test_sigterm_while_waiting_for_the_fifo(tmp_path: Path):
    base = make_job(tmp_path, TINY, {"train": PIPE_RECORDIO})
    (base / "checkpoints").mkdir()
    process = subprocess.Popen([*CLI, "train"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "1"})
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if "training mobilenet-0.25" in line or time.monotonic() > deadline:
            break
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest[-2000:]
    assert time.monotonic() - start < 15
    assert "stopped by SIGTERM during epoch 0" in rest
    assert not (base / "output/failure").exists()


def test_pipe_mode_needs_num_training_samples(tmp_path: Path):
    hp = {k: v for k, v in TINY.items() if k != "num_training_samples"}
    base = make_job(tmp_path, hp, {"train": PIPE_RECORDIO})
    result = run(base)
    assert result.returncode == 1
    assert "num_training_samples is required when the train channel is in Pipe mode" in \
        (base / "output/failure").read_text()


@pytest.mark.parametrize("channels, message", [
    ({"train": {**PIPE_RECORDIO, "ContentType": "image/jpeg"}}, "Pipe mode takes application/x-recordio"),
    ({"train": {**PIPE_MANIFEST, "TrainingInputMode": "File"}}, "augmented manifests train in Pipe mode"),
    ({"train": PIPE_RECORDIO, "train_annotation": PIPE_RECORDIO}, "only train and validation can be"),
])
def test_pipe_configurations_refused(tmp_path: Path, channels: dict, message: str):
    base = make_job(tmp_path, TINY, channels)
    result = run(base)
    assert result.returncode == 1 and message in (base / "output/failure").read_text()


def test_two_hosts_with_a_sharded_manifest(tmp_path: Path, synth_set: Path, free_port: int, pipe_feed):
    """ShardedByS3Key: each host streams its own share of the lines and trains on it; the job
    counts the shares together; FullyReplicated validation gives each host everything."""
    hosts = ["127.0.0.1", "127.0.0.2"]
    channels = {"train": {**PIPE_MANIFEST, "S3DistributionType": "ShardedByS3Key"}, "validation": PIPE_RECORDIO}
    bases, running = [], []
    for index, host in enumerate(hosts):
        base = make_job(tmp_path / host, {**TINY, "num_training_samples": "12"}, channels,
                        {"current_host": host, "hosts": hosts, "network_interface_name": "lo"})
        bases.append(base)
        running += [pipe_feed.PipeFeeder(base / "input/data", "train", pipe_feed.manifest_pass(
                        synth_set / "manifest/train.manifest", ATTRIBUTES, index, 2, "ShardedByS3Key")).start(),
                    pipe_feed.PipeFeeder(base / "input/data", "validation",
                                         pipe_feed.recordio_pass(synth_set / "recordio/validation")).start()]
    env = {**os.environ, "SSD_DATA_WORKERS": "0", "SSD_RENDEZVOUS_PORT": str(free_port)}
    processes = [subprocess.Popen([*CLI, "train"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**env, "SAGEMAKER_BASE_DIR": str(base)}) for base in bases]
    try:
        logs = [p.communicate(timeout=400)[0] for p in processes]
    finally:
        for feeder in running:
            feeder.stop()
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    assert "num_training_samples=12 but the first epoch streamed 16 training images" in logs[0]
    assert [f.completed for f in running] == [2, 2, 2, 2]
    assert (bases[0] / "model/model_algo_1-0000.params").exists()
