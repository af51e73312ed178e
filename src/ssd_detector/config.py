"""Hyperparameters of the built-in Object Detection algorithm: names, defaults, ranges.

SageMaker hands every value over as a string (``"0.001"``, ``"True"``, ``"3,6"``); newer SDKs
JSON-encode them first (``"\\"resnet-50\\""``), and SDK v3 writes Python values as JSON (``False`` ->
``"false"``, ``[10, 20]`` -> ``"[10, 20]"``). Both forms, and plain JSON numbers and booleans
from hand-written files, parse to the same typed value here. Every error names the key, the
value and what would be accepted.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import HyperparameterError, shown

LOG = logging.getLogger(__name__)

BASE_NETWORKS = ("vgg-16", "resnet-50", "mobilenet-1.0", "mobilenet-0.5", "mobilenet-0.25")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adadelta")
KV_STORES = ("device", "local", "dist_sync", "dist_device_sync", "dist_async")
# full: SSD's augmentation (expand, IoU-constrained crop, colour, flip); light: colour and flip
# only, object scales as in the data (faster from scratch when test images look like training
# images); none: plain resized images (pre-augmented data, exact comparisons); phased: light for
# the first half of the epochs, then full.
AUGMENTATIONS = ("full", "light", "none", "phased")
# step: the built-in's (lr_scheduler_step, lr_scheduler_factor); cosine: a decay to zero over the epochs.
LR_SCHEDULES = ("step", "cosine")
# Keys SageMaker or its SDKs add on their own; accepted silently and not validated.
RESERVED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")
MIN_IMAGE_SHAPE = 64
MAX_IMAGE_SHAPE = 2048
# MXNet's detection label parser needs at least 2 header values and one 5-value object.
MIN_LABEL_WIDTH = 7
# Upper bounds: far beyond any real job, low enough that a typo (num_classes=10**18) is an error
# with a message instead of an allocation that never returns.
# Far above any detection set (COCO 80, Open Images 600, LVIS 1,203); keeps class ids int32.
MAX_NUM_CLASSES = 10_000  # also the data readers' class id bound (data.labels)
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4_096
MAX_LABEL_WIDTH = 100_000  # 20,000 objects of 5 values
MAX_NMS_TOPK = 100_000
MAX_MATCH_TOPK = 100
MAX_GRADIENT_NORM = 1_000_000
MAX_SAMPLES = 1_000_000_000
MAX_SHUFFLE_BUFFER = 1_000_000
MAX_SEED = 2**31 - 1
MAX_TIME_BUDGET = 28 * 24 * 3600  # SageMaker's longest training job, in seconds
MAX_SCHEDULE_STEPS = 100
MAX_ANCHOR_SIZES = 20  # far more feature maps than any base network has
MAX_ANCHOR_SIZE = 2.0  # fractions of the image side; SSD's last size is 1.05


def _unquote(value: Any) -> Any:
    """Undo the SDK's JSON encoding of a value (``'"resnet-50"'`` -> ``'resnet-50'``)."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text[1:-1]
        return text
    return value


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError("not a whole number")
    text = str(value).strip()
    if len(text) > 30:
        raise ValueError(f"{len(text)} characters is too long for a number")
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "32.0" is accepted; "abc" raises ValueError
        if not number.is_integer():
            raise ValueError("not a whole number") from None
        return int(number)


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str) and len(value.strip()) > 40:
        raise ValueError(f"{len(value.strip())} characters is too long for a number")
    number = float(value if not isinstance(value, str) else value.strip())
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError("not a boolean")


def _parse_flag(value: Any) -> int:
    """A 0/1 switch: ``1``, ``"0"``, and also ``True`` / ``"false"`` (any case), which is how
    SDK v3 serializes a Python bool."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    return _parse_int(value)


def _parse_str(value: Any) -> str:
    return "" if value is None else str(value)


def _list_items(value: Any) -> list[Any]:
    """``"a, b"``, ``"[a, b]"``, a JSON list or ``""`` -> its items (strings from text)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part for part in (p.strip() for p in text.split(",")) if part != ""]


