"""SSD augmentation and the validation transform, in numpy and OpenCV.

The training transform does what the SSD paper and GluonCV's ``SSDDefaultTrainTransform`` do
(photometric distortion, random expand onto a mean-coloured canvas, IoU-constrained random
crop, horizontal flip, resize) but composes the geometric steps into one affine warp from the
source image to the output, so the expanded canvas and the crop are never materialized, and
composes the photometric steps into one 3x4 colour matrix applied to the small output.

Images are (H, W, 3) uint8 RGB; boxes are (N, 4) float32 corners normalized to [0, 1].
Outputs are (3, S, S) uint8: normalization by mean and std is done on the device by the network
(``normalize`` does it on the CPU where a float32 batch is wanted).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..boxes import box_iou

MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255
# SSD's crop sampler: (min IoU with the objects, max IoU); None means no constraint.
CROP_CONSTRAINTS: tuple[tuple[float | None, float | None], ...] = (
    (None, None), (0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None))
# augmentation=phased: the share of the epochs that are lightly augmented before SSD's full one.
PHASED_LIGHT_FRACTION = 0.5
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]], np.float32)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the SSD augmentation; ``enabled=False`` gives the plain resize (for exact tests)."""

    enabled: bool = True
    brightness: float = 32.0  # added value, +-
    contrast: float = 0.5  # factor 1 +- this
    saturation: float = 0.5
    hue: float = 18.0  # degrees +-
    photometric_prob: float = 0.5  # each distortion applies with this probability
    expand_prob: float = 0.5
    max_expand: float = 4.0
    crop_prob: float = 1.0  # SSD always samples a crop (one of its options keeps the whole image)
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_aspect: tuple[float, float] = (0.5, 2.0)
    crop_trials: int = 50
    flip_prob: float = 0.5


def train_transform(mode: str, size: int, epochs: int) -> TrainTransform:
    """The transform of the augmentation hyperparameter (config.AUGMENTATIONS); phased is light
    for the first PHASED_LIGHT_FRACTION of the epochs, then full."""
    if mode == "phased":
        return TrainTransform(size, augment_config("light"), later=augment_config("full"),
                              later_from=int(round(epochs * PHASED_LIGHT_FRACTION)))
    return TrainTransform(size, augment_config(mode))


def augment_config(mode: str) -> AugmentConfig:
    """The augmentation hyperparameter's modes (config.AUGMENTATIONS) as transform settings."""
    if mode == "light":
        return AugmentConfig(expand_prob=0.0, crop_prob=0.0)
    if mode not in ("full", "none"):
        raise ValueError(f"augmentation {mode!r} is not full, light or none")
    return AugmentConfig(enabled=mode == "full")


