"""The /opt/ml job tree: write_job lays it out, and Paths and the readers find what it wrote."""
from __future__ import annotations

from pathlib import Path

from ssd_detector.sagemaker_env import (Paths, read_hyperparameters, read_input_data_config, read_resource_config,
                                        write_job)


def test_a_written_job_reads_back(tmp_path: Path):
    images = tmp_path / "src/train"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"jpeg")
    rec = tmp_path / "src/val.rec"
    rec.write_bytes(b"rec")
    config = {"train": {"ContentType": "image/jpeg", "TrainingInputMode": "File"},
              "validation": {"ContentType": "application/x-recordio", "TrainingInputMode": "File"}}
    resources = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "lo"}
    paths = write_job(tmp_path / "job", {"num_classes": "3", "epochs": "2"}, {"train": images, "validation": rec},
                      input_data_config=config, resource_config=resources)
    assert paths == Paths(tmp_path / "job")
    assert read_hyperparameters(paths) == {"num_classes": "3", "epochs": "2"}
    assert set(read_input_data_config(paths)) == {"train", "validation"}
    assert read_resource_config(paths).current_host == "algo-2"
    assert (paths.channel_dir("train") / "a.jpg").read_bytes() == b"jpeg"
    assert not (paths.channel_dir("train") / "a.jpg").is_symlink()
    assert (paths.channel_dir("validation") / "val.rec").read_bytes() == b"rec"


def test_linked_channels_and_no_optional_files(tmp_path: Path):
    images = tmp_path / "src/train"
    images.mkdir(parents=True)
    rec = tmp_path / "src/train.rec"
    rec.write_bytes(b"rec")
    paths = write_job(tmp_path / "job", {"num_classes": "3"}, {"train": images, "extra": rec}, link=True)
    assert paths.channel_dir("train").is_symlink() and paths.channel_dir("train").resolve() == images.resolve()
    assert (paths.channel_dir("extra") / "train.rec").is_symlink()
    assert not paths.input_data_config_file.exists() and not paths.resource_config_file.exists()
    assert read_resource_config(paths).hosts == ("algo-1",)
