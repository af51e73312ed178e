"""Augmentation invariants: boxes stay in the image with their classes, crops honour their IoU
constraint, flips mirror exactly, and boxes follow the pixels."""
from dataclasses import replace

import numpy as np
import pytest

from ssd_detector.config import parse_hyperparameters
from ssd_detector.data import transforms
from ssd_detector.boxes import box_iou
from ssd_detector.data.transforms import (AugmentConfig, TrainTransform, ValTransform, augment_config, colour_matrix,
                                         train_transform)
from ssd_detector.errors import HyperparameterError


def scene(rng: np.random.Generator, width: int = 200, height: int = 150, n: int = 4):
    """A black image with n white rectangles and their exact normalized boxes."""
    image = np.zeros((height, width, 3), np.uint8)
    boxes = []
    for _ in range(n):
        w, h = rng.integers(20, 80), rng.integers(20, 70)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        image[y0:y0 + h, x0:x0 + w] = 255
        boxes.append([x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height])
    return image, np.array(boxes, np.float32)


def test_boxes_stay_inside_and_keep_their_class():
    transform = TrainTransform(128)
    for seed in range(200):
        rng = np.random.default_rng(seed)
        image, boxes = scene(rng)
        classes = np.arange(len(boxes))
        out, out_boxes, kept = transform(image, boxes, np.random.default_rng(seed + 1000))
        assert out.shape == (3, 128, 128) and out.dtype == np.uint8
        assert out_boxes.shape == (int(kept.sum()), 4)
        assert np.all(out_boxes >= 0) and np.all(out_boxes <= 1)
        assert np.all(out_boxes[:, 2] > out_boxes[:, 0]) and np.all(out_boxes[:, 3] > out_boxes[:, 1])
        assert kept.any(), "a crop always keeps at least one object centre"
        assert len(classes[kept]) == len(out_boxes)


def test_boxes_follow_the_pixels():
    # Photometric changes off: the inside of every output box must be the white rectangle.
    cfg = AugmentConfig(photometric_prob=0.0)
    transform = TrainTransform(160, cfg)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        image, boxes = scene(rng, n=1)
        out, out_boxes, kept = transform(image, boxes, np.random.default_rng(seed + 7))
        x0, y0, x1, y1 = out_boxes[0] * 160
        inner = out[:, int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
        if inner.size:
            assert inner.mean() > 200, (seed, out_boxes)
        # Just outside a box edge that is not the image border, the pixel is not the rectangle's
        # white (it is the black background or the expand canvas's mean colour).
        if x0 > 3:
            column = out[:, int(y0) + 1:int(y1) - 1, int(x0) - 2]
            if column.size:
                assert column.mean() < 180, (seed, out_boxes)


def test_crops_honour_the_iou_constraint(monkeypatch):
    cfg = AugmentConfig()
    for min_iou in (0.1, 0.3, 0.5, 0.7, 0.9):
        monkeypatch.setattr(transforms, "CROP_CONSTRAINTS", ((min_iou, None),))
        chosen = 0
        for seed in range(100):
            rng = np.random.default_rng(seed)
            _, boxes = scene(rng, n=2)
            # One large object, so that even the 0.9 constraint can be met by a window.
            boxes = np.concatenate([boxes, [[0.05, 0.05, 0.95, 0.95]]]).astype(np.float32)
            crop = transforms.sample_crop(rng, boxes, cfg)
            if np.array_equal(crop, [0, 0, 1, 1]):
                continue  # no window met the constraint: the whole image is kept
            chosen += 1
            # The SSD reference rule: some object overlaps the window by at least min_iou.
            assert box_iou(crop[None], boxes).max() >= min_iou
        assert chosen > 0, f"no crop ever met min IoU {min_iou}"


def test_flip_mirrors_boxes_and_pixels_exactly():
    cfg = AugmentConfig(photometric_prob=0.0, expand_prob=0.0, crop_prob=0.0, flip_prob=1.0)
    rng = np.random.default_rng(0)
    image, boxes = scene(rng, width=128, height=128)
    out, out_boxes, kept = TrainTransform(128, cfg)(image, boxes, np.random.default_rng(1))
    expected = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
    np.testing.assert_allclose(out_boxes, expected, atol=1e-6)
    np.testing.assert_array_equal(out.transpose(1, 2, 0), image[:, ::-1])
    assert kept.all()


def test_disabled_augmentation_is_the_validation_resize():
    rng = np.random.default_rng(0)
    image, boxes = scene(rng)
    plain = TrainTransform(96, AugmentConfig(enabled=False))(image, boxes, np.random.default_rng(3))
    val = ValTransform(96)(image, boxes)
    np.testing.assert_array_equal(plain[0], val[0])
    np.testing.assert_array_equal(plain[1], boxes)


def test_colour_matrix_identity_when_off_and_bounded_when_on():
    mean = np.array([100, 120, 140], np.float32)
    off = colour_matrix(np.random.default_rng(0), AugmentConfig(photometric_prob=0.0), mean)
    np.testing.assert_allclose(off, np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1), atol=1e-6)
    grey = np.array([128, 128, 128, 1], np.float32)
    for seed in range(50):
        m = colour_matrix(np.random.default_rng(seed), AugmentConfig(photometric_prob=1.0), mean)
        # Saturation and hue leave grey grey; brightness and contrast move it within their ranges.
        out = m @ grey
        assert np.ptp(out) < 1.0
        assert abs(out[0] - 128) <= 32 + 0.5 * 128 + 1


