#!/usr/bin/env python
"""Launches a real SageMaker training job with this image, and optionally deploys the model.

  sagemaker_launch.py --image-uri ACCOUNT.dkr.ecr.REGION.amazonaws.com/ssd-detector:gpu \
      --role arn:aws:iam::ACCOUNT:role/SageMakerRole --instance-type ml.p3.2xlarge \
      [--instance-count 2] --hyperparameters hp.json --channel train=s3://b/train \
      --channel validation=s3://b/validation [--content-type train=application/x-recordio] \
      --output-path s3://b/output [--checkpoint-s3-uri s3://b/ckpt] [--spot] \
      [--deploy --endpoint-instance-type ml.m5.xlarge]

Needs the SageMaker Python SDK (`pip install sagemaker`, not part of the image) and AWS
credentials. The metric definitions are the project's, matching the log lines of `train`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

LOG = logging.getLogger("sagemaker_launch")


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise ValueError(f"--{what} {value!r}: expected NAME=VALUE")
        pairs[key] = rest
    return pairs


def estimator_arguments(args: argparse.Namespace) -> dict:
    """Keyword arguments of sagemaker.estimator.Estimator, checked."""
    from ssd_detector.config import parse_hyperparameters
    from ssd_detector.training.metrics import METRIC_DEFINITIONS

    if args.instance_count < 1:
        raise ValueError(f"--instance-count {args.instance_count} must be >= 1")
    if not args.output_path.startswith("s3://"):
        raise ValueError(f"--output-path {args.output_path!r} must be an s3:// URI")
    if not args.instance_type.startswith("ml."):
        raise ValueError(f"--instance-type {args.instance_type!r} must be a SageMaker type such as ml.p3.2xlarge")
    hyperparameters = json.loads(Path(args.hyperparameters).read_text())
    parse_hyperparameters(hyperparameters)  # the job would fail the same way; fail here first
    kwargs = {
        "image_uri": args.image_uri,
        "role": args.role,
        "instance_count": args.instance_count,
        "instance_type": args.instance_type,
        "volume_size": args.volume_size,
        "max_run": args.max_run,
        "input_mode": "File",
        "output_path": args.output_path,
        "hyperparameters": {k: str(v) for k, v in hyperparameters.items()},
        "metric_definitions": [dict(d) for d in METRIC_DEFINITIONS],
        "enable_network_isolation": args.network_isolation,
    }
    if args.checkpoint_s3_uri:
        kwargs["checkpoint_s3_uri"] = args.checkpoint_s3_uri
    if args.spot:
        kwargs.update(use_spot_instances=True, max_wait=args.max_run * 2)
    return kwargs


def channel_arguments(args: argparse.Namespace) -> dict[str, dict]:
    """name -> keyword arguments of sagemaker.inputs.TrainingInput."""
    channels = parse_pairs(args.channel, "channel")
    if "train" not in channels:
        raise ValueError("--channel train=s3://... is required")
    content_types = parse_pairs(args.content_type, "content-type")
    out = {}
    for name, uri in channels.items():
        if not uri.startswith("s3://"):
            raise ValueError(f"--channel {name}={uri!r} must be an s3:// URI")
        out[name] = {"s3_data": uri, "distribution": "FullyReplicated", "input_mode": "File"}
        if name in content_types:
            out[name]["content_type"] = content_types[name]
    unknown = set(content_types) - set(channels)
    if unknown:
        raise ValueError(f"--content-type for channels that are not given: {', '.join(sorted(unknown))}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-uri", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--instance-type", default="ml.p3.2xlarge")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--volume-size", type=int, default=50)
    p.add_argument("--max-run", type=int, default=24 * 3600)
    p.add_argument("--hyperparameters", required=True, help="JSON file of name -> value")
    p.add_argument("--channel", action="append", default=[], help="NAME=s3://bucket/prefix")
    p.add_argument("--content-type", action="append", default=[], help="NAME=TYPE")
    p.add_argument("--output-path", required=True)
    p.add_argument("--checkpoint-s3-uri")
    p.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    p.add_argument("--network-isolation", action="store_true")
    p.add_argument("--deploy", action="store_true", help="deploy the trained model to an endpoint")
    p.add_argument("--endpoint-instance-type", default="ml.m5.xlarge")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ssd_detector.errors import UserError

    try:
        kwargs = estimator_arguments(args)
        channels = channel_arguments(args)
    except (ValueError, UserError) as exc:
        LOG.error("%s", exc)
        return 2
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput

    estimator = Estimator(**kwargs)
    estimator.fit({name: TrainingInput(**c) for name, c in channels.items()})
    LOG.info("model: %s", estimator.model_data)
    if args.deploy:
        predictor = estimator.deploy(initial_instance_count=1, instance_type=args.endpoint_instance_type)
        LOG.info("endpoint: %s", predictor.endpoint_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
