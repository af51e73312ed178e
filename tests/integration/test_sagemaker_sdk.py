"""scripts/sagemaker_launch.py driven through the real SageMaker Python SDK, v3 and v2, each in its
own virtualenv (`make sdk-venvs`), against botocore Stubbers: the requests the SDK sends for
training, hosting and one prediction, checked field by field and compared across the two majors.
No request leaves the machine (tests/sdk/stubbed_launch.py)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from ssd_detector.training.metrics import METRIC_DEFINITIONS

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests/sdk/stubbed_launch.py"
VENVS = {3: ROOT / ".venv-sdk3", 2: ROOT / ".venv-sdk2"}
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ssd-detector:gpu"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:"
T = "2026-11-26T10:00:00Z"
JOB = "ssd-detector-job"
MODEL_DATA = f"s3://b/out/{JOB}/output/model.tar.gz"
PREDICTION = {"prediction": [[0, 0.9, 0.1, 0.1, 0.5, 0.5]]}
JPEG = b"\xff\xd8\xff\xe0 a picture"

RESPONSES = {
    "SimulatePrincipalPolicy": {"EvaluationResults": [{"EvalActionName": "ecr:GetAuthorizationToken",
                                                       "EvalDecision": "allowed"}]},
    "GetRole": {"Role": {"Path": "/", "RoleName": "SageMakerRole", "RoleId": "AROAEXAMPLEEXAMPLE01", "Arn": ROLE,
                         "CreateDate": T}},
    "CreateTrainingJob": {"TrainingJobArn": f"{ARN}training-job/{JOB}"},
    "DescribeTrainingJob": {
        "TrainingJobName": JOB, "TrainingJobArn": f"{ARN}training-job/{JOB}",
        "ModelArtifacts": {"S3ModelArtifacts": MODEL_DATA}, "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed", "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
        "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400}, "CreationTime": T, "TrainingStartTime": T,
        "TrainingEndTime": T, "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": "s3://b/out"}},
    "CreateModel": {"ModelArn": f"{ARN}model/m"},
    "DescribeModel": {"ModelName": "m", "ModelArn": f"{ARN}model/m", "CreationTime": T, "ExecutionRoleArn": ROLE},
    "CreateEndpointConfig": {"EndpointConfigArn": f"{ARN}endpoint-config/m"},
    "DescribeEndpointConfig": {
        "EndpointConfigName": "m", "EndpointConfigArn": f"{ARN}endpoint-config/m", "CreationTime": T,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1,
                                "InstanceType": "ml.m5.xlarge"}]},
    "CreateEndpoint": {"EndpointArn": f"{ARN}endpoint/m"},
    "DescribeEndpoint": {"EndpointName": "m", "EndpointArn": f"{ARN}endpoint/m", "EndpointConfigName": "m",
                         "EndpointStatus": "InService", "CreationTime": T, "LastModifiedTime": T},
    "InvokeEndpoint": {"Body": json.dumps(PREDICTION), "ContentType": "application/json"},
}
# The order in which each SDK calls each service (what the pinned versions do).
TRAIN_PLANS = {
    3: {"iam": ["SimulatePrincipalPolicy", "GetRole"],
        "sagemaker": ["CreateTrainingJob"] + ["DescribeTrainingJob"] * 3},
    2: {"sagemaker": ["CreateTrainingJob"] + ["DescribeTrainingJob"] * 2},
}
HOST_PLANS = {
    3: {"sagemaker": ["CreateModel", "DescribeModel", "CreateEndpointConfig", "DescribeEndpointConfig",
                      "CreateEndpoint"] + ["DescribeEndpoint"] * 3,
        "sagemaker-runtime": ["InvokeEndpoint"]},
    2: {"sagemaker": ["CreateModel", "CreateEndpointConfig", "CreateEndpoint", "DescribeEndpoint"],
        "runtime.sagemaker": ["InvokeEndpoint"]},
}
HYPERPARAMETERS = {"num_classes": 3, "base_network": "mobilenet-0.25", "use_pretrained_model": False,
                   "lr_scheduler_step": [10, 20], "mini_batch_size": "16"}
# What every SDK must send for them: strings the container parses back to the same values.
SENT_HYPERPARAMETERS = {"num_classes": "3", "base_network": "mobilenet-0.25", "use_pretrained_model": "false",
                        "lr_scheduler_step": "[10, 20]", "mini_batch_size": "16"}


def sdk_python(major: int) -> Path:
    python = VENVS[major] / "bin/python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing: `make test` makes it (make sdk-venvs)")
        pytest.skip(f"SDK v{major} virtualenv missing: make sdk-venvs")
    return python


def run_launch(major: int, tmp_path: Path, argv: list[str], plans: list[dict]) -> dict:
    responses: dict[str, list] = {}
    for plan in plans:
        for service, operations in plan.get(major, {}).items():
            responses.setdefault(service, []).extend([op, RESPONSES[op]] for op in operations)
    plan_file = tmp_path / f"plan-v{major}.json"
    plan_file.write_text(json.dumps({"argv": argv, "responses": responses}))
    # The launch script and the package it reads hyperparameters with, as a checkout offers them.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT / "src")])}
    result = subprocess.run([str(sdk_python(major)), str(DRIVER), str(plan_file)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["rc"] == 0 and out["error"] is None, (out["error"] or "") + result.stderr[-2000:]
    assert out["sdk"].split(".")[0] == str(major)
    return out


def printed(out: dict) -> dict:
    """The launch script's JSON line (v2 also prints its own progress to stdout)."""
    return json.loads(out["stdout"].strip().splitlines()[-1])


