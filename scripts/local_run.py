#!/usr/bin/env python
"""Runs the image as SageMaker would, on this machine.

  local_run.py train --image IMG --hyperparameters hp.json --channel train=DIR|s3://... \
      [--channel validation=...] [--content-type train=application/x-recordio] \
      [--instance-count N] --output OUT
    lays out OUT/algo-<i>/ as /opt/ml (config files, channels), runs `IMG train` in one container
    per instance (a user-defined Docker network, containers named algo-1..N, as SageMaker names
    hosts), then packs OUT/model.tar.gz from algo-1's model/ and OUT/output.tar.gz from its
    output/data, as SageMaker does, and unpacks the training report (output/data/report) into
    OUT/report; a failure file is copied to OUT/failure. Exit code: the job's.

  local_run.py train ... --input-mode Pipe [--channel train=FILE.manifest --attribute-names
      train=source-ref,LABEL] [--distribution train=ShardedByS3Key]
    plays SageMaker's Pipe mode: each channel is written into FIFOs <channel>_0, _1, ... (one per
    pass the algorithm reads), RecordIO channels as their .rec files, an augmented manifest
    (a .manifest file; its source-refs local paths or s3://) as RecordIO records per attribute.

  local_run.py serve --image IMG --model OUT/model.tar.gz [--port 8080]
    serves that model.tar.gz with `IMG serve` on a local port until interrupted.

s3:// channels are downloaded with boto3 (the machine's AWS credentials). Needs Docker.

Standard library only (boto3 only for s3://): it runs where only Docker and Python are installed,
without this project's package. So it lays out /opt/ml itself (``lay_out``, the tree
``ssd_detector.sagemaker_env.write_job`` writes) and finds manifests itself; tests check both
against the package's, so they cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

from script_helpers import parse_pairs

LOG = logging.getLogger("local_run")
DEFAULT_CONTENT_TYPES = {".rec": "application/x-recordio", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                         ".png": "image/png", ".json": "application/json"}



def fetch_s3(uri: str, target: Path) -> None:
    import boto3

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            relative = key[len(prefix):].lstrip("/") or Path(key).name
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(destination))


def guess_content_type(folder: Path) -> str | None:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in DEFAULT_CONTENT_TYPES:
            return DEFAULT_CONTENT_TYPES[path.suffix.lower()]
    return None


MANIFEST_SUFFIXES = (".manifest", ".jsonl", ".jsonlines")  # ssd_detector.data.manifest's


def is_manifest(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES


def lay_out(root: Path, hyperparameters: dict, channels: dict[str, Path], content_types: dict[str, str],
            host: str, hosts: list[str], input_mode: str = "File", distributions: dict[str, str] | None = None) -> Path:
    """One host's /opt/ml tree under root, as SageMaker writes it before `train` starts (in Pipe
    mode the train/validation channels are FIFOs, made while the job runs)."""
    base = root / host
    config = base / "input/config"
    config.mkdir(parents=True)
    (base / "input/data").mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    data_config = {}
    for name, source in channels.items():
        entry = {"TrainingInputMode": "File", "S3DistributionType": (distributions or {}).get(name, "FullyReplicated"),
                 "RecordWrapperType": "None"}
        if is_piped(name, source, input_mode):
            entry["TrainingInputMode"] = "Pipe"
            entry["ContentType"] = "application/x-recordio"
            if is_manifest(source):
                entry["RecordWrapperType"] = "RecordIO"
        else:
            shutil.copytree(source, base / "input/data" / name)
            content_type = content_types.get(name) or guess_content_type(source)
            if content_type:
                entry["ContentType"] = content_type
        data_config[name] = entry
    (config / "inputdataconfig.json").write_text(json.dumps(data_config))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": hosts, "network_interface_name": "eth0"}))
    for sub in ("model", "output/data", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


def is_piped(name: str, source: Path, input_mode: str) -> bool:
    """Pipe mode applies to train and validation (annotation and model channels are files)."""
    return input_mode == "Pipe" and name in ("train", "validation")


def label_attribute(manifest: Path) -> str:
    """The attribute of the first line that holds bounding boxes (what AttributeNames names after
    source-ref)."""
    first = json.loads(next(line for line in manifest.read_text().splitlines() if line.strip()))
    found = [k for k, v in first.items() if isinstance(v, dict) and "annotations" in v]
    if len(found) != 1:
        raise SystemExit(f"{manifest}: give --attribute-names (label attributes found: {found or 'none'})")
    return found[0]


def start_feeders(base: Path, channels: dict[str, Path], attribute_names: dict[str, list[str]],
                  distributions: dict[str, str], host_index: int, host_count: int) -> list:
    import pipe_feed  # beside this file (the first entry of sys.path when run as a script)

    feeders = []
    for name, source in channels.items():
        distribution = distributions.get(name, "FullyReplicated")
        if is_manifest(source):
            names = attribute_names.get(name) or ["source-ref", label_attribute(source)]
            one_pass = pipe_feed.manifest_pass(source, names, host_index, host_count, distribution)
        else:
            one_pass = pipe_feed.recordio_pass(source, host_index, host_count, distribution)
        feeders.append(pipe_feed.PipeFeeder(base / "input/data", name, one_pass).start())
    return feeders


def pack(folder: Path, archive: Path) -> None:
    """Every file under folder, at the archive's root (SageMaker's model.tar.gz layout)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))