def _parse_epoch_list(value: Any) -> tuple[int, ...]:
    """``"10, 20"``, ``"[10, 20]"``, a JSON list or ``""`` -> increasing positive epochs."""
    items = _list_items(value)
    if len(items) > MAX_SCHEDULE_STEPS:
        raise ValueError(f"{len(items)} steps; at most {MAX_SCHEDULE_STEPS}")
    epochs = tuple(_parse_int(item) for item in items)
    if any(e < 1 or e > MAX_EPOCHS for e in epochs):
        raise ValueError(f"epochs must be from 1 to {MAX_EPOCHS}")
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError("epochs must be strictly increasing")
    return epochs


def _parse_size_list(value: Any) -> tuple[float, ...]:
    """``"0.04, 0.15, 0.3"``, ``"[0.04, 0.15]"``, a JSON list or ``""`` -> increasing fractions of the image side."""
    items = _list_items(value)
    if len(items) > MAX_ANCHOR_SIZES:
        raise ValueError(f"{len(items)} sizes; at most {MAX_ANCHOR_SIZES}")
    sizes = tuple(_parse_float(item) for item in items)
    if any(not 0 < s <= MAX_ANCHOR_SIZE for s in sizes):
        raise ValueError(f"sizes must be in (0, {MAX_ANCHOR_SIZE:g}]")
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError("sizes must be strictly increasing")
    if len(sizes) == 1:
        raise ValueError("one size; a layout needs one per feature map plus one")
    return sizes


