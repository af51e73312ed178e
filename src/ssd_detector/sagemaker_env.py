"""Paths and configuration files of a SageMaker container, relocatable for tests and local runs.

Everything sits under ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``), as in the
sagemaker-training-toolkit.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

LOG = logging.getLogger(__name__)

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"


def env_int(environ: Mapping[str, str], names: str | tuple[str, ...], default: int, low: int, high: int) -> int:
    """The first of names that is set, as an integer in [low, high], else default; a bad value is
    a UserError naming the variable and the value."""
    for name in (names,) if isinstance(names, str) else names:
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not an integer") from None
        if not low <= value <= high:
            raise UserError(f"environment variable {name}={value} must be from {low} to {high}")
        return value
    return default


@dataclass(frozen=True)
class Paths:
    """The file layout of a training or hosting container."""

    base: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Paths":
        env = os.environ if environ is None else environ
        return cls(Path(env.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR))

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel_dir(self, channel: str) -> Path:
        return self.data_dir / channel

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"


def write_job(base: Path, hyperparameters: Mapping[str, Any], channels: Mapping[str, Path] | None = None, *,
              input_data_config: Mapping[str, Mapping[str, Any]] | None = None,
              resource_config: Mapping[str, Any] | None = None, link: bool = False) -> Paths:
    """Lays out a training job under base as SageMaker hands it to the container (the tree Paths
    reads): input/config/hyperparameters.json (values as given; SageMaker's are strings),
    inputdataconfig.json and resourceconfig.json when given, and input/data/<channel> for each
    channel: a folder's contents, or one file, copied (link=True: symlinked, for large sets)."""
    paths = Paths(Path(base))
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.hyperparameters_file.write_text(json.dumps(dict(hyperparameters)))
    if input_data_config is not None:
        paths.input_data_config_file.write_text(json.dumps({k: dict(v) for k, v in input_data_config.items()}))
    if resource_config is not None:
        paths.resource_config_file.write_text(json.dumps(dict(resource_config)))
    for name, source in (channels or {}).items():
        source, target = Path(source), paths.channel_dir(name)
        if source.is_dir():
            if link:
                target.symlink_to(source.resolve(), target_is_directory=True)
            else:
                shutil.copytree(source, target)
        else:
            target.mkdir(exist_ok=True)
            if link:
                (target / source.name).symlink_to(source.resolve())
            else:
                shutil.copy2(source, target / source.name)
    return paths


@dataclass(frozen=True)
class ChannelConfig:
    """One entry of ``inputdataconfig.json``."""

    name: str
    content_type: str | None = None
    input_mode: str = "File"
    record_wrapper_type: str = "None"
    s3_distribution_type: str = "FullyReplicated"


@dataclass(frozen=True)
class ResourceConfig:
    """``resourceconfig.json``: which host this is and who the others are."""

    current_host: str
    hosts: tuple[str, ...]
    network_interface_name: str = "eth0"
    current_instance_type: str = "local"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_master(self) -> bool:
        return self.current_host == self.hosts[0]


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a SageMaker configuration file") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise UserError(f"{what} {path} is not usable JSON: {exc}") from None


def require_job_config(paths: Paths) -> None:
    """A training job always has its config folder (SageMaker writes it before starting the
    container); without it this is not a job, and training defaults would hide that."""
    if not paths.config_dir.is_dir():
        raise UserError(
            f"no training job configuration: {paths.config_dir} does not exist. `train` reads "
            f"hyperparameters.json (and inputdataconfig.json, resourceconfig.json) there and the "
            f"channels under {paths.data_dir}: mount a SageMaker /opt/ml tree (docker run -v "
            f"JOB:/opt/ml IMAGE train) or set SAGEMAKER_BASE_DIR")


def read_hyperparameters(paths: Paths) -> dict[str, str]:
    """The raw hyperparameter map; a missing file means none were given."""
    if not paths.hyperparameters_file.exists():
        LOG.info("no %s: using defaults", paths.hyperparameters_file)
        return {}
    raw = _read_json(paths.hyperparameters_file, "hyperparameter file")
    if not isinstance(raw, dict):
        raise UserError(
            f"hyperparameter file {paths.hyperparameters_file} must hold a JSON object of "
            f"name -> string, not {type(raw).__name__}")
    return raw


def read_input_data_config(paths: Paths) -> dict[str, ChannelConfig]:
    """Channels from ``inputdataconfig.json``, or from the folders under ``input/data`` when the
    file is absent (local runs), with content types left for the reader to infer."""
    if paths.input_data_config_file.exists():
        raw = _read_json(paths.input_data_config_file, "input data config")
        if not isinstance(raw, dict):
            raise UserError(f"input data config {paths.input_data_config_file} must hold a JSON object")
        channels = {}
        for name, spec in raw.items():
            if not isinstance(spec, dict):
                raise UserError(f"input data config: channel {name!r} must map to an object, not {spec!r}")
            fields: dict[str, Any] = {key: spec.get(key, default) for key, default in (
                ("ContentType", None), ("TrainingInputMode", "File"), ("RecordWrapperType", "None"),
                ("S3DistributionType", "FullyReplicated"))}
            for key, value in fields.items():
                if value is not None and not isinstance(value, str):
                    raise UserError(f"input data config: channel {name!r} {key} must be a string, not {value!r}")
            channels[name] = ChannelConfig(
                name=name,
                content_type=fields["ContentType"],
                input_mode=fields["TrainingInputMode"],
                record_wrapper_type=fields["RecordWrapperType"],
                s3_distribution_type=fields["S3DistributionType"],
            )
        return channels
    if not paths.data_dir.is_dir():
        return {}
    return {p.name: ChannelConfig(name=p.name) for p in sorted(paths.data_dir.iterdir()) if p.is_dir()}


def read_resource_config(paths: Paths) -> ResourceConfig:
    """The cluster layout; a missing file means one local host."""
    if not paths.resource_config_file.exists():
        return ResourceConfig(current_host="algo-1", hosts=("algo-1",), network_interface_name="lo",
                              current_instance_type="local")
    raw = _read_json(paths.resource_config_file, "resource config")
    if not isinstance(raw, dict):
        raise UserError(f"resource config {paths.resource_config_file} must hold a JSON object")
    hosts = raw.get("hosts")
    current = raw.get("current_host")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise UserError(f"resource config: 'hosts' must be a non-empty list of host names, not {hosts!r}")
    if len(set(hosts)) != len(hosts):
        raise UserError(f"resource config: 'hosts' lists a host twice: {hosts!r}")
    if current not in hosts:
        raise UserError(f"resource config: current_host {current!r} is not one of hosts {hosts!r}")
    interface = raw.get("network_interface_name")
    if interface is not None and not isinstance(interface, str):
        raise UserError(f"resource config: network_interface_name must be a string, not {interface!r}")
    known = {"current_host", "hosts", "network_interface_name", "current_instance_type"}
    return ResourceConfig(
        current_host=str(current),
        hosts=tuple(sorted(hosts)),
        network_interface_name=interface or "eth0",
        current_instance_type=str(raw.get("current_instance_type") or "unknown"),
        extra={k: v for k, v in raw.items() if k not in known},
    )
