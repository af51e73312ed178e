import json
import logging

import pytest

from ssd_detector.config import SCHEMA, parse_hyperparameters
from ssd_detector.errors import HyperparameterError

BUILT_IN_DEFAULTS = {
    "base_network": "vgg-16", "early_stopping": "False", "early_stopping_min_epochs": "10",
    "early_stopping_patience": "5", "early_stopping_tolerance": "0.0", "image_shape": "300", "epochs": "30",
    "freeze_layer_pattern": "", "kv_store": "device", "label_width": "350", "learning_rate": "0.001",
    "lr_scheduler_factor": "0.1", "lr_scheduler_step": "", "mini_batch_size": "32", "momentum": "0.9",
    "nms_threshold": "0.45", "optimizer": "sgd", "overlap_threshold": "0.5", "use_pretrained_model": "1",
    "weight_decay": "0.0005", "nms_topk": "400", "_kvstore": "device", "_num_kv_servers": "auto",
}


def test_every_built_in_name_has_its_default():
    hp = parse_hyperparameters({"num_classes": "3"})
    strings = hp.to_strings()
    for name, default in BUILT_IN_DEFAULTS.items():
        assert strings[name] == default, name
    assert strings["num_classes"] == "3"
    assert {p.name for p in SCHEMA} >= set(BUILT_IN_DEFAULTS) | {"num_classes", "num_training_samples"}


def test_values_as_strings_json_quoted_and_plain_json():
    plain = parse_hyperparameters({"num_classes": "4", "base_network": "resnet-50", "learning_rate": "0.01",
                                   "early_stopping": "True", "lr_scheduler_step": "10, 20"})
    quoted = parse_hyperparameters({k: json.dumps(v) for k, v in {
        "num_classes": "4", "base_network": "resnet-50", "learning_rate": "0.01", "early_stopping": "True",
        "lr_scheduler_step": "10, 20"}.items()})
    native = parse_hyperparameters({"num_classes": 4, "base_network": "resnet-50", "learning_rate": 0.01,
                                    "early_stopping": True, "lr_scheduler_step": [10, 20]})
    for hp in (plain, quoted, native):
        assert hp.num_classes == 4
        assert hp.base_network == "resnet-50"
        assert hp.learning_rate == pytest.approx(0.01)
        assert hp.early_stopping is True
        assert hp.lr_scheduler_step == (10, 20)
    assert parse_hyperparameters({"num_classes": "\"2\"", "early_stopping": "\"true\""}).early_stopping is True


@pytest.mark.parametrize("flag", ["false", "False", "FALSE", "0", False, 0, "\"false\""])
def test_switches_take_true_and_false_in_any_case(flag):
    """SDK v3 serializes a Python bool as json.dumps does ("false"), v2 as str() does ("False")."""
    hp = parse_hyperparameters({"num_classes": "2", "use_pretrained_model": flag, "early_stopping": flag})
    assert hp.use_pretrained_model == 0 and hp.early_stopping is False
    on = {"true": 1, "TRUE": 1, "True": 1, "1": 1}
    for text in on:
        hp = parse_hyperparameters({"num_classes": "2", "use_pretrained_model": text, "early_stopping": text})
        assert hp.use_pretrained_model == 1 and hp.early_stopping is True


def test_values_as_sdk_v3_serializes_them():
    """v3's safe_serialize: strings as they are, everything else through json.dumps."""
    given = {"num_classes": 3, "use_pretrained_model": False, "lr_scheduler_step": [10, 20], "learning_rate": 0.004,
             "early_stopping": True, "base_network": "mobilenet-0.25", "epochs": 30}
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}
    assert raw["lr_scheduler_step"] == "[10, 20]" and raw["use_pretrained_model"] == "false"
    hp = parse_hyperparameters(raw)
    assert (hp.num_classes, hp.use_pretrained_model, hp.lr_scheduler_step) == (3, 0, (10, 20))
    assert hp.learning_rate == pytest.approx(0.004) and hp.early_stopping is True and hp.epochs == 30


def test_small_networks_are_accepted():
    for net in ("mobilenet-1.0", "mobilenet-0.5", "mobilenet-0.25"):
        assert parse_hyperparameters({"num_classes": "1", "base_network": net}).base_network == net


