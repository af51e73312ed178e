"""Everything a training job is given, read and checked before any training starts.

A job that would fail on its data fails here, in seconds, with every offender listed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import Hyperparameters, parse_hyperparameters
from ..data.channel import ChannelData, label_width_message, read_channel, validate
from ..errors import DataError, HyperparameterError, UserError
from ..sagemaker_env import ChannelConfig, Paths, ResourceConfig, read_hyperparameters, read_input_data_config, \
    read_resource_config

LOG = logging.getLogger(__name__)

KNOWN_CHANNELS = ("train", "validation", "train_annotation", "validation_annotation", "model")
# How many offenders a failure reason lists before giving the count.
MAX_LISTED_ISSUES = 10


@dataclass
class TrainingInputs:
    paths: Paths
    hyperparameters: Hyperparameters
    resources: ResourceConfig
    train: ChannelData
    validation: ChannelData | None
    class_names: dict[int, str]


def _check_channel_config(channels: dict[str, ChannelConfig]) -> None:
    if "train" not in channels:
        raise UserError(f"no 'train' channel: the job has channels {sorted(channels) or 'none'}; "
                        "give train (and validation) as RecordIO, or as images with train_annotation")
    for name, spec in channels.items():
        if name not in KNOWN_CHANNELS:
            LOG.warning("ignoring channel %r (known channels: %s)", name, ", ".join(KNOWN_CHANNELS))
            continue
        if spec.input_mode not in ("File", "FastFile"):
            raise UserError(f"channel {name!r} uses TrainingInputMode={spec.input_mode!r}, which is not supported; "
                            "use File or FastFile")
        if spec.record_wrapper_type not in ("None", None, ""):
            raise UserError(f"channel {name!r} uses RecordWrapperType={spec.record_wrapper_type!r} "
                            "(augmented manifest), which is not supported; convert it to RecordIO or JSON channels")
    for split in ("train", "validation"):
        if f"{split}_annotation" in channels and split not in channels:
            raise UserError(f"channel '{split}_annotation' is given without the '{split}' image channel")


def _format_issues(channel: ChannelData) -> str:
    listed = "; ".join(f"{i.where}: {i.what}" for i in channel.issues[:MAX_LISTED_ISSUES])
    more = len(channel.issues) - MAX_LISTED_ISSUES
    suffix = f"; and {more} more" if more > 0 else ""
    return (f"channel '{channel.name}' has {len(channel.issues)} problem(s) in its data: {listed}{suffix}. "
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
        raise DataError(_format_issues(data))
    if not data.samples:
        hint = "" if split == "train" else "; remove the channel or give it images"
        raise DataError(f"channel '{split}' holds no images{hint}")
    return data


def read_training_inputs(paths: Paths, decode_images: bool = True) -> TrainingInputs:
    """Reads and checks hyperparameters, resources and channels; raises UserError on any problem."""
    hp = parse_hyperparameters(read_hyperparameters(paths))
    resources = read_resource_config(paths)
    channels = read_input_data_config(paths)
    _check_channel_config(channels)
    train = _load_channel(paths, channels, "train", hp.num_classes, decode_images)
    validation = None
    if "validation" in channels:
        validation = _load_channel(paths, channels, "validation", hp.num_classes, decode_images)
    else:
        LOG.warning("no validation channel: training without validation mAP; the model saved is the last epoch's")

    hp = _resolve_sample_count(hp, len(train.samples))
    for channel in (train, validation):
        if channel is not None and channel.min_label_width > hp.label_width:
            raise HyperparameterError(label_width_message(channel, hp.label_width))

    class_names = dict(train.class_names)
    if validation is not None:
        for cid, name in validation.class_names.items():
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
