"""Everything a training job is given, read and checked before any training starts.

A job that would fail on its data fails here, in seconds, with every offender listed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..config import Hyperparameters, parse_hyperparameters
from ..data.channel import RECORDIO_CONTENT_TYPES, ChannelData, label_width_message, listed_issues, read_channel, \
    validate
from ..data.sample import Issue
from ..errors import DataError, HyperparameterError, UserError, shown
from ..sagemaker_env import ChannelConfig, Paths, ResourceConfig, read_hyperparameters, read_input_data_config, \
    read_resource_config

LOG = logging.getLogger(__name__)
# Deprecated: the augmentation hyperparameter replaces it (read for one more release).
AUGMENT_ENV = "SSD_AUGMENT"
LEGACY_AUGMENT_VALUES = {"1": "full", "full": "full", "light": "light", "0": "none", "none": "none"}

KNOWN_CHANNELS = ("train", "validation", "train_annotation", "validation_annotation", "model")
# How many offenders a failure reason lists before giving the count.
MAX_LISTED_ISSUES = 10


@dataclass(frozen=True)
class PipeChannel:
    """A channel in Pipe mode: read as a stream during training, not up front."""

    name: str
    format: str  # "recordio" (RecordIO files concatenated) or "manifest" (augmented manifest records)
    distribution: str  # S3DistributionType: FullyReplicated or ShardedByS3Key


@dataclass
class TrainingInputs:
    paths: Paths
    hyperparameters: Hyperparameters
    resources: ResourceConfig
    train: ChannelData | PipeChannel
    validation: ChannelData | PipeChannel | None
    class_names: dict[int, str]


def _check_channel_config(channels: dict[str, ChannelConfig]) -> None:
    if "train" not in channels:
        raise UserError(f"no 'train' channel: the job has channels {sorted(channels) or 'none'}; "
                        "give train (and validation) as RecordIO, or as images with train_annotation")
    for name, spec in channels.items():
        if name not in KNOWN_CHANNELS:
            LOG.warning("ignoring channel %r (known channels: %s)", name, ", ".join(KNOWN_CHANNELS))
            continue
        _check_input_mode(name, spec)
    for split in ("train", "validation"):
        if f"{split}_annotation" in channels and split not in channels:
            raise UserError(f"channel '{split}_annotation' is given without the '{split}' image channel")


def _check_input_mode(name: str, spec: ChannelConfig) -> None:
    mode, wrapper = spec.input_mode, spec.record_wrapper_type or "None"
    if mode not in ("File", "FastFile", "Pipe"):
        raise UserError(f"channel {name!r} uses TrainingInputMode={mode!r}; use File, FastFile or Pipe")
    if wrapper not in ("None", "RecordIO"):
        raise UserError(f"channel {name!r} uses RecordWrapperType={wrapper!r}; use None, or RecordIO for an "
                        "augmented manifest in Pipe mode")
    if mode != "Pipe":
        if wrapper == "RecordIO":
            raise UserError(f"channel {name!r} has RecordWrapperType=RecordIO (an augmented manifest) in {mode} mode; "
                            "augmented manifests train in Pipe mode (TrainingInputMode=Pipe), or convert the "
                            "manifest with `ssd-detector convert manifest` for File mode")
        return
    if name not in ("train", "validation"):
        raise UserError(f"channel {name!r} is in Pipe mode; only train and validation can be (images with JSON "
                        "annotations and the model channel are File mode only)")
    base = (spec.content_type or "application/x-recordio").split(";")[0].strip().lower()
    if base not in RECORDIO_CONTENT_TYPES:
        raise UserError(f"channel {name!r} is in Pipe mode with ContentType={spec.content_type!r}; Pipe mode takes "
                        "application/x-recordio (RecordIO files, or an augmented manifest with RecordWrapperType "
                        "RecordIO); images with JSON annotations need File mode")
    if spec.s3_distribution_type not in ("FullyReplicated", "ShardedByS3Key"):
        raise UserError(f"channel {name!r} has S3DistributionType={spec.s3_distribution_type!r}; use "
                        "FullyReplicated or ShardedByS3Key")


def pipe_channel(spec: ChannelConfig) -> PipeChannel:
    return PipeChannel(spec.name, "manifest" if spec.record_wrapper_type == "RecordIO" else "recordio",
                       spec.s3_distribution_type)


def format_issues(name: str, issues: Sequence[Issue], count: int | None = None, where: str = "") -> str:
    """A failure reason naming the first MAX_LISTED_ISSUES problems and how many there are."""
    count = len(issues) if count is None else count
    return (f"channel '{name}'{where} has {count} problem(s) in its data: "
            f"{listed_issues(issues, MAX_LISTED_ISSUES, count)}. "
            "Run `ssd-detector check-data` on the channel to see them all.")


def _load_channel(paths: Paths, channels: dict[str, ChannelConfig], split: str, num_classes: int,
                  decode_images: bool) -> ChannelData:
    """Reads and checks one split; every class must occur in train, validation may lack some."""
    spec = channels[split]
    annotation = channels.get(f"{split}_annotation")
    data = read_channel(paths.channel_dir(split),
                        paths.channel_dir(f"{split}_annotation") if annotation is not None else None,
                        content_type=spec.content_type, name=split)
    validate(data, num_classes, decode=decode_images, require_all_classes=split == "train")
    if data.issues:
        raise DataError(format_issues(data.name, data.issues))
    if not data.samples:
        hint = "" if split == "train" else "; remove the channel or give it images"
        raise DataError(f"channel '{split}' holds no images{hint}")
    return data


def augmentation_from_environment(hp: Hyperparameters, environ: Mapping[str, str]) -> Hyperparameters:
    """SSD_AUGMENT, the augmentation hyperparameter's predecessor, still read for one release: it
    applies when the hyperparameter is not given, and the mode it chose goes into hyperparams.json."""
    value = environ.get(AUGMENT_ENV, "").strip()
    if not value:
        return hp
    if "augmentation" in hp.given:
        LOG.warning("%s=%s is ignored: the augmentation hyperparameter (%s) decides; %s goes away in the next "
                    "release", AUGMENT_ENV, shown(value), hp.augmentation, AUGMENT_ENV)
        return hp
    mode = LEGACY_AUGMENT_VALUES.get(value.lower())
    if mode is None:
        raise UserError(f"{AUGMENT_ENV}={value!r} must be full (or 1), light, or none (or 0); better, leave it unset "
                        f"and set the augmentation hyperparameter")
    LOG.warning("%s is deprecated and goes away in the next release: set the hyperparameter augmentation=%s "
                "instead", AUGMENT_ENV, mode)
    return hp.with_value("augmentation", mode)


def read_training_inputs(paths: Paths, decode_images: bool = True) -> TrainingInputs:
    """Reads and checks hyperparameters, resources and channels; raises UserError on any problem."""
    hp = augmentation_from_environment(parse_hyperparameters(read_hyperparameters(paths)), os.environ)
    resources = read_resource_config(paths)
    channels = read_input_data_config(paths)
    _check_channel_config(channels)
    streamed = [name for name in ("train", "validation") if name in channels and channels[name].input_mode == "Pipe"]
    if "train" in streamed and hp.num_training_samples is None:
        raise HyperparameterError(
            "num_training_samples is required when the train channel is in Pipe mode: the stream cannot be "
            "counted before training, and the learning-rate schedule needs it. Set it to the number of training "
            "images (the lines of the manifest); a wrong value is corrected after the first epoch")
    train = pipe_channel(channels["train"]) if "train" in streamed else \
        _load_channel(paths, channels, "train", hp.num_classes, decode_images)
    validation: ChannelData | PipeChannel | None = None
    if "validation" in streamed:
        validation = pipe_channel(channels["validation"])
    elif "validation" in channels:
        validation = _load_channel(paths, channels, "validation", hp.num_classes, decode_images)
    else:
        LOG.warning("no validation channel: training without validation mAP; the model saved is the last epoch's")

    if isinstance(train, ChannelData):
        hp = _resolve_sample_count(hp, len(train.samples))
    else:
        LOG.info("Pipe mode: train channel streamed (%s, %s); num_training_samples=%d until the first epoch has "
                 "counted it", train.format, train.distribution, hp.num_training_samples)
    files = [c for c in (train, validation) if isinstance(c, ChannelData)]
    for channel in files:
        if channel.min_label_width > hp.label_width:
            raise HyperparameterError(label_width_message(channel, hp.label_width))

    class_names: dict[int, str] = {}
    for channel in files:
        for cid, name in channel.class_names.items():
            class_names.setdefault(cid, name)
    return TrainingInputs(paths, hp, resources, train, validation, class_names)


def _resolve_sample_count(hp: Hyperparameters, counted: int) -> Hyperparameters:
    given = hp.num_training_samples
    if given is None:
        LOG.info("num_training_samples not given: counted %d training images", counted)
    elif given != counted:
        LOG.warning("num_training_samples=%d but the train channel holds %d images; using %d "
                    "(the learning-rate schedule is computed from it)", given, counted, counted)
    return hp.with_value("num_training_samples", counted)
