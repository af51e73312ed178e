"""Assembling a job: devices, data workers, the per-worker batch, frozen layers."""
import numpy as np
import pytest

from ssd_detector.errors import HyperparameterError
from ssd_detector.model.ssd import build_ssd
from ssd_detector.model.targets import match
from ssd_detector.sagemaker_env import write_job
from ssd_detector.training.assembly import data_workers, make_loaders, worker_batch_size
from ssd_detector.training.starting import freeze_layers
from ssd_detector.training.distributed import World
from ssd_detector.training.inputs import read_training_inputs


def test_freeze_layer_pattern():
    net = build_ssd("vgg-16", 2, 96)
    frozen = freeze_layers(net, "^(conv1_|conv2_).*")
    assert sorted(frozen) == sorted(f"conv{s}_{i}_{k}" for s in (1, 2) for i in (1, 2) for k in ("weight", "bias"))
    assert net.features.stages[0][0].weight.grad_req == "null"
    assert net.features.stages[2][0].weight.grad_req == "write"
    with pytest.raises(HyperparameterError) as info:
        freeze_layers(net, "^nothing")
    assert "matches no parameter" in str(info.value) and "conv1_1_weight" in str(info.value)


def test_data_workers_from_environment():
    import mxnet as mx
    assert data_workers([mx.cpu()], {}) == 1
    assert data_workers([mx.cpu()], {"SSD_DATA_WORKERS": "3"}) == 3
    with pytest.raises(Exception, match="SSD_DATA_WORKERS='x'"):
        data_workers([mx.cpu()], {"SSD_DATA_WORKERS": "x"})


def test_data_workers_on_a_gpu_host_share_its_cores(monkeypatch):
    """No GPU here: the contexts are only looked at."""
    import mxnet as mx
    monkeypatch.setattr("os.cpu_count", lambda: 9)
    assert data_workers([mx.gpu(0)], {}) == 8
    assert data_workers([mx.gpu(0)], {}, sharing=4) == 2
    assert data_workers([mx.gpu(0)], {}, sharing=16) == 1
    assert data_workers([mx.gpu(0)], {"SSD_DATA_WORKERS": "3"}, sharing=4) == 3
    assert data_workers([mx.gpu(0)], {"SSD_DATA_WORKERS": " "}, sharing=4) == 2


def test_horovod_worker_pins_the_gpu_of_its_local_rank():
    """No GPU here: the contexts are compared, not used."""
    import mxnet as mx

    from ssd_detector.training.assembly import worker_contexts

    assert worker_contexts(3, 8) == [mx.gpu(3)]
    assert worker_contexts(0, 0) == [mx.cpu()]


def test_the_host_batch_is_split_among_its_workers():
    assert worker_batch_size(32, 1) == 32
    assert worker_batch_size(32, 4) == 8
    assert worker_batch_size(10, 4) == 2  # the remainder is dropped, as the built-in's per-GPU split
    with pytest.raises(HyperparameterError, match="mini_batch_size=3 is smaller than the 4 workers"):
        worker_batch_size(3, 4)


def test_training_targets_match_at_match_threshold_not_overlap_threshold(tmp_path, synth_set):
    """overlap_threshold is the built-in's evaluation threshold; anchors match objects at match_threshold,
    plus each object's match_topk best anchors."""
    paths = write_job(tmp_path / "job", {"num_classes": "3", "image_shape": "128", "base_network": "mobilenet-0.25",
                                         "use_pretrained_model": "0", "overlap_threshold": "0.9",
                                         "match_threshold": "0.3", "match_topk": "12"},
                      {"train": synth_set / "recordio/train", "validation": synth_set / "recordio/validation"})
    inputs = read_training_inputs(paths)
    net = build_ssd("mobilenet-0.25", 3, 128)
    train, _ = make_loaders(inputs, net, 4, 0, World(), lambda: False)
    sample = inputs.train.samples[0]
    cls_target, _ = train.targets(sample.boxes, sample.class_ids)
    expected = match(net.anchors, sample.boxes, 0.3, topk=12) >= 0
    at_threshold = match(net.anchors, sample.boxes, 0.3) >= 0
    assert expected.sum() > at_threshold.sum()  # topk adds positives here
    assert at_threshold.sum() > (match(net.anchors, sample.boxes, 0.9) >= 0).sum()  # the thresholds differ here
    assert np.array_equal(cls_target > 0, expected)
