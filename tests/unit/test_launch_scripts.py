"""The SageMaker launch script's arguments (no AWS here: the SDK call itself is not made), the
local runner's /opt/ml layout and packing, and the weights fetcher's checks."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import local_run  # scripts/ is on the tests' path, as it is for a script run as a file
import pytest
import sagemaker_launch

from ssd_detector.model import zoo_fetch
from ssd_detector.training.metrics import METRIC_DEFINITIONS



@pytest.fixture
def hp_file(tmp_path: Path) -> Path:
    path = tmp_path / "hp.json"
    path.write_text(json.dumps({"num_classes": 20, "base_network": "resnet-50", "epochs": 30}))
    return path


def test_sagemaker_launch_spec_and_v2_arguments(hp_file: Path):
    launch = sagemaker_launch
    args = launch.build_parser().parse_args([
        "--image-uri", "123.dkr.ecr.us-east-1.amazonaws.com/ssd-detector:gpu", "--role", "arn:aws:iam::1:role/R",
        "--instance-type", "ml.p3.16xlarge", "--instance-count", "2", "--hyperparameters", str(hp_file),
        "--channel", "train=s3://b/train", "--channel", "validation=s3://b/val",
        "--content-type", "train=application/x-recordio", "--output-path", "s3://b/out",
        "--checkpoint-s3-uri", "s3://b/ckpt", "--spot"])
    spec = launch.launch_spec(args)
    kwargs = launch.estimator_arguments(spec)
    assert kwargs["instance_count"] == 2 and kwargs["instance_type"] == "ml.p3.16xlarge"
    assert kwargs["hyperparameters"] == {"num_classes": "20", "base_network": "resnet-50", "epochs": "30"}
    assert kwargs["metric_definitions"] == [dict(d) for d in METRIC_DEFINITIONS]
    assert kwargs["use_spot_instances"] and kwargs["max_wait"] > kwargs["max_run"]
    assert kwargs["checkpoint_s3_uri"] == "s3://b/ckpt"
    train, validation = spec.channels
    assert launch.training_input_arguments(train) == {
        "s3_data": "s3://b/train", "distribution": "FullyReplicated", "input_mode": "File",
        "content_type": "application/x-recordio"}
    assert "content_type" not in launch.training_input_arguments(validation)


@pytest.mark.parametrize("extra,words", [
    (["--instance-count", "0"], "--instance-count 0"),
    (["--output-path", "/local"], "'/local' must be an s3:// URI"),
    (["--instance-type", "p3.2xlarge"], "'p3.2xlarge' must be a SageMaker type"),
    (["--predict", "x.jpg"], "--predict needs --deploy"),
    (["--model-data", "s3://b/m.tar.gz"], "--model-data deploys a trained model: add --deploy"),
    (["--checkpoint-s3-uri", "ckpt/"], "'ckpt/' must be an s3:// URI"),
    (["--attribute-names", "train=source-ref,labels"], "it trains in Pipe mode"),
    (["--input-mode", "Pipe", "--attribute-names", "train=labels,source-ref"], "the image .source-ref. first"),
    (["--distribution", "train=Sharded"], "FullyReplicated or ShardedByS3Key"),
    (["--distribution", "validation=ShardedByS3Key"], "--distribution for channels that are not given"),
])
def test_sagemaker_arguments_are_checked(hp_file: Path, extra: list[str], words: str):
    launch = sagemaker_launch
    base = ["--image-uri", "i", "--role", "r", "--hyperparameters", str(hp_file), "--channel", "train=s3://b/t",
            "--output-path", "s3://b/o"]
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        launch.launch_spec(launch.build_parser().parse_args(base + extra))


@pytest.mark.parametrize("extra,words", [
    (["--deploy"], "no --model-data or --hyperparameters"),
    ([], "add --deploy"),
    (["--deploy", "--predict", "{picture}"], "needs --target-model"),
    (["--deploy", "--predict", "{picture}", "--target-model", "../x.tar.gz"], "relative to the prefix"),
])
def test_multi_model_deploy_arguments_are_checked(tmp_path: Path, hp_file: Path, extra: list[str], words: str):
    launch = sagemaker_launch
    picture = tmp_path / "p.jpg"
    picture.write_bytes(b"jpeg")
    argv = ["--image-uri", "i", "--role", "r", "--multi-model-prefix", "s3://b/models/",
            *[a.format(picture=picture) for a in extra]]
    if words.startswith("no --model-data"):
        argv += ["--hyperparameters", str(hp_file)]
    with pytest.raises(ValueError, match=words):
        launch.launch_spec(launch.build_parser().parse_args(argv))
    with pytest.raises(ValueError, match="add --multi-model-prefix"):
        launch.launch_spec(launch.build_parser().parse_args(["--image-uri", "i", "--role", "r", "--target-model", "a"]))
    spec = launch.launch_spec(launch.build_parser().parse_args(
        ["--image-uri", "i", "--role", "r", "--multi-model-prefix", "s3://b/models/", "--deploy"]))
    assert (spec.multi_model_prefix, spec.target_model, spec.channels) == ("s3://b/models/", None, ())


def test_sagemaker_bad_hyperparameters_and_channels_fail_before_any_call(tmp_path: Path, hp_file: Path):
    launch = sagemaker_launch
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_classes": "0"}))
    base = ["--image-uri", "i", "--role", "r", "--output-path", "s3://b/o"]
    assert launch.main(base + ["--hyperparameters", str(bad), "--channel", "train=s3://b/t"]) == 2
    assert launch.main(base + ["--hyperparameters", str(hp_file), "--channel", "train=/data"]) == 2
    assert launch.main(base + ["--hyperparameters", str(hp_file), "--channel", "validation=s3://b/v"]) == 2
    assert launch.main(base + ["--channel", "train=s3://b/t"]) == 2, "no hyperparameters file"


def test_sagemaker_manifest_channel_arguments(hp_file: Path):
    launch = sagemaker_launch
    args = launch.build_parser().parse_args([
        "--image-uri", "i", "--role", "r", "--hyperparameters", str(hp_file), "--output-path", "s3://b/o",
        "--input-mode", "Pipe", "--channel", "train=s3://b/gt/out.manifest",
        "--attribute-names", "train=source-ref,dogs", "--distribution", "train=ShardedByS3Key"])
    spec = launch.launch_spec(args)
    assert launch.estimator_arguments(spec)["input_mode"] == "Pipe"
    assert launch.training_input_arguments(spec.channels[0], spec.input_mode) == {
        "s3_data": "s3://b/gt/out.manifest", "distribution": "ShardedByS3Key", "input_mode": "Pipe",
        "content_type": "application/x-recordio", "s3_data_type": "AugmentedManifestFile",
        "attribute_names": ["source-ref", "dogs"], "record_wrapping": "RecordIO"}
    missing = launch.build_parser().parse_args(["--image-uri", "i", "--role", "r", "--hyperparameters", str(hp_file),
                                                "--output-path", "s3://b/o", "--input-mode", "Pipe",
                                                "--channel", "train=s3://b/x.manifest"])
    with pytest.raises(ValueError, match="give --attribute-names train=source-ref,<label attribute>"):
        launch.launch_spec(missing)


def test_local_runner_lays_out_pipe_channels(tmp_path: Path):
    runner = local_run
    manifest = tmp_path / "train.manifest"
    manifest.write_text(json.dumps({"source-ref": "a.jpg", "gt": {"annotations": []}}) + "\n")
    validation = tmp_path / "validation"
    validation.mkdir()
    (validation / "v.rec").write_bytes(b"x")
    base = runner.lay_out(tmp_path / "out", {}, {"train": manifest, "validation": validation}, {}, "algo-1",
                          ["algo-1"], "Pipe", {"train": "ShardedByS3Key"})
    config = json.loads((base / "input/config/inputdataconfig.json").read_text())
    assert config["train"] == {"TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key",
                               "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}
    assert config["validation"]["RecordWrapperType"] == "None" and config["validation"]["TrainingInputMode"] == "Pipe"
    assert not (base / "input/data/validation").exists(), "Pipe channels are FIFOs made while the job runs"
    assert runner.label_attribute(manifest) == "gt"


def test_local_runner_lays_out_opt_ml_and_packs_like_sagemaker(tmp_path: Path):
    runner = local_run
    train = tmp_path / "train"
    train.mkdir()
    (train / "train.rec").write_bytes(b"x")
    base = runner.lay_out(tmp_path / "out", {"num_classes": 3}, {"train": train}, {}, "algo-2", ["algo-1", "algo-2"])
    config = base / "input/config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"num_classes": "3"}
    assert json.loads((config / "inputdataconfig.json").read_text())["train"]["ContentType"] == "application/x-recordio"
    assert json.loads((config / "resourceconfig.json").read_text())["current_host"] == "algo-2"
    assert (base / "input/data/train/train.rec").read_bytes() == b"x"
    (base / "model/sub").mkdir(parents=True)
    (base / "model/a.params").write_bytes(b"1")
    (base / "model/sub/b.json").write_bytes(b"2")
    runner.pack(base / "model", tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["a.params", "sub/b.json"]


def test_zoo_fetch_checks_the_sha1(tmp_path: Path):
    from mxnet.gluon.model_zoo import model_store

    assert all(model_store._model_sha1[name] == sha for name, sha in zoo_fetch.SHA1.items())
    repo = tmp_path / "repo"
    name = "mobilenet0.25"
    short = zoo_fetch.SHA1[name][:8]
    (repo / "gluon/models").mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}-{short}.params", b"not the weights")
    (repo / f"gluon/models/{name}-{short}.zip").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="SHA-1 mismatch"):
        zoo_fetch.fetch(name, tmp_path / "zoo", repo.as_uri() + "/")
    assert hashlib.sha1(b"not the weights").hexdigest() != zoo_fetch.SHA1[name]
    assert not (tmp_path / "zoo/models").exists()
