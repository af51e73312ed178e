"""VOC mAP by hand, the learning-rate schedule, metric lines, layer freezing."""
import re

import numpy as np
import pytest

from ssd_detector.config import parse_hyperparameters
from ssd_detector.data.transforms import TrainTransform, augment_config
from ssd_detector.errors import HyperparameterError
from ssd_detector.evaluation.voc_map import VOCMeanAP
from ssd_detector.model.ssd import build_ssd
from ssd_detector.training.inputs import augmentation_from_environment
from ssd_detector.training.assembly import data_workers, freeze_layers
from ssd_detector.training.metrics import METRIC_DEFINITIONS, MetricLog
from ssd_detector.training.schedule import StepWithWarmup, batches_per_epoch

BOX_A = [0.1, 0.1, 0.4, 0.4]
BOX_B = [0.5, 0.5, 0.9, 0.9]


def test_perfect_detections_score_one():
    metric = VOCMeanAP(2)
    gt = np.array([BOX_A, BOX_B], np.float32)
    metric.update(gt, np.array([0, 1]), np.array([0.9, 0.8]), gt, np.array([0, 1]))
    assert metric.value() == pytest.approx(1.0)


def test_voc07_eleven_points_by_hand():
    # One class, two objects in two images; detections: hit (0.9), miss (0.8), hit (0.7).
    metric = VOCMeanAP(1)
    metric.update(np.array([BOX_A, BOX_B], np.float32), np.array([0, 0]), np.array([0.9, 0.8]),
                  np.array([BOX_A], np.float32), np.array([0]))
    metric.update(np.array([BOX_B], np.float32), np.array([0]), np.array([0.7]),
                  np.array([BOX_B], np.float32), np.array([0]))
    # recall/precision after each: (0.5, 1), (0.5, 0.5), (1, 2/3): 6 points at 1.0, 5 at 2/3.
    assert metric.value() == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    area = VOCMeanAP(1, voc07=False)
    area._scores, area._hits, area._positives = metric._scores, metric._hits, metric._positives
    assert area.value() == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_difficult_objects_are_ignored_and_duplicates_are_false_positives():
    metric = VOCMeanAP(1)
    gt = np.array([BOX_A, BOX_B], np.float32)
    detections = np.array([BOX_A, BOX_A, BOX_B], np.float32)
    metric.update(detections, np.array([0, 0, 0]), np.array([0.9, 0.8, 0.7]), gt, np.array([0, 0]),
                  np.array([False, True]))
    # The difficult box neither counts as a positive nor penalizes its detection; the duplicate
    # of BOX_A is a false positive after the hit: precision at recall 1 is 1.
    assert metric.value() == pytest.approx(1.0)
    assert metric._positives.tolist() == [1]


def test_class_without_ground_truth_is_left_out():
    metric = VOCMeanAP(3)
    metric.update(np.array([BOX_A], np.float32), np.array([2]), np.array([0.5]),
                  np.array([BOX_A], np.float32), np.array([0]))
    aps = metric.average_precisions()
    assert aps[0] == 0.0 and np.isnan(aps[1]) and np.isnan(aps[2])
    assert metric.value() == 0.0


def test_schedule_warms_up_then_steps_in_epochs():
    updates = batches_per_epoch(1000, 32)
    assert updates == 32
    schedule = StepWithWarmup(0.1, (2, 4), 0.1, updates)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(16) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert schedule(32) == pytest.approx(0.1)
    assert schedule(2 * 32 - 1) == pytest.approx(0.1)
    assert schedule(2 * 32) == pytest.approx(0.01)
    assert schedule(4 * 32) == pytest.approx(0.001)


def test_metric_lines_match_the_built_in_regexes(caplog):
    log = MetricLog("algo-1")
    with caplog.at_level("INFO", logger="ssd_detector.metrics"):
        log.progress(10)
        log.train_losses(3, 100, 1.25, 0.5)
        log.throughput(115.2)
        log.validation_map(3, 0.4123)
    lines = [r.getMessage() for r in caplog.records]
    captured = {}
    for definition in METRIC_DEFINITIONS:
        values = [m.group(1) for line in lines if (m := re.search(definition["Regex"], line))]
        assert len(values) == 1, (definition, lines)
        captured[definition["Name"]] = float(values[0])
    assert captured == {"train:progress": 10.0, "train:smooth_l1": 0.5, "train:cross_entropy": 1.25,
                        "train:throughput": 115.2, "validation:mAP": 0.4123}
    assert "#quality_metric: host=algo-1, epoch=3, validation mAP <score>=(0.412300)" in lines


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


