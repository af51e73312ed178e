"""Reading a whole /opt/ml tree as a training job does."""
import json
import logging
import shutil
from pathlib import Path

import pytest

from ssd_detector.config import parse_hyperparameters
from ssd_detector.errors import DataError, HyperparameterError, UserError
from ssd_detector.sagemaker_env import Paths
from ssd_detector.training.inputs import augmentation_from_environment, read_training_inputs


def job_tree(tmp_path: Path, synth_set: Path, fmt: str, hyperparameters: dict, config: dict | None = None) -> Paths:
    paths = Paths(tmp_path / "opt_ml")
    paths.config_dir.mkdir(parents=True)
    shutil.copytree(synth_set / fmt, paths.data_dir)
    paths.hyperparameters_file.write_text(json.dumps(hyperparameters))
    if config is not None:
        paths.input_data_config_file.write_text(json.dumps(config))
    return paths


def test_recordio_job(tmp_path, synth_set, caplog):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "3", "num_training_samples": "99"},
                     {"train": {"ContentType": "application/x-recordio"},
                      "validation": {"ContentType": "application/x-recordio"}})
    with caplog.at_level(logging.WARNING):
        inputs = read_training_inputs(paths)
    assert inputs.hyperparameters.num_training_samples == 16
    assert any("num_training_samples=99 but the train channel holds 16 images" in r.getMessage()
               for r in caplog.records)
    assert len(inputs.validation.samples) == 4


def test_json_job_counts_samples_and_keeps_class_names(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "json", {"num_classes": "\"3\""})
    inputs = read_training_inputs(paths)
    assert inputs.train.format == "json"
    assert inputs.hyperparameters.num_training_samples == 16
    assert inputs.class_names == {0: "circle", 1: "square", 2: "triangle"}


def test_label_width_too_small_names_image_and_width(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "3", "label_width": "12"})
    with pytest.raises(HyperparameterError) as info:
        read_training_inputs(paths)
    message = str(info.value)
    assert "label_width=12 is too small" in message
    assert "train.rec#" in message and "at least" in message


def test_bad_data_lists_offenders(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "json", {"num_classes": "3"})
    for name in ("train_000001.jpg", "train_000002.jpg"):
        (paths.channel_dir("train") / name).write_bytes(b"broken")
    with pytest.raises(DataError) as info:
        read_training_inputs(paths)
    message = str(info.value)
    assert "channel 'train' has 2 problem(s)" in message
    assert "train_000001.jpg" in message and "train_000002.jpg" in message


def test_classes_beyond_num_classes(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "2"})
    with pytest.raises(DataError, match="out of range for num_classes=2"):
        read_training_inputs(paths)


def test_missing_train_channel_and_pipe_mode(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "3"},
                     {"validation": {"ContentType": "application/x-recordio"}})
    with pytest.raises(UserError, match="no 'train' channel"):
        read_training_inputs(paths)
    paths.input_data_config_file.write_text(json.dumps({"train": {"TrainingInputMode": "Streaming"}}))
    with pytest.raises(UserError, match="TrainingInputMode='Streaming'; use File, FastFile or Pipe"):
        read_training_inputs(paths)
    paths.input_data_config_file.write_text(json.dumps({"train": {"TrainingInputMode": "Pipe"}}))
    with pytest.raises(UserError, match="num_training_samples is required when the train channel is in Pipe mode"):
        read_training_inputs(paths)
    paths.hyperparameters_file.write_text(json.dumps({"num_classes": "3", "num_training_samples": "16"}))
    inputs = read_training_inputs(paths)  # read during training, not here
    assert (inputs.train.format, inputs.train.distribution) == ("recordio", "FullyReplicated")


def test_unsupported_content_type(tmp_path, synth_set):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "3"},
                     {"train": {"ContentType": "text/csv"}})
    with pytest.raises(DataError, match="content type 'text/csv' is not supported"):
        read_training_inputs(paths)


def test_no_validation_channel_is_allowed(tmp_path, synth_set, caplog):
    paths = job_tree(tmp_path, synth_set, "recordio", {"num_classes": "3"})
    shutil.rmtree(paths.channel_dir("validation"))
    with caplog.at_level(logging.WARNING):
        inputs = read_training_inputs(paths)
    assert inputs.validation is None
    assert any("no validation channel" in r.getMessage() for r in caplog.records)


def test_the_deprecated_environment_variable_still_chooses_the_augmentation(caplog):
    hp = parse_hyperparameters({"num_classes": "2"})
    assert augmentation_from_environment(hp, {}) is hp
    assert augmentation_from_environment(hp, {"SSD_AUGMENT": "0"}).augmentation == "none"
    chosen = augmentation_from_environment(hp, {"SSD_AUGMENT": "Light"})
    assert chosen.augmentation == "light" and chosen.to_strings()["augmentation"] == "light"
    assert "SSD_AUGMENT is deprecated" in caplog.text and "augmentation=light" in caplog.text
    given = parse_hyperparameters({"num_classes": "2", "augmentation": "none"})
    assert augmentation_from_environment(given, {"SSD_AUGMENT": "full"}).augmentation == "none"
    assert "SSD_AUGMENT='full' is ignored" in caplog.text
    with pytest.raises(Exception, match="SSD_AUGMENT='heavy'"):
        augmentation_from_environment(hp, {"SSD_AUGMENT": "heavy"})