@dataclass(frozen=True)
class Param:
    """One hyperparameter: how to parse it and what range it must fall in."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    accepts: str  # shown in errors, for example "an integer >= 1"
    check: Callable[[Any], bool] = lambda v: True
    required: bool = False


def _between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[float], bool]:
    def check(v: float) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below
    return check


def _regex_ok(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


SCHEMA: tuple[Param, ...] = (
    Param("num_classes", _parse_int, None, f"an integer from 1 to {MAX_NUM_CLASSES}",
          _between(1, MAX_NUM_CLASSES), required=True),
    # Required by the built-in; counted from the training data here when absent.
    Param("num_training_samples", _parse_int, None, f"an integer from 1 to {MAX_SAMPLES}", _between(1, MAX_SAMPLES)),
    Param("base_network", _parse_str, "vgg-16", "one of " + ", ".join(BASE_NETWORKS),
          lambda v: v in BASE_NETWORKS),
    Param("use_pretrained_model", _parse_flag, 1, "0 or 1 (or true/false)", lambda v: v in (0, 1)),
    Param("image_shape", _parse_int, 300, f"an integer from {MIN_IMAGE_SHAPE} to {MAX_IMAGE_SHAPE}",
          _between(MIN_IMAGE_SHAPE, MAX_IMAGE_SHAPE)),
    Param("epochs", _parse_int, 30, f"an integer from 1 to {MAX_EPOCHS}", _between(1, MAX_EPOCHS)),
    Param("mini_batch_size", _parse_int, 32, f"an integer from 1 to {MAX_BATCH_SIZE}", _between(1, MAX_BATCH_SIZE)),
    Param("learning_rate", _parse_float, 0.001, "a number in (0, 1]", _between(0, 1, low_open=True)),
    Param("lr_scheduler_step", _parse_epoch_list, (), "comma-separated increasing epochs, e.g. \"10,20\""),
    Param("lr_scheduler_factor", _parse_float, 0.1, "a number in (0, 1)",
          _between(0, 1, low_open=True, high_open=True)),
    Param("lr_schedule", _parse_str, "step", "one of " + ", ".join(LR_SCHEDULES), lambda v: v in LR_SCHEDULES),
    Param("optimizer", _parse_str, "sgd", "one of " + ", ".join(OPTIMIZERS), lambda v: v in OPTIMIZERS),
    Param("momentum", _parse_float, 0.9, "a number in [0, 1]", _between(0, 1)),
    Param("weight_decay", _parse_float, 0.0005, "a number in [0, 1)", _between(0, 1, high_open=True)),
    Param("early_stopping", _parse_bool, False, "True or False"),
    Param("early_stopping_min_epochs", _parse_int, 10, f"an integer from 1 to {MAX_EPOCHS}", _between(1, MAX_EPOCHS)),
    Param("early_stopping_patience", _parse_int, 5, f"an integer from 1 to {MAX_EPOCHS}", _between(1, MAX_EPOCHS)),
    Param("early_stopping_tolerance", _parse_float, 0.0, "a number in [0, 1]", _between(0, 1)),
    # Validate after every n-th epoch and after the last (1: every epoch, the built-in's).
    Param("validation_interval", _parse_int, 1, f"an integer from 1 to {MAX_EPOCHS}", _between(1, MAX_EPOCHS)),
    Param("freeze_layer_pattern", _parse_str, "", "a Python regular expression", _regex_ok),
    Param("label_width", _parse_int, 350, f"an integer from {MIN_LABEL_WIDTH} to {MAX_LABEL_WIDTH}",
          _between(MIN_LABEL_WIDTH, MAX_LABEL_WIDTH)),
    Param("nms_threshold", _parse_float, 0.45, "a number in (0, 1]", _between(0, 1, low_open=True)),
    Param("nms_topk", _parse_int, 400, f"an integer from 1 to {MAX_NMS_TOPK}, or -1 for no limit",
          lambda v: 1 <= v <= MAX_NMS_TOPK or v == -1),
    # The built-in's "evaluation overlap threshold": the IoU a detection needs to count in validation mAP.
    Param("overlap_threshold", _parse_float, 0.5, "a number in (0, 1]", _between(0, 1, low_open=True)),
    # The IoU at which an anchor becomes a positive of an object in training, besides each object's
    # best anchor; 0.5 is the built-in's (MultiBoxTarget's).
    Param("match_threshold", _parse_float, 0.5, "a number in (0, 1]", _between(0, 1, low_open=True)),
    # Each object's k best anchors also become its positives (model.targets); 0: the built-in's matching.
    Param("match_topk", _parse_int, 0, f"an integer from 0 to {MAX_MATCH_TOPK} (0: off)", _between(0, MAX_MATCH_TOPK)),
    # A positive anchor of an object with n positives weighs n^-object_balance in the loss, scaled so an
    # image's positives keep their total (model.targets); 0: each positive counts once (the built-in's).
    Param("object_balance", _parse_float, 0.0, "a number from 0 to 1 (0: off)", _between(0, 1)),
    # SSD's anchor sizes s_1..s_m+1 (fractions of the image side); empty: the network's default layout.
    Param("anchor_sizes", _parse_size_list, (), "comma-separated increasing fractions of the image side, one "
          "more than the network's feature maps, e.g. \"0.04,0.15,0.33\" (empty: the default layout)"),
    Param("augmentation", _parse_str, "full", "one of " + ", ".join(AUGMENTATIONS), lambda v: v in AUGMENTATIONS),
    # An exponential moving average of the weights, updated after every step (0: none).
    Param("ema_decay", _parse_float, 0.0, "a number in [0, 1)", _between(0, 1, high_open=True)),
    # The job's gradient is scaled down to this global norm when above it (training.clipping; 0: off).
    Param("max_gradient_norm", _parse_float, 0.0, f"a number from 0 to {MAX_GRADIENT_NORM} (0: off)",
          _between(0, MAX_GRADIENT_NORM)),
    # Seconds the training may take: the schedule's end moves earlier to fit (0: no budget).
    Param("time_budget_seconds", _parse_int, 0, f"an integer from 0 to {MAX_TIME_BUDGET} (0: no budget)",
          _between(0, MAX_TIME_BUDGET)),
    # The training's randomness: initialization, the order of the images, augmentation.
    Param("seed", _parse_int, 0, f"an integer from 0 to {MAX_SEED}", _between(0, MAX_SEED)),
    # Pipe mode: images held to mix the order within a pass over the stream (0: stream order).
    Param("pipe_shuffle_buffer", _parse_int, 1024, f"an integer from 0 to {MAX_SHUFFLE_BUFFER}",
          _between(0, MAX_SHUFFLE_BUFFER)),
    Param("kv_store", _parse_str, "device", "one of " + ", ".join(KV_STORES), lambda v: v in KV_STORES),
    # Hidden keys of the built-in, kept so its hyperparams.json round-trips.
    Param("_kvstore", _parse_str, "device", "one of " + ", ".join(KV_STORES), lambda v: v in KV_STORES),
    Param("_num_kv_servers", _parse_str, "auto", "a string"),
)
SCHEMA_BY_NAME: dict[str, Param] = {p.name: p for p in SCHEMA}


@dataclass(frozen=True)
class Hyperparameters:
    """The resolved, typed hyperparameters of one job: one field per SCHEMA entry (a unit test
    keeps the two in step), plus the names the job gave explicitly."""

    num_classes: int
    num_training_samples: int | None
    base_network: str
    use_pretrained_model: int
    image_shape: int
    epochs: int
    mini_batch_size: int
    learning_rate: float
    lr_scheduler_step: tuple[int, ...]
    lr_scheduler_factor: float
    lr_schedule: str
    optimizer: str
    momentum: float
    weight_decay: float
    early_stopping: bool
    early_stopping_min_epochs: int
    early_stopping_patience: int
    early_stopping_tolerance: float
    validation_interval: int
    freeze_layer_pattern: str
    label_width: int
    nms_threshold: float
    nms_topk: int
    overlap_threshold: float
    match_threshold: float
    match_topk: int
    object_balance: float
    anchor_sizes: tuple[float, ...]
    augmentation: str
    ema_decay: float
    max_gradient_norm: float
    time_budget_seconds: int
    seed: int
    pipe_shuffle_buffer: int
    kv_store: str
    _kvstore: str
    _num_kv_servers: str
    given: frozenset[str] = frozenset()

    @property
    def values(self) -> dict[str, Any]:
        """Every hyperparameter by name, in SCHEMA's order."""
        return {param.name: getattr(self, param.name) for param in SCHEMA}

    def with_value(self, name: str, value: Any) -> "Hyperparameters":
        if name not in SCHEMA_BY_NAME:
            raise KeyError(f"no hyperparameter {name!r}")
        return dataclasses.replace(self, **{name: value})

    def to_strings(self) -> dict[str, str]:
        """Every value as the built-in writes it to ``hyperparams.json``."""
        return {name: _format(value) for name, value in self.values.items()}


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _is_reserved(name: str) -> bool:
    return any(name.startswith(prefix) for prefix in RESERVED_PREFIXES)