def train(args: argparse.Namespace) -> int:
    out = args.output.resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--output {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    hyperparameters = json.loads(args.hyperparameters.read_text())
    try:
        sources = parse_pairs(args.channel, "channel")
        content_types = parse_pairs(args.content_type, "content-type")
        distributions = parse_pairs(args.distribution, "distribution")
        attribute_names = {k: v.split(",") for k, v in parse_pairs(args.attribute_names, "attribute-names").items()}
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    for name, value in distributions.items():
        if value not in ("FullyReplicated", "ShardedByS3Key"):
            raise SystemExit(f"--distribution {name}={value}: FullyReplicated or ShardedByS3Key")
    channels = {}
    for name, source in sources.items():
        if source.startswith("s3://"):
            local = out / "downloads" / name
            LOG.info("downloading %s", source)
            fetch_s3(source, local)
            manifests = [p for p in local.rglob("*") if is_manifest(p)]
            channels[name] = manifests[0] if source.endswith((".manifest", ".jsonl")) and manifests else local
        else:
            channels[name] = Path(source).resolve()
            if not channels[name].is_dir() and not is_manifest(channels[name]):
                raise SystemExit(f"--channel {name}={source}: not a folder or a .manifest file")
        if is_manifest(channels[name]) and not is_piped(name, channels[name], args.input_mode):
            raise SystemExit(f"--channel {name}={source}: an augmented manifest trains in Pipe mode "
                             "(--input-mode Pipe), or convert it with `ssd-detector convert manifest`")
    hosts = [f"algo-{i}" for i in range(1, args.instance_count + 1)]
    bases = [lay_out(out, hyperparameters, channels, content_types, h, hosts, args.input_mode, distributions)
             for h in hosts]
    piped = {name: source for name, source in channels.items() if is_piped(name, source, args.input_mode)}
    feeders = [f for i, base in enumerate(bases)
               for f in start_feeders(base, piped, attribute_names, distributions, i, len(hosts))]
    network = f"ssd-local-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    containers = [f"{h}-{network}" for h in hosts]
    try:
        for host, base, container in zip(hosts, bases, containers):
            subprocess.run(["docker", "run", "-d", "--name", container, "--hostname", host, "--network", network,
                            "--network-alias", host, "-v", f"{base}:/opt/ml", args.image, "train"],
                           check=True, capture_output=True)
        logs = subprocess.Popen(["docker", "logs", "-f", containers[0]])
        codes = [int(subprocess.run(["docker", "wait", c], check=True, capture_output=True, text=True).stdout)
                 for c in containers]
        logs.wait(timeout=60)
    finally:
        for feeder in feeders:
            feeder.stop()
        subprocess.run(["docker", "rm", "-f", *containers], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
    primary = bases[0]
    if (primary / "model").is_dir() and any((primary / "model").iterdir()):
        pack(primary / "model", out / "model.tar.gz")
    pack(primary / "output/data", out / "output.tar.gz")
    report = primary / "output/data/report"
    if report.is_dir():  # the training report, unpacked beside the model for a look without tar
        shutil.copytree(report, out / "report", dirs_exist_ok=True)
        LOG.info("training report: %s", out / "report")
    for base in bases:
        if (base / "output/failure").exists():
            shutil.copy(base / "output/failure", out / "failure")
            LOG.error("job failed on %s: %s", base.name, (base / "output/failure").read_text().strip()[:1000])
            break
    code = next((c for c in codes if c != 0), 0)
    LOG.info("exit codes %s; model: %s", codes, out / "model.tar.gz" if (out / "model.tar.gz").exists() else "none")
    return code


def serve(args: argparse.Namespace) -> int:
    model = args.model.resolve()
    if model.name != "model.tar.gz" or not model.is_file():
        raise SystemExit(f"--model {model}: expected a model.tar.gz")
    container = f"ssd-serve-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(["docker", "run", "--rm", "--name", container, "-p", f"{args.port}:8080",
                                "-v", f"{model.parent}:/opt/ml/model:ro", args.image, "serve"])

    def stop(signum, frame) -> None:  # signal handler signature
        subprocess.run(["docker", "stop", "-t", "30", container], capture_output=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--image", required=True)
    p.add_argument("--hyperparameters", type=Path, required=True, help="JSON file of name -> value")
    p.add_argument("--channel", action="append", default=[],
                   help="NAME=DIR, NAME=FILE.manifest (Pipe mode) or NAME=s3://bucket/prefix")
    p.add_argument("--content-type", action="append", default=[], help="NAME=TYPE (default: from file names)")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--input-mode", choices=("File", "Pipe"), default="File",
                   help="Pipe: train and validation arrive as FIFOs, as SageMaker's Pipe mode")
    p.add_argument("--attribute-names", action="append", default=[],
                   help="NAME=source-ref,LABEL: a manifest channel's AttributeNames (default: source-ref and "
                        "the attribute holding bounding boxes)")
    p.add_argument("--distribution", action="append", default=[],
                   help="NAME=FullyReplicated|ShardedByS3Key (default FullyReplicated)")
    p.add_argument("--output", type=Path, required=True)
    p.set_defaults(func=train)
    p = sub.add_parser("serve")
    p.add_argument("--image", required=True)
    p.add_argument("--model", type=Path, required=True, help="a model.tar.gz")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=serve)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "train" and args.instance_count < 1:
        raise SystemExit(f"--instance-count {args.instance_count} must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