def test_augmentation_modes():
    full = augment_config("full")
    assert full.enabled and full.expand_prob > 0 and full.crop_prob > 0
    assert not augment_config("none").enabled
    light = augment_config("light")
    assert light.enabled and light.expand_prob == 0 and light.crop_prob == 0 and light.flip_prob > 0
    hp = parse_hyperparameters({"num_classes": "2"})
    assert hp.augmentation == "full"
    assert parse_hyperparameters({"num_classes": "2", "augmentation": "light"}).augmentation == "light"
    with pytest.raises(HyperparameterError, match="augmentation.*'heavy'.*one of full, light, none"):
        parse_hyperparameters({"num_classes": "2", "augmentation": "heavy"})
    # Light augmentation keeps every object and its scale: boxes are the originals or their mirror.
    boxes = np.array([[0.1, 0.2, 0.3, 0.5], [0.6, 0.1, 0.9, 0.4]], np.float32)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    transform = TrainTransform(32, light)
    for seed in range(8):
        out, out_boxes, kept = transform(image, boxes, np.random.default_rng(seed))
        assert out.shape == (3, 32, 32) and kept.all()
        mirrored = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([1, 0, 1, 0], np.float32)
        assert np.allclose(out_boxes, boxes, atol=1e-6) or np.allclose(out_boxes, mirrored, atol=1e-6)


def test_the_deprecated_environment_variable_still_chooses_the_augmentation(caplog):
    hp = parse_hyperparameters({"num_classes": "2"})
    assert augmentation_from_environment(hp, {}) is hp
    assert augmentation_from_environment(hp, {"SSD_AUGMENT": "0"}).augmentation == "none"
    chosen = augmentation_from_environment(hp, {"SSD_AUGMENT": "Light"})
    assert chosen.augmentation == "light" and chosen.to_strings()["augmentation"] == "light"
    assert "SSD_AUGMENT is deprecated" in caplog.text and "augmentation=light" in caplog.text
    given = parse_hyperparameters({"num_classes": "2", "augmentation": "none"})
    assert augmentation_from_environment(given, {"SSD_AUGMENT": "full"}).augmentation == "none"
    assert "SSD_AUGMENT='full' is ignored" in caplog.text
    with pytest.raises(Exception, match="SSD_AUGMENT='heavy'"):
        augmentation_from_environment(hp, {"SSD_AUGMENT": "heavy"})


def test_horovod_worker_pins_the_gpu_of_its_local_rank():
    """No GPU here: the contexts are compared, not used."""
    import mxnet as mx

    from ssd_detector.training.assembly import worker_contexts

    assert worker_contexts(3, 8) == [mx.gpu(3)]
    assert worker_contexts(0, 0) == [mx.cpu()]


def test_launcher_names_the_worker_that_caused_the_failure(tmp_path):
    """A killed worker is named before a survivor whose collectives then failed, whatever the
    ranks; a worker's own error before such consequences."""
    import signal

    from ssd_detector.training.distributed import plan
    from ssd_detector.training.launcher import Worker, _first_cause

    def worker(rank: int, reason: str | None) -> Worker:
        reason_file = tmp_path / f"reason-{rank}"
        if reason is not None:
            reason_file.write_text(reason)
        return Worker(plan(["algo-1"], 4)[rank], None, reason_file, tmp_path / f"joined-{rank}")

    lost = worker(0, "internal error: MXNetError: Horovod has been shut down. This was caused by ...")
    killed = worker(1, None)
    own = worker(2, "data error: train/x.rec: bad record")
    silent = worker(3, None)
    failed = [(lost, 2), (silent, 2), (own, 1), (killed, -signal.SIGKILL)]
    assert _first_cause(failed)[0] is killed
    assert _first_cause(failed[:3])[0] is own
    assert _first_cause([(silent, 2), (lost, 2)])[0] is lost
    assert _first_cause([(silent, 2), (worker(0, None), 2)])[0].slot.rank == 0
    # Pipe mode: the worker that found bad records is named, not the one that stopped with it.
    from ssd_detector.training.distributed import PEER_FAILED_TEXT
    follower = worker(0, f"channel 'train' (Pipe mode, train_0): {PEER_FAILED_TEXT}")
    finder = worker(3, "channel 'train' (Pipe mode, train_0) has 1 problem(s) in its data: ...")
    assert _first_cause([(follower, 1), (finder, 1)])[0] is finder


def test_schedule_rebased_on_the_real_batch_count():
    """Pipe mode learns the real batch count after its first epoch: steps still ahead move, steps
    passed stay passed."""
    from ssd_detector.training.schedule import StepWithWarmup

    schedule = StepWithWarmup(0.1, [3, 5], 0.1, updates_per_epoch=10, warmup=0)
    assert schedule.step_updates == [30, 50]
    schedule.rebase(updates_done=25, epochs_done=1, updates_per_epoch=25)  # epoch 0 had 25 batches, not 10
    assert schedule.step_updates == [25 + 2 * 25, 25 + 4 * 25]
    assert schedule(74) == pytest.approx(0.1) and schedule(75) == pytest.approx(0.01)
    passed = StepWithWarmup(0.1, [1, 4], 0.1, updates_per_epoch=10, warmup=0)
    passed.rebase(updates_done=60, epochs_done=3, updates_per_epoch=20)
    assert passed.step_updates == [10, 80] and passed(60) == pytest.approx(0.01)
