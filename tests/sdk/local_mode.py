"""Drives the image with the real SageMaker Python SDK's local mode, as a user would; run with the
interpreter of an SDK virtualenv (`make sdk-venvs`). Prints one JSON object on its last line.

  local_mode.py v3-train    --image I --data DIR --instances N --root DIR --hyperparameters JSON
  local_mode.py v2-train    --image I --data DIR --instances N --root DIR --hyperparameters JSON
  local_mode.py v2-deploy   --image I --model-data FILE --picture JPEG
  local_mode.py v2-transform --image I --model-data FILE --input DIR --root DIR

Local mode needs no AWS account: the credentials are fake, and anything the SDK would send over
the network goes to a closed local port instead (offline.py).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from offline import REGION, offline_environment

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def channels(data: Path) -> dict[str, Path]:
    return {name: data / name for name in ("train", "validation") if (data / name).is_dir()}


def compose_down(compose_file: Path) -> None:
    """Removes the containers a local-mode run leaves behind (stopped, but they keep their names,
    and a later run of the same project would be asked to recreate them)."""
    command = (["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"])
    if compose_file.is_file():
        subprocess.run([*command, "-f", str(compose_file), "down", "--remove-orphans"], capture_output=True,
                       timeout=300)


def v3_train(args: argparse.Namespace) -> dict:
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    # v3 names the compose project after this folder: one of its own per run.
    root = args.root / f"ssd-local-{uuid.uuid4().hex[:10]}"
    root.mkdir(parents=True)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER, training_image=args.image, role=ROLE,
        compute=Compute(instance_type="local_cpu", instance_count=args.instances),
        hyperparameters=json.loads(args.hyperparameters), local_container_root=str(root),
        base_job_name="ssd-local")
    try:
        trainer.train(input_data_config=[InputData(channel_name=name, data_source=str(path))
                                         for name, path in channels(args.data).items()])
    finally:
        compose_down(root / "docker-compose.yaml")
    return {"model_tar": str(root / "compressed_artifacts/model.tar.gz")}


def v2_session():  # sagemaker.local.LocalSession
    import boto3
    from sagemaker.local import LocalSession

    return LocalSession(boto_session=boto3.Session(region_name=REGION))


def v2_train(args: argparse.Namespace) -> dict:
    from sagemaker.estimator import Estimator

    estimator = Estimator(image_uri=args.image, role=ROLE, instance_count=args.instances, instance_type="local",
                          hyperparameters=json.loads(args.hyperparameters), sagemaker_session=v2_session(),
                          output_path=f"file://{args.root}", base_job_name="ssd-local",
                          debugger_hook_config=False, disable_profiler=True)
    estimator.fit({name: f"file://{path}" for name, path in channels(args.data).items()})
    return {"model_data": estimator.model_data}


def v2_deploy(args: argparse.Namespace) -> dict:
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    model = Model(image_uri=args.image, model_data=f"file://{args.model_data}", role=ROLE,
                  sagemaker_session=v2_session(), predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local")
    try:
        # No serializer chosen: the SDK sends application/octet-stream and returns bytes.
        answer = predictor.predict(args.picture.read_bytes())
    finally:
        predictor.delete_endpoint()
    return {"content_type": predictor.content_type, "answer": json.loads(answer)}


def v2_transform(args: argparse.Namespace) -> dict:
    from sagemaker.model import Model

    model = Model(image_uri=args.image, model_data=f"file://{args.model_data}", role=ROLE,
                  sagemaker_session=v2_session())
    transformer = model.transformer(instance_count=1, instance_type="local", accept="application/json",
                                    output_path=f"file://{args.root}/transform-out")
    # logs=False: with logs the SDK asks CloudWatch for the job's log stream, which a local job has not.
    transformer.transform(f"file://{args.input}", content_type="image/jpeg", split_type=None, wait=True, logs=False)
    out = args.root / "transform-out"
    return {"outputs": {p.name: json.loads(p.read_text()) for p in sorted(out.iterdir())}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=("v3-train", "v2-train", "v2-deploy", "v2-transform"))
    parser.add_argument("--image", required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--hyperparameters", default="{}")
    parser.add_argument("--model-data", type=Path)
    parser.add_argument("--picture", type=Path)
    parser.add_argument("--input", type=Path)
    args = parser.parse_args()
    offline_environment()
    actions = {"v3-train": v3_train, "v2-train": v2_train, "v2-deploy": v2_deploy, "v2-transform": v2_transform}
    result = actions[args.action](args)
    sys.stdout.flush()
    print("\n" + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