def colour_matrix(rng: np.random.Generator, cfg: AugmentConfig, mean_rgb: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and hue (each with its probability, in random order)
    composed into one affine colour map: (3, 4) so that out = M[:, :3] @ rgb + M[:, 3]."""
    m = np.eye(3, dtype=np.float32)
    b = np.zeros(3, np.float32)
    steps = ["brightness", "contrast", "saturation", "hue"]
    rng.shuffle(steps)
    for step in steps:
        if rng.uniform() >= cfg.photometric_prob:
            continue
        if step == "brightness":
            b = b + rng.uniform(-cfg.brightness, cfg.brightness)
        elif step == "contrast":
            # Blend with the image's mean grey level, which is itself an affine function of the input.
            alpha = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
            grey_mean = float(_LUMA @ (m @ mean_rgb + b))
            m, b = alpha * m, alpha * b + (1 - alpha) * grey_mean
        elif step == "saturation":
            alpha = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
            grey = np.tile(_LUMA, (3, 1))  # (3, 3): every channel gets the luma
            blend = alpha * np.eye(3, dtype=np.float32) + (1 - alpha) * grey
            m, b = blend @ m, blend @ b
        else:
            theta = np.deg2rad(rng.uniform(-cfg.hue, cfg.hue))
            rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]],
                           np.float32)
            hue = _FROM_YIQ @ rot @ _TO_YIQ
            m, b = hue @ m, hue @ b
    return np.concatenate([m, b[:, None]], axis=1).astype(np.float32)  # (3, 4)


def sample_crop(rng: np.random.Generator, boxes: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """An SSD crop window (x0, y0, x1, y1) in the units of boxes (normalized to the canvas).

    Picks one constraint at random and draws ``crop_trials`` windows at once; the first where some
    object meets it (and that holds at least one object centre) wins, else the whole canvas.
    """
    whole = np.array([0, 0, 1, 1], np.float32)
    min_iou, max_iou = CROP_CONSTRAINTS[rng.integers(len(CROP_CONSTRAINTS))]
    if boxes.shape[0] == 0:
        if min_iou is None and max_iou is None:
            return whole
        min_iou = max_iou = None
    n = cfg.crop_trials
    scale = rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1], n)
    aspect = np.exp(rng.uniform(np.log(cfg.crop_aspect[0]), np.log(cfg.crop_aspect[1]), n))
    w = np.minimum(scale * np.sqrt(aspect), 1.0)
    h = np.minimum(scale / np.sqrt(aspect), 1.0)
    x0 = rng.uniform(0, 1, n) * (1 - w)
    y0 = rng.uniform(0, 1, n) * (1 - h)
    crops = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)  # (n, 4)
    ok = np.ones(n, bool)
    if boxes.shape[0]:
        # As the SSD reference implementation (Caffe's SatisfySampleConstraint): a window
        # qualifies when at least one object meets the overlap constraint.
        iou = box_iou(crops, boxes)  # (n, N)
        meets = np.ones_like(iou, bool)
        if min_iou is not None:
            meets &= iou >= min_iou
        if max_iou is not None:
            meets &= iou <= max_iou
        ok &= meets.any(axis=1)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2)
        inside = ((centres[None, :, 0] > crops[:, None, 0]) & (centres[None, :, 0] < crops[:, None, 2])
                  & (centres[None, :, 1] > crops[:, None, 1]) & (centres[None, :, 1] < crops[:, None, 3]))
        ok &= inside.any(axis=1)
    found = np.flatnonzero(ok)
    return crops[found[0]] if found.size else whole


def crop_boxes(boxes: np.ndarray, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes whose centre lies in crop, clipped and renormalized to it -> (boxes, kept mask)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    keep = ((centres[:, 0] > crop[0]) & (centres[:, 0] < crop[2])
            & (centres[:, 1] > crop[1]) & (centres[:, 1] < crop[3]))
    size = np.array([crop[2] - crop[0], crop[3] - crop[1]] * 2, np.float32)
    out = (boxes[keep] - np.tile(crop[:2], 2)) / size
    out = np.clip(out, 0, 1)
    valid = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    mask = np.zeros(boxes.shape[0], bool)
    mask[np.flatnonzero(keep)[valid]] = True
    return out[valid].astype(np.float32), mask


def _geometry(rng: np.random.Generator, boxes: np.ndarray, cfg: AugmentConfig
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Expand, crop and flip, decided in normalized coordinates.

    Returns the source window (x0, y0, x1, y1) in source-normalized units (may extend past the
    image where the expand canvas shows), the boxes in output-normalized units, the kept-object
    mask, and whether to flip.
    """
    # Expand: the source occupies [ox, ox + 1/r] of a canvas r times its size (canvas units).
    ratio = rng.uniform(1, cfg.max_expand) if rng.uniform() < cfg.expand_prob else 1.0
    ox, oy = rng.uniform(0, 1 - 1 / ratio), rng.uniform(0, 1 - 1 / ratio)
    canvas_boxes = boxes / ratio + np.array([ox, oy, ox, oy], np.float32)
    if rng.uniform() < cfg.crop_prob:
        crop = sample_crop(rng, canvas_boxes, cfg)
    else:
        crop = np.array([0, 0, 1, 1], np.float32)
    out_boxes, kept = crop_boxes(canvas_boxes, crop)
    flip = rng.uniform() < cfg.flip_prob
    if flip:
        out_boxes = out_boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([1, 0, 1, 0],
                                                                                                  np.float32)
    # The crop window in canvas units -> source-normalized units.
    window = np.asarray((crop - np.array([ox, oy, ox, oy], np.float32)) * ratio, np.float32)
    return window, out_boxes.astype(np.float32), kept, flip


def _pixel_matrix(continuous: np.ndarray) -> np.ndarray:
    """An affine map of continuous coordinates (pixel i spans [i, i + 1]) -> the pixel-centre map
    cv2.warpAffine takes: u = A (x + 0.5) + t - 0.5."""
    out = continuous.copy()
    out[:, 2] = continuous[:, :2] @ np.array([0.5, 0.5], np.float32) + continuous[:, 2] - 0.5
    return out


def warp_window(image: np.ndarray, window: np.ndarray, size: int, flip: bool, fill: np.ndarray) -> np.ndarray:
    """Renders the source window (normalized, may reach outside the image) at size x size."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = window[0] * w, window[1] * h, window[2] * w, window[3] * h
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    if flip:
        continuous = np.array([[-sx, 0, sx * x1], [0, sy, -sy * y0]], np.float32)
    else:
        continuous = np.array([[sx, 0, -sx * x0], [0, sy, -sy * y0]], np.float32)
    # Shrinking a lot with bilinear sampling aliases; shrink by area first in that case.
    if sx < 0.5 and sy < 0.5:
        factor = max(sx, sy) * 2
        small = cv2.resize(image, (max(1, int(round(w * factor))), max(1, int(round(h * factor)))),
                           interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        continuous = continuous @ np.array([[w / sw, 0, 0], [0, h / sh, 0], [0, 0, 1]], np.float32)
        image = small
    return cv2.warpAffine(image, _pixel_matrix(continuous), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill))


class TrainTransform:
    """SSD training augmentation: (H, W, 3) uint8 + boxes -> (3, S, S) uint8 + kept boxes.

    With ``later``, epochs from ``later_from`` on are augmented with that config instead."""

    def __init__(self, size: int, config: AugmentConfig | None = None, later: AugmentConfig | None = None,
                 later_from: int = 0) -> None:
        self.size = size
        self.config = config or AugmentConfig()
        self.later = later
        self.later_from = later_from

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, epoch: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (image (3, S, S) uint8, boxes (K, 4), mask (N,) of the objects kept)."""
        cfg = self.later if self.later is not None and epoch >= self.later_from else self.config
        if not cfg.enabled:
            return ValTransform(self.size)(image, boxes, rng)
        window, out_boxes, kept, flip = _geometry(rng, boxes, cfg)
        out = warp_window(image, window, self.size, flip, MEAN_RGB)
        mean_rgb = np.array(cv2.mean(out)[:3])  # per channel; 10x faster than numpy's strided mean over uint8
        colour = colour_matrix(rng, cfg, mean_rgb)
        out = cv2.transform(out, colour)  # saturates to uint8
        return np.ascontiguousarray(out.transpose(2, 0, 1)), out_boxes, kept  # (H, W, 3) -> (3, H, W)


class ValTransform:
    """Validation and inference: resize to S x S (SSD squashes, keeping no aspect), boxes unchanged."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator | None = None, epoch: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        interp = cv2.INTER_AREA if w > self.size and h > self.size else cv2.INTER_LINEAR
        out = cv2.resize(image, (self.size, self.size), interpolation=interp)
        return np.ascontiguousarray(out.transpose(2, 0, 1)), boxes.astype(np.float32), np.ones(len(boxes), bool)


def normalize(batch_uint8: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) uint8 -> float32 (x - mean) / std, as the network does on the device."""
    mean = MEAN_RGB.reshape(1, 3, 1, 1)  # broadcast over (B, 3, S, S)
    std = STD_RGB.reshape(1, 3, 1, 1)  # (3,) -> (1, 3, 1, 1)
    return (batch_uint8.astype(np.float32) - mean) / std