@pytest.mark.parametrize("key,value,accepted", [
    ("num_classes", "0", "an integer from 1 to 10000"),
    ("num_classes", "two", "an integer from 1 to 10000"),
    ("num_training_samples", "-5", "an integer from 1 to 1000000000"),
    ("base_network", "vgg-19", "one of vgg-16, resnet-50, mobilenet-1.0, mobilenet-0.5, mobilenet-0.25"),
    ("use_pretrained_model", "2", "0 or 1"),
    ("object_balance", "1.5", "a number from 0 to 1 (0: off)"),
    ("image_shape", "32", "an integer from 64 to 2048"),
    ("image_shape", "300.5", "an integer from 64 to 2048"),
    ("epochs", "0", "an integer from 1 to 10000"),
    ("mini_batch_size", "-1", "an integer from 1 to 4096"),
    ("learning_rate", "0", "a number in (0, 1]"),
    ("learning_rate", "1.5", "a number in (0, 1]"),
    ("learning_rate", "nan", "a number in (0, 1]"),
    ("lr_scheduler_step", "20,10", "comma-separated increasing epochs"),
    ("lr_scheduler_step", "a,b", "comma-separated increasing epochs"),
    ("lr_scheduler_factor", "1", "a number in (0, 1)"),
    ("lr_schedule", "linear", "one of step, cosine"),
    ("optimizer", "nag", "one of sgd, adam, rmsprop, adadelta"),
    ("momentum", "1.1", "a number in [0, 1]"),
    ("weight_decay", "1", "a number in [0, 1)"),
    ("early_stopping", "maybe", "True or False"),
    ("early_stopping_min_epochs", "0", "an integer from 1 to 10000"),
    ("early_stopping_patience", "0", "an integer from 1 to 10000"),
    ("early_stopping_tolerance", "1.5", "a number in [0, 1]"),
    ("validation_interval", "0", "an integer from 1 to 10000"),
    ("validation_interval", "2.5", "an integer from 1 to 10000"),
    ("freeze_layer_pattern", "^(conv1_", "a Python regular expression"),
    ("label_width", "6", "an integer from 7 to 100000"),
    ("nms_threshold", "0", "a number in (0, 1]"),
    ("nms_topk", "0", "an integer from 1 to 100000, or -1 for no limit"),
    ("overlap_threshold", "1.01", "a number in (0, 1]"),
    ("match_threshold", "0", "a number in (0, 1]"),
    ("match_topk", "-1", "an integer from 0 to 100 (0: off)"),
    ("match_topk", "2.5", "an integer from 0 to 100 (0: off)"),
    ("max_gradient_norm", "-1", "a number from 0 to 1000000 (0: off)"),
    ("max_gradient_norm", "inf", "a number from 0 to 1000000 (0: off)"),
    ("max_gradient_norm", "ten", "a number from 0 to 1000000 (0: off)"),
    ("anchor_sizes", "0.3,0.2,0.5", "comma-separated increasing fractions of the image side"),
    ("anchor_sizes", "0,0.2", "comma-separated increasing fractions of the image side"),
    ("anchor_sizes", "0.1,2.5", "comma-separated increasing fractions of the image side"),
    ("anchor_sizes", "0.1", "comma-separated increasing fractions of the image side"),
    ("anchor_sizes", "0.1,x", "comma-separated increasing fractions of the image side"),
    ("kv_store", "nccl", "one of device, local, dist_sync"),
    ("time_budget_seconds", "-5", "an integer from 0 to 2419200 (0: no budget)"),
    ("time_budget_seconds", "15m", "an integer from 0 to 2419200 (0: no budget)"),
])
def test_bad_value_names_key_value_and_range(key, value, accepted):
    raw = {"num_classes": "3", key: value}
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters(raw)
    message = str(info.value)
    assert key in message
    assert repr(value) in message
    assert accepted in message


@pytest.mark.parametrize("key,value,accepted", [
    ("num_classes", str(10 ** 18), "an integer from 1 to 10000"),
    ("num_classes", "1" * 5000, "an integer from 1 to 10000"),
    ("epochs", "1000000", "an integer from 1 to 10000"),
    ("mini_batch_size", "100000", "an integer from 1 to 4096"),
    ("nms_topk", "10000000", "an integer from 1 to 100000, or -1"),
    ("label_width", "1000000000", "an integer from 7 to 100000"),
    ("num_training_samples", str(10 ** 12), "an integer from 1 to 1000000000"),
    ("lr_scheduler_step", ",".join(str(i) for i in range(1, 200)), "comma-separated increasing epochs"),
    ("lr_scheduler_step", "5,20000", "comma-separated increasing epochs"),
    ("time_budget_seconds", str(10 ** 9), "an integer from 0 to 2419200"),
])
def test_upper_bounds_name_key_value_and_range(key, value, accepted):
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters({"num_classes": "3", key: value})
    message = str(info.value)
    assert key in message and accepted in message and len(message) < 2000


