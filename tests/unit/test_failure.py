from pathlib import Path

import pytest

from ssd_detector.errors import DataError
from ssd_detector.failure import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, run_job, write_failure
from ssd_detector.sagemaker_env import Paths, read_input_data_config, read_resource_config


def test_user_error_writes_reason_and_exits_1(tmp_path: Path):
    failure = tmp_path / "output" / "failure"

    def job():
        raise DataError("channel 'train' has 2 problem(s): a.json: bad")

    assert run_job(job, failure) == EXIT_USER_ERROR
    assert failure.read_text() == "channel 'train' has 2 problem(s): a.json: bad\n"


def test_internal_error_writes_traceback_tail_and_exits_2(tmp_path: Path):
    failure = tmp_path / "failure"

    def job():
        {}["missing"]

    assert run_job(job, failure) == EXIT_INTERNAL_ERROR
    text = failure.read_text()
    assert text.startswith("internal error: KeyError: 'missing'")
    assert "Traceback" in text and "in job" in text


def test_first_failure_wins(tmp_path: Path):
    failure = tmp_path / "failure"
    assert write_failure(failure, "first")
    assert not write_failure(failure, "second")
    assert run_job(lambda: (_ for _ in ()).throw(DataError("third")), failure) == EXIT_USER_ERROR
    assert failure.read_text() == "first\n"


def test_success_writes_nothing(tmp_path: Path):
    assert run_job(lambda: None, tmp_path / "failure") == 0
    assert not (tmp_path / "failure").exists()


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
    try:
        read_resource_config(paths)
    except Exception as exc:  # noqa: BLE001
        assert "algo-3" in str(exc)
    else:
        raise AssertionError("a current_host outside hosts must fail")


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
    from ssd_detector.errors import UserError
    from ssd_detector.sagemaker_env import read_hyperparameters

    paths = Paths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    (paths.config_dir / name).write_bytes(content)
    reader = {"hyperparameters.json": read_hyperparameters, "inputdataconfig.json": read_input_data_config,
              "resourceconfig.json": read_resource_config}[name]
    with pytest.raises(UserError, match=words):
        reader(paths)