def test_expand_shows_mean_colour_around_the_image():
    cfg = replace(AugmentConfig(), photometric_prob=0.0, expand_prob=1.0, max_expand=4.0, crop_prob=0.0,
                  flip_prob=0.0)
    image = np.zeros((100, 100, 3), np.uint8)
    out, _, _ = TrainTransform(64, cfg)(image, np.zeros((0, 4), np.float32), np.random.default_rng(5))
    border = out.reshape(3, -1)
    fill = np.round(transforms.MEAN_RGB).astype(np.uint8)
    assert any(np.all(border[:, i] == fill) for i in range(border.shape[1]))


@pytest.mark.parametrize("size", [64, 300, 512])
def test_output_sizes(size):
    image, boxes = scene(np.random.default_rng(0))
    out, _, _ = TrainTransform(size)(image, boxes, np.random.default_rng(0))
    assert out.shape == (3, size, size)


def test_augmentation_modes():
    full = augment_config("full")
    assert full.enabled and full.expand_prob > 0 and full.crop_prob > 0
    assert not augment_config("none").enabled
    light = augment_config("light")
    assert light.enabled and light.expand_prob == 0 and light.crop_prob == 0 and light.flip_prob > 0
    hp = parse_hyperparameters({"num_classes": "2"})
    assert hp.augmentation == "full"
    assert parse_hyperparameters({"num_classes": "2", "augmentation": "light"}).augmentation == "light"
    with pytest.raises(HyperparameterError, match="augmentation.*'heavy'.*one of full, light, none, phased"):
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


def test_phased_augmentation_is_light_then_full():
    transform = train_transform("phased", 48, epochs=10)
    assert transform.config == augment_config("light") and transform.later == augment_config("full")
    assert transform.later_from == 5
    assert parse_hyperparameters({"num_classes": "2", "augmentation": "phased"}).augmentation == "phased"
    boxes = np.array([[0.1, 0.2, 0.3, 0.5], [0.6, 0.1, 0.9, 0.4]], np.float32)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    moved = 0
    for seed in range(12):
        early = transform(image, boxes, np.random.default_rng(seed), 4)[1]
        assert early.shape == boxes.shape  # light: every object kept, at its scale
        late = transform(image, boxes, np.random.default_rng(seed), 5)[1]
        moved += late.shape != boxes.shape or not np.allclose(np.abs(late[:, 2] - late[:, 0]), boxes[:, 2] - boxes[:, 0])
    assert moved > 0, "from the switch on, crops and expansion change the objects' scale"
    assert train_transform("light", 48, epochs=10).later is None