def parse_hyperparameters(raw: Mapping[str, Any]) -> Hyperparameters:
    """Validates and types a raw name -> value map; raises HyperparameterError naming every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in SCHEMA_BY_NAME or _is_reserved(name):
            continue
        close = difflib.get_close_matches(name, SCHEMA_BY_NAME, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        LOG.warning("ignoring unknown hyperparameter %s=%s%s", shown(name), shown(value), hint)
    for param in SCHEMA:
        if param.name not in raw:
            if param.required:
                problems.append(f"{param.name} is required ({param.accepts})")
            values[param.name] = param.default
            continue
        value = _unquote(raw[param.name])
        if param.required and value in ("", None):
            problems.append(f"{param.name} is required ({param.accepts})")
            continue
        try:
            parsed = param.parse(value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{param.name}={shown(raw[param.name])} is not valid: {exc}; expected {param.accepts}")
            continue
        if not param.check(parsed):
            problems.append(f"{param.name}={shown(raw[param.name])} is out of range; expected {param.accepts}")
            continue
        values[param.name] = parsed
    if not problems:
        problems.extend(_check_combinations(values))
    if problems:
        raise HyperparameterError("invalid hyperparameters: " + "; ".join(problems))
    _warn_combinations(values)
    given = frozenset(name for name in raw if name in SCHEMA_BY_NAME)
    return Hyperparameters(**values, given=given)


def _check_combinations(values: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in ("kv_store", "_kvstore"):
        if values[key] == "dist_async":
            problems.append(
                f"{key}='dist_async' is not supported: training is synchronous (Horovod); "
                "use dist_sync, or leave kv_store unset")
    return problems


def _warn_combinations(values: Mapping[str, Any]) -> None:
    if values["base_network"] in ("vgg-16", "resnet-50") and values["image_shape"] < 300:
        LOG.warning("image_shape=%d is below 300, the smallest size the built-in accepts for %s; "
                    "accuracy will suffer", values["image_shape"], values["base_network"])
    late = [e for e in values["lr_scheduler_step"] if e >= values["epochs"]]
    if late:
        LOG.warning("lr_scheduler_step epochs %s are not before the last epoch (epochs=%d) and have no effect",
                    late, values["epochs"])
    if values["early_stopping"] and values["early_stopping_min_epochs"] >= values["epochs"]:
        LOG.warning("early_stopping_min_epochs=%d is not below epochs=%d: early stopping cannot trigger",
                    values["early_stopping_min_epochs"], values["epochs"])
