"""The /opt/ml job tree: write_job lays it out, and Paths and the readers find what it wrote."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssd_detector.errors import UserError
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


def test_paths_follow_base_dir(tmp_path: Path):
    paths = Paths.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert paths.hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    assert paths.channel_dir("train") == tmp_path / "input/data/train"
    assert paths.model_dir == tmp_path / "model"
    assert paths.failure_file == tmp_path / "output/failure"
    assert paths.checkpoint_dir == tmp_path / "checkpoints"
    assert Paths.from_env({}).base == Path("/opt/ml")


def test_missing_resource_config_is_one_local_host(tmp_path: Path):
    config = read_resource_config(Paths(tmp_path))
    assert config.hosts == ("algo-1",) and config.is_master


def test_resource_config_is_read_and_checked(tmp_path: Path):
    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.resource_config_file.write_text(
        '{"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth1"}')
    config = read_resource_config(paths)
    assert config.hosts == ("algo-1", "algo-2") and config.host_rank == 1 and not config.is_master
    assert config.network_interface_name == "eth1"
    paths.resource_config_file.write_text('{"current_host": "algo-3", "hosts": ["algo-1"]}')
    with pytest.raises(UserError, match="algo-3"):
        read_resource_config(paths)


def test_channels_from_folders_when_no_input_data_config(tmp_path: Path):
    paths = Paths(tmp_path)
    (paths.data_dir / "train").mkdir(parents=True)
    (paths.data_dir / "validation").mkdir()
    channels = read_input_data_config(paths)
    assert sorted(channels) == ["train", "validation"]
    assert channels["train"].content_type is None


@pytest.mark.parametrize("name,content,words", [
    ("hyperparameters.json", b"\xff\xfe{}", "is not UTF-8 text"),
    ("hyperparameters.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("hyperparameters.json", b'{"num_classes": ' + b"1" * 5000 + b"}", "not usable JSON"),
    ("inputdataconfig.json", b'{"train": {"ContentType": 5}}', "ContentType must be a string, not 5"),
    ("inputdataconfig.json", b'{"train": {"TrainingInputMode": ["File"]}}', "TrainingInputMode must be a string"),
    ("resourceconfig.json", b'{"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": 0}',
     "network_interface_name must be a string, not 0"),
])
def test_hostile_config_files_are_user_errors(tmp_path: Path, name: str, content: bytes, words: str):
    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / name).write_bytes(content)
    reader = {"hyperparameters.json": read_hyperparameters, "inputdataconfig.json": read_input_data_config,
              "resourceconfig.json": read_resource_config}[name]
    with pytest.raises(UserError, match=words):
        reader(paths)
