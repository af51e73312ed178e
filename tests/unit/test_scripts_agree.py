"""The standard-library scripts (local_run.py, pipe_feed.py) repeat a little of the package, as
they run where it is not installed: their RecordIO framing, manifest detection and /opt/ml tree
are checked against the package's here, so the two cannot drift apart. The benchmarks import as
any module does, and read job logs with the package's metric definitions."""
from __future__ import annotations

import io
import json
from pathlib import Path

import local_run
import pipe_feed
import pytest

from ssd_detector.data import manifest, recordio
from ssd_detector.sagemaker_env import write_job

PAYLOADS = [b"", b"a", b"abcd", b"\x00" * 7, json.dumps({"annotations": []}).encode(), bytes(range(256)) * 3]


def test_pipe_feeds_framing_is_read_back_by_the_packages_reader():
    stream = b"".join(pipe_feed.recordio_frame(p) for p in PAYLOADS)
    assert [r.payload for r in recordio.iter_records(io.BytesIO(stream))] == PAYLOADS


def test_pipe_feeds_framing_is_the_packages_writers_for_payloads_without_the_magic():
    for payload in PAYLOADS:
        written = io.BytesIO()
        recordio.write_record(written, payload)
        assert pipe_feed.recordio_frame(payload) == written.getvalue()
    assert pipe_feed.MAGIC == recordio.MAGIC


@pytest.mark.parametrize("name", ["a.manifest", "b.jsonl", "c.JSONLINES", "d.json", "e.rec", "f"])
def test_the_local_runner_finds_manifests_as_the_package_does(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_text("{}\n")
    assert local_run.is_manifest(path) == manifest.is_manifest(path)
    assert not local_run.is_manifest(tmp_path) and not manifest.is_manifest(tmp_path)  # a folder never is
    assert local_run.MANIFEST_SUFFIXES == manifest.MANIFEST_SUFFIXES


def files(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_the_local_runners_tree_is_the_one_write_job_lays_out(tmp_path: Path, synth_set: Path):
    channels = {d.name: d for d in (synth_set / "recordio").iterdir() if d.is_dir()}
    hyperparameters = {"num_classes": "3", "base_network": "mobilenet-0.25"}
    local = local_run.lay_out(tmp_path / "local", hyperparameters, channels, {}, "algo-1", ["algo-1", "algo-2"])
    config = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None",
                     "ContentType": "application/x-recordio"} for name in channels}
    resources = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
    package = write_job(tmp_path / "package", hyperparameters, channels, input_data_config=config,
                        resource_config=resources).base
    ours, theirs = files(local / "input"), files(package / "input")
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name.endswith(".json"):
            assert json.loads(ours[name]) == json.loads(theirs[name]), name
        else:
            assert ours[name] == theirs[name], name


def test_benchmarks_import_and_read_logs_with_the_metric_definitions():
    from benchmarks import common

    log = "\n".join(["#quality_metric: host=algo-1, epoch=0, validation mAP <score>=(0.250000)",
                     "#throughput_metric: host=algo-1, train throughput=12.5000 records/second",
                     "#progress_metric: host=algo-1, completed 50 % of epochs",
                     "#quality_metric: host=algo-1, epoch=1, validation mAP <score>=(0.500000)",
                     "#progress_metric: host=algo-1, completed 100 % of epochs"])
    run = common.TrainRun(1.0, True, log)
    assert run.values("validation:mAP") == [0.25, 0.5]
    assert run.values("train:throughput") == [12.5]
    assert run.epochs == 2
    with pytest.raises(ValueError, match="metric 'mAP' is not one of"):
        run.values("mAP")


def test_every_benchmark_is_a_module_with_a_main():
    import importlib

    import bench

    for name in bench.NAMES:
        assert callable(importlib.import_module(f"benchmarks.{name}").main)
