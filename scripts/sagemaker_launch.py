#!/usr/bin/env python
"""Trains with this image as a SageMaker training job, and optionally deploys the model to an
endpoint and sends it one image.

  sagemaker_launch.py --image-uri ACCOUNT.dkr.ecr.REGION.amazonaws.com/ssd-detector:gpu \\
      --role arn:aws:iam::ACCOUNT:role/SageMakerRole --instance-type ml.p3.2xlarge \\
      [--instance-count 2] --hyperparameters hp.json --channel train=s3://b/train \\
      --channel validation=s3://b/validation [--content-type train=application/x-recordio] \\
      --output-path s3://b/output [--checkpoint-s3-uri s3://b/ckpt] [--spot] \\
      [--deploy --endpoint-instance-type ml.m5.xlarge [--predict picture.jpg]]

  sagemaker_launch.py ... --input-mode Pipe --channel train=s3://b/train.manifest \\
      --attribute-names train=source-ref,my-labels --channel validation=s3://b/val.manifest \\
      --attribute-names validation=source-ref,my-labels ...
                                                (a Ground Truth augmented manifest, in Pipe mode)

  sagemaker_launch.py --image-uri ... --role ... --model-data s3://b/output/job/output/model.tar.gz \\
      --deploy [--predict picture.jpg]          (deploy a model trained before; no training)

  sagemaker_launch.py --image-uri ... --role ... --multi-model-prefix s3://b/models/ --deploy \\
      [--predict picture.jpg --target-model site-17.tar.gz]
                                                (a multi-model endpoint over every model.tar.gz
                                                 under the prefix; TargetModel picks one)

Works with the SageMaker Python SDK a user has installed (`pip install sagemaker`, not part of
the image): v3 (`ModelTrainer`; the model deployed through `sagemaker.core.resources`) or v2
(`Estimator`, `Model.deploy`, `MultiDataModel`). Needs AWS credentials. The metric definitions are the project's,
matching the log lines of `train`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# estimator_arguments and training_input_arguments are part of this script's API too.
from sagemaker_sdks import SdkV2, SdkV3, estimator_arguments, training_input_arguments
from script_helpers import parse_pairs

LOG = logging.getLogger("sagemaker_launch")


@dataclass(frozen=True)
class Channel:
    name: str
    s3_uri: str
    content_type: str | None = None
    distribution: str = "FullyReplicated"
    # An augmented manifest (Ground Truth): its AttributeNames, image first; streamed in Pipe mode
    # with each attribute wrapped as a RecordIO record.
    attribute_names: tuple[str, ...] = ()

    @property
    def is_manifest(self) -> bool:
        return bool(self.attribute_names)

    @property
    def s3_data_type(self) -> str:
        return "AugmentedManifestFile" if self.is_manifest else "S3Prefix"


@dataclass(frozen=True)
class LaunchSpec:
    """What the user asked for, checked before any call to AWS."""

    image_uri: str
    role: str
    instance_type: str
    instance_count: int
    volume_size: int
    max_run: int
    hyperparameters: dict[str, str]
    channels: tuple[Channel, ...]
    output_path: str | None
    checkpoint_s3_uri: str | None = None
    spot: bool = False
    network_isolation: bool = False
    base_job_name: str = "ssd-detector"
    model_data: str | None = None  # deploy this instead of training
    multi_model_prefix: str | None = None  # deploy a multi-model endpoint over this S3 prefix instead
    target_model: str | None = None  # the multi-model endpoint's model a prediction goes to
    deploy: bool = False
    endpoint_instance_type: str = "ml.m5.xlarge"
    predict: Path | None = None
    logs: bool = True
    input_mode: str = "File"
    metric_definitions: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def max_wait(self) -> int | None:
        return self.max_run * 2 if self.spot else None


def _s3(uri: str | None, what: str) -> None:
    if uri is not None and not uri.startswith("s3://"):
        raise ValueError(f"{what} {uri!r} must be an s3:// URI")


def launch_spec(args: argparse.Namespace) -> LaunchSpec:
    """The parsed command line, checked: every problem is a ValueError naming the bad value."""
    from ssd_detector.config import parse_hyperparameters
    from ssd_detector.training.metrics import METRIC_DEFINITIONS

    if args.instance_count < 1:
        raise ValueError(f"--instance-count {args.instance_count} must be >= 1")
    for option, value in (("--instance-type", args.instance_type),
                          ("--endpoint-instance-type", args.endpoint_instance_type)):
        if not value.startswith("ml."):
            raise ValueError(f"{option} {value!r} must be a SageMaker type such as ml.p3.2xlarge")
    if args.predict and not args.deploy:
        raise ValueError("--predict needs --deploy (the image is sent to the new endpoint)")
    if args.predict and not Path(args.predict).is_file():
        raise ValueError(f"--predict {args.predict!r} is not a file")
    if args.target_model and not args.multi_model_prefix:
        raise ValueError("--target-model picks a model of a multi-model endpoint: add --multi-model-prefix")
    common = dict(image_uri=args.image_uri, role=args.role, instance_type=args.instance_type,
                  instance_count=args.instance_count, volume_size=args.volume_size, max_run=args.max_run,
                  base_job_name=args.base_job_name, deploy=args.deploy,
                  endpoint_instance_type=args.endpoint_instance_type,
                  predict=Path(args.predict) if args.predict else None, logs=not args.no_logs)
    if args.multi_model_prefix:
        _s3(args.multi_model_prefix, "--multi-model-prefix")
        if args.model_data or args.hyperparameters:
            raise ValueError("--multi-model-prefix deploys the models under it: no --model-data or --hyperparameters")
        if not args.deploy:
            raise ValueError("--multi-model-prefix deploys a multi-model endpoint: add --deploy")
        if args.predict and not args.target_model:
            raise ValueError("--predict on a multi-model endpoint needs --target-model NAME.tar.gz (under the prefix)")
        if args.target_model and (args.target_model.startswith("/") or ".." in args.target_model):
            raise ValueError(f"--target-model {args.target_model!r} must be a path relative to the prefix")
        return LaunchSpec(**common, hyperparameters={}, channels=(), output_path=None,
                          multi_model_prefix=args.multi_model_prefix, target_model=args.target_model)
    if args.model_data:
        _s3(args.model_data, "--model-data")
        if not args.deploy:
            raise ValueError("--model-data deploys a trained model: add --deploy")
        return LaunchSpec(**common, hyperparameters={}, channels=(), output_path=None, model_data=args.model_data)
    if not args.hyperparameters:
        raise ValueError("--hyperparameters FILE is required to train (or give --model-data to deploy only)")
    if not args.output_path:
        raise ValueError("--output-path s3://... is required to train")
    _s3(args.output_path, "--output-path")
    _s3(args.checkpoint_s3_uri, "--checkpoint-s3-uri")
    try:
        hyperparameters = json.loads(Path(args.hyperparameters).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--hyperparameters {args.hyperparameters!r}: {exc}") from None
    if not isinstance(hyperparameters, dict):
        raise ValueError(f"--hyperparameters {args.hyperparameters!r} must hold a JSON object of name -> value")
    parse_hyperparameters(hyperparameters)  # the job would fail the same way; fail here first
    return LaunchSpec(
        **common,
        # SageMaker takes strings; other values are written as JSON, as SDK v3 does (the container reads both).
        hyperparameters={k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()},
        channels=channels(args), input_mode=args.input_mode, output_path=args.output_path, checkpoint_s3_uri=args.checkpoint_s3_uri,
        spot=args.spot, network_isolation=args.network_isolation,
        metric_definitions=tuple(dict(d) for d in METRIC_DEFINITIONS))


def channels(args: argparse.Namespace) -> tuple[Channel, ...]:
    uris = parse_pairs(args.channel, "channel")
    if "train" not in uris:
        raise ValueError("--channel train=s3://... is required")
    content_types = parse_pairs(args.content_type, "content-type")
    distributions = parse_pairs(args.distribution, "distribution")
    attributes = {k: tuple(v.split(",")) for k, v in parse_pairs(args.attribute_names, "attribute-names").items()}
    for option, given in (("--content-type", content_types), ("--distribution", distributions),
                          ("--attribute-names", attributes)):
        unknown = set(given) - set(uris)
        if unknown:
            raise ValueError(f"{option} for channels that are not given: {', '.join(sorted(unknown))}")
    for name, uri in uris.items():
        _s3(uri, f"--channel {name}=")
        if distributions.get(name, "FullyReplicated") not in ("FullyReplicated", "ShardedByS3Key"):
            raise ValueError(f"--distribution {name}={distributions[name]}: FullyReplicated or ShardedByS3Key")
        if uri.endswith(".manifest") and name not in attributes:
            raise ValueError(f"--channel {name}={uri} looks like an augmented manifest: give --attribute-names "
                             f"{name}=source-ref,<label attribute>")
    for name, names in attributes.items():
        if len(names) < 2 or names[0] != "source-ref":
            raise ValueError(f"--attribute-names {name}={','.join(names)}: the image (source-ref) first, then the "
                             "label attribute")
        if args.input_mode != "Pipe":
            raise ValueError(f"channel {name} is an augmented manifest: it trains in Pipe mode (--input-mode Pipe)")
    return tuple(Channel(name, uri, content_types.get(name) or ("application/x-recordio" if name in attributes
                                                                 else None),
                         distributions.get(name, "FullyReplicated"), attributes.get(name, ()))
                 for name, uri in uris.items())


def sdk_major() -> int:
    try:
        version = importlib.metadata.version("sagemaker")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the SageMaker Python SDK is not installed: pip install sagemaker") from None
    return int(version.split(".")[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-uri", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    p.add_argument("--instance-type", default="ml.p3.2xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--volume-size", type=int, default=50)
    p.add_argument("--max-run", type=int, default=24 * 3600)
    p.add_argument("--hyperparameters", help="JSON file of name -> value")
    p.add_argument("--channel", action="append", default=[], help="NAME=s3://bucket/prefix")
    p.add_argument("--content-type", action="append", default=[], help="NAME=TYPE")
    p.add_argument("--input-mode", choices=("File", "Pipe"), default="File",
                   help="Pipe: channels stream into the container (needed for augmented manifests)")
    p.add_argument("--attribute-names", action="append", default=[],
                   help="NAME=source-ref,LABEL: the channel is a Ground Truth augmented manifest (s3://.../x.manifest)")
    p.add_argument("--distribution", action="append", default=[],
                   help="NAME=FullyReplicated|ShardedByS3Key (default FullyReplicated)")
    p.add_argument("--output-path")
    p.add_argument("--base-job-name", default=LaunchSpec.base_job_name)
    p.add_argument("--checkpoint-s3-uri")
    p.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    p.add_argument("--network-isolation", action="store_true")
    p.add_argument("--no-logs", action="store_true", help="do not stream the job's logs while waiting")
    p.add_argument("--model-data", help="s3://.../model.tar.gz: deploy this model instead of training")
    p.add_argument("--deploy", action="store_true", help="deploy the model to an endpoint")
    p.add_argument("--multi-model-prefix",
                   help="s3://.../models/: deploy a multi-model endpoint over the model.tar.gz files under it")
    p.add_argument("--target-model", help="with --predict on a multi-model endpoint: the model, relative to the "
                                          "prefix (e.g. site-17.tar.gz)")
    p.add_argument("--endpoint-instance-type", default="ml.m5.xlarge")
    p.add_argument("--predict", help="a JPEG to send to the new endpoint; its detections are printed")
    return p


def run(spec: LaunchSpec, sdk: SdkV3 | SdkV2) -> dict[str, Any]:
    """Train (unless given a model), deploy and predict as asked; -> what was made."""
    made: dict[str, Any] = {}
    made["model_data"] = spec.multi_model_prefix or spec.model_data or sdk.train(spec)
    LOG.info("model: %s", made["model_data"])
    if spec.deploy:
        made["endpoint"] = sdk.deploy(spec, made["model_data"])
        LOG.info("endpoint: %s", made["endpoint"])
    if spec.predict:
        made["prediction"] = sdk.predict(made["endpoint"], spec.predict.read_bytes(), spec.target_model)
    return made


def main(argv: list[str] | None = None, boto_session: Any = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ssd_detector.errors import UserError

    try:
        spec = launch_spec(args)
        major = sdk_major()
    except (ValueError, UserError, RuntimeError) as exc:
        LOG.error("%s", exc)
        return 2
    if boto_session is None:
        import boto3

        boto_session = boto3.Session(region_name=args.region)
    if major >= 3:
        sdk: SdkV3 | SdkV2 = SdkV3(boto_session)
    elif major == 2:
        sdk = SdkV2(boto_session)
    else:
        LOG.error("SageMaker Python SDK %s is too old: install 2.x or 3.x", importlib.metadata.version("sagemaker"))
        return 2
    LOG.info("SageMaker Python SDK %s", importlib.metadata.version("sagemaker"))
    made = run(spec, sdk)
    if major == 2:
        print()  # v2 leaves its progress dots without a newline
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