def calls_of(out: dict, operation: str) -> list[dict]:
    return [params for _, op, params in out["calls"] if op == operation]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launch")
    (root / "hp.json").write_text(json.dumps(HYPERPARAMETERS))
    (root / "picture.jpg").write_bytes(JPEG)
    return {"hp": root / "hp.json", "picture": root / "picture.jpg"}


def full_argv(inputs: dict[str, Path]) -> list[str]:
    return ["--image-uri", IMAGE, "--role", ROLE, "--instance-type", "ml.p3.2xlarge", "--instance-count", "2",
            "--hyperparameters", str(inputs["hp"]), "--channel", "train=s3://b/train",
            "--channel", "validation=s3://b/validation", "--content-type", "train=application/x-recordio",
            "--output-path", "s3://b/out", "--checkpoint-s3-uri", "s3://b/ckpt", "--spot", "--no-logs",
            "--deploy", "--endpoint-instance-type", "ml.m5.xlarge", "--predict", str(inputs["picture"])]


@pytest.fixture(scope="module")
def launched(inputs, tmp_path_factory) -> dict[int, dict]:
    tmp = tmp_path_factory.mktemp("sdk")
    return {major: run_launch(major, tmp, full_argv(inputs), [TRAIN_PLANS, HOST_PLANS]) for major in (3, 2)}