def test_num_classes_required_and_all_problems_listed():
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters({"epochs": "0", "optimizer": "x"})
    message = str(info.value)
    assert "num_classes is required" in message
    assert "epochs='0'" in message and "optimizer='x'" in message


def test_dist_async_is_refused():
    with pytest.raises(HyperparameterError, match="dist_async.*not supported"):
        parse_hyperparameters({"num_classes": "3", "kv_store": "dist_async"})
    assert parse_hyperparameters({"num_classes": "3", "kv_store": "dist_sync"}).kv_store == "dist_sync"


def test_unknown_keys_warn_reserved_keys_do_not(caplog):
    with caplog.at_level(logging.WARNING):
        parse_hyperparameters({"num_classes": "3", "learning_rat": "0.1", "sagemaker_region": "\"us-east-1\"",
                               "_tuning_objective_metric": "validation:mAP"})
    warnings = [r.getMessage() for r in caplog.records]
    assert any("learning_rat" in w and "did you mean 'learning_rate'" in w for w in warnings)
    assert not any("sagemaker_region" in w or "_tuning_objective_metric" in w for w in warnings)


def test_to_strings_round_trips():
    hp = parse_hyperparameters({"num_classes": "3", "lr_scheduler_step": "3,6", "early_stopping": "true",
                                "num_training_samples": "100"})
    again = parse_hyperparameters(hp.to_strings())
    assert again.values == hp.values
    assert hp.to_strings()["early_stopping"] == "True"
    assert hp.to_strings()["lr_scheduler_step"] == "3,6"


def test_our_own_hyperparameters_seed_and_pipe_shuffle_buffer():
    hp = parse_hyperparameters({"num_classes": "2"})
    assert (hp.seed, hp.pipe_shuffle_buffer) == (0, 1024)
    hp = parse_hyperparameters({"num_classes": "2", "seed": "7", "pipe_shuffle_buffer": "0"})
    assert (hp.seed, hp.pipe_shuffle_buffer) == (7, 0)
    with pytest.raises(HyperparameterError, match="seed='-1' is out of range; expected an integer from 0"):
        parse_hyperparameters({"num_classes": "2", "seed": "-1"})
    with pytest.raises(HyperparameterError, match="pipe_shuffle_buffer='lots' is not valid"):
        parse_hyperparameters({"num_classes": "2", "pipe_shuffle_buffer": "lots"})


def test_time_budget_seconds_defaults_to_none_and_takes_sdk_forms():
    assert parse_hyperparameters({"num_classes": "2"}).time_budget_seconds == 0
    assert parse_hyperparameters({"num_classes": "2", "time_budget_seconds": "900"}).time_budget_seconds == 900
    assert parse_hyperparameters({"num_classes": "2", "time_budget_seconds": 900}).time_budget_seconds == 900


def test_the_typed_fields_are_the_schema():
    import dataclasses

    from ssd_detector.config import SCHEMA, Hyperparameters

    fields = [f.name for f in dataclasses.fields(Hyperparameters) if f.name != "given"]
    assert fields == [param.name for param in SCHEMA]
    hp = parse_hyperparameters({"num_classes": "3"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.epochs = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        hp.epoch  # a misspelt name is an error
    with pytest.raises(KeyError, match="epoch"):
        hp.with_value("epoch", 3)


@pytest.mark.parametrize("value", ["0.04, 0.15,0.3", "[0.04, 0.15, 0.3]", [0.04, 0.15, 0.3], '"0.04,0.15,0.3"'])
def test_anchor_sizes_in_every_form(value):
    hp = parse_hyperparameters({"num_classes": "3", "anchor_sizes": value})
    assert hp.anchor_sizes == (0.04, 0.15, 0.3)
    assert hp.to_strings()["anchor_sizes"] == "0.04,0.15,0.3"
    assert parse_hyperparameters({"num_classes": "3"}).to_strings()["anchor_sizes"] == ""