@pytest.mark.parametrize("major", [3, 2])
def test_create_training_job(launched: dict[int, dict], major: int):
    [job] = calls_of(launched[major], "CreateTrainingJob")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["AlgorithmSpecification"]["MetricDefinitions"] == [dict(d) for d in METRIC_DEFINITIONS]
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == SENT_HYPERPARAMETERS
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/train"
    assert channels["train"]["ContentType"] == "application/x-recordio"
    assert "ContentType" not in channels["validation"]
    for channel in channels.values():
        assert channel["InputMode"] == "File"
        assert channel["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"
    assert job["ResourceConfig"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"] == {"S3Uri": "s3://b/ckpt", "LocalPath": "/opt/ml/checkpoints"}
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://b/out"
    assert job["TrainingJobName"].startswith("ssd-detector")
    assert "DebugHookConfig" not in job, "no smdebug in the image"


@pytest.mark.parametrize("major", [3, 2])
def test_hosting_and_prediction(launched: dict[int, dict], major: int):
    out = launched[major]
    [model] = calls_of(out, "CreateModel")
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA, "the trained job's model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE
    [config] = calls_of(out, "CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        model["ModelName"], "ml.m5.xlarge", 1)
    [endpoint] = calls_of(out, "CreateEndpoint")
    assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]
    [invoke] = calls_of(out, "InvokeEndpoint")
    assert base64.b64decode(invoke["Body"]["base64"]) == JPEG
    assert (invoke["ContentType"], invoke["Accept"]) == ("image/jpeg", "application/json")
    made = printed(out)
    assert made["model_data"] == MODEL_DATA and made["prediction"] == PREDICTION


def test_both_majors_send_the_same_job(launched: dict[int, dict]):
    def essentials(out: dict) -> dict:
        [job] = calls_of(out, "CreateTrainingJob")
        [model] = calls_of(out, "CreateModel")
        [config] = calls_of(out, "CreateEndpointConfig")
        variant = {k: v for k, v in config["ProductionVariants"][0].items() if k != "ModelName"}
        variant.pop("InitialVariantWeight", None)  # v2 states the default weight of 1
        return {
            "job": {k: job[k] for k in ("AlgorithmSpecification", "RoleArn", "HyperParameters", "ResourceConfig",
                                        "StoppingCondition", "EnableManagedSpotTraining", "CheckpointConfig")},
            "channels": sorted(json.dumps(c, sort_keys=True) for c in job["InputDataConfig"]),
            "output": job["OutputDataConfig"]["S3OutputPath"],
            "model": {k: v for k, v in model["PrimaryContainer"].items() if v != {}},
            "variant": variant,
        }
    assert essentials(launched[3]) == essentials(launched[2])


@pytest.mark.parametrize("major", [3, 2])
def test_deploy_a_trained_model_without_training(inputs, tmp_path: Path, major: int):
    argv = ["--image-uri", IMAGE, "--role", ROLE, "--model-data", "s3://b/old/model.tar.gz", "--deploy",
            "--predict", str(inputs["picture"])]
    out = run_launch(major, tmp_path, argv, [HOST_PLANS])
    assert not calls_of(out, "CreateTrainingJob")
    [model] = calls_of(out, "CreateModel")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://b/old/model.tar.gz"
    assert printed(out)["prediction"] == PREDICTION


@pytest.fixture(scope="module")
def manifest_jobs(inputs, tmp_path_factory) -> dict[int, dict]:
    """A Ground Truth manifest job in Pipe mode, train sharded across the hosts."""
    tmp = tmp_path_factory.mktemp("sdk-manifest")
    argv = ["--image-uri", IMAGE, "--role", ROLE, "--instance-type", "ml.p3.2xlarge", "--instance-count", "2",
            "--hyperparameters", str(inputs["hp"]), "--input-mode", "Pipe",
            "--channel", "train=s3://b/gt/train.manifest", "--attribute-names", "train=source-ref,dogs",
            "--distribution", "train=ShardedByS3Key",
            "--channel", "validation=s3://b/gt/validation.manifest",
            "--attribute-names", "validation=source-ref,dogs", "--output-path", "s3://b/out", "--no-logs"]
    return {major: calls_of(run_launch(major, tmp, argv, [TRAIN_PLANS]), "CreateTrainingJob")[0]
            for major in (3, 2)}


@pytest.mark.parametrize("major", [3, 2])
def test_manifest_job_in_pipe_mode(manifest_jobs: dict[int, dict], major: int):
    job = manifest_jobs[major]
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "Pipe"
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    for name, distribution in (("train", "ShardedByS3Key"), ("validation", "FullyReplicated")):
        channel = channels[name]
        assert channel["InputMode"] == "Pipe"
        assert channel["RecordWrapperType"] == "RecordIO"
        assert channel["ContentType"] == "application/x-recordio"
        assert channel["DataSource"]["S3DataSource"] == {
            "S3DataType": "AugmentedManifestFile", "S3Uri": f"s3://b/gt/{name}.manifest",
            "S3DataDistributionType": distribution, "AttributeNames": ["source-ref", "dogs"]}
    assert sorted(json.dumps(c, sort_keys=True) for c in manifest_jobs[3]["InputDataConfig"]) == \
        sorted(json.dumps(c, sort_keys=True) for c in manifest_jobs[2]["InputDataConfig"])


@pytest.mark.parametrize("major", [3, 2])
def test_deploy_a_multi_model_endpoint(inputs, tmp_path: Path, major: int):
    """MultiDataModel (v2) and the v3 equivalent: the model in MultiModel mode over the S3 prefix,
    and a prediction sent to one model by TargetModel."""
    argv = ["--image-uri", IMAGE, "--role", ROLE, "--multi-model-prefix", "s3://b/models/", "--deploy",
            "--endpoint-instance-type", "ml.c5.xlarge", "--predict", str(inputs["picture"]),
            "--target-model", "site-17.tar.gz"]
    out = run_launch(major, tmp_path, argv, [HOST_PLANS])
    assert not calls_of(out, "CreateTrainingJob")
    [model] = calls_of(out, "CreateModel")
    container = model["PrimaryContainer"]
    assert (container["Image"], container["Mode"], container["ModelDataUrl"]) == (IMAGE, "MultiModel",
                                                                                   "s3://b/models/")
    [config] = calls_of(out, "CreateEndpointConfig")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.c5.xlarge"
    [invoke] = calls_of(out, "InvokeEndpoint")
    assert invoke["TargetModel"] == "site-17.tar.gz" and base64.b64decode(invoke["Body"]["base64"]) == JPEG
    assert printed(out) == {"model_data": "s3://b/models/", "endpoint": printed(out)["endpoint"],
                            "prediction": PREDICTION}
