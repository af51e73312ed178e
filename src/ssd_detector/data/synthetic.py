"""A synthetic detection set, laid out as SageMaker channels, in one of two families.

Each class is a shape (its colour is random, so a model must learn the shape). The "shapes"
family puts several small to large shapes on backgrounds of smooth noise, gradients and clutter
lines; the "photo" family (synth_photo) is harder: photographs behind, distractors, occlusion,
blur, lighting, tiny to large sizes. The same seed (and photographs) give the same files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..boxes import box_iou
from ..progress import Progress
from .images import encode
from .sample import ImageRef, Sample
from .shapes import SHAPES, draw_shape, random_colour
from .writers import extension_for, manifest_line, write_json_item, write_recordio

LOG = logging.getLogger(__name__)

FORMATS = ("json", "recordio", "manifest", "both")
IMAGE_FORMATS = ("jpg", "png", "mixed")
STYLES = ("shapes", "photo")
# Object sides, log-uniform, as fractions of the image's short side, for each style.
SIZE_RANGES = {"shapes": (0.06, 0.7), "photo": (0.05, 0.8)}


@dataclass(frozen=True)
class SynthSpec:
    train: int
    validation: int
    classes: int
    width: int = 320
    height: int = 240
    seed: int = 0
    format: str = "json"
    image_format: str = "jpg"
    max_objects: int = 6
    style: str = "shapes"
    backgrounds: str = ""  # photo style: a folder of photographs; "" for the packaged ones
    min_size: float | None = None  # None: the style's SIZE_RANGES
    max_size: float | None = None

    @property
    def size_range(self) -> tuple[float, float]:
        low, high = SIZE_RANGES[self.style]  # check() names an unknown style first
        return (self.min_size if self.min_size is not None else low, self.max_size if self.max_size is not None else high)

    def check(self) -> None:
        if not 1 <= self.classes <= len(SHAPES):
            raise ValueError(f"--classes {self.classes} must be from 1 to {len(SHAPES)} (one shape per class)")
        if self.train < 0 or self.validation < 0 or self.train + self.validation == 0:
            raise ValueError(f"--train {self.train} and --validation {self.validation} must be >= 0, not both 0")
        if not (32 <= self.width <= 4096 and 32 <= self.height <= 4096):
            raise ValueError(f"--image-size {self.width}x{self.height}: each side must be from 32 to 4096")
        if self.format not in FORMATS:
            raise ValueError(f"--format {self.format!r} must be one of {', '.join(FORMATS)}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"--image-format {self.image_format!r} must be one of {', '.join(IMAGE_FORMATS)}")
        if self.style not in STYLES:
            raise ValueError(f"--style {self.style!r} must be one of {', '.join(STYLES)}")
        if self.backgrounds and self.style != "photo":
            raise ValueError(f"--backgrounds {self.backgrounds} is for --style photo, not {self.style!r}")
        low, high = self.size_range
        if not 0.01 <= low <= high <= 1:
            raise ValueError(f"--min-size {low:g} and --max-size {high:g} (fractions of the short side) must satisfy "
                             "0.01 <= min <= max <= 1")
        if self.max_objects < 1:
            raise ValueError(f"max_objects {self.max_objects} must be >= 1")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    # Smooth colour noise: a few random pixels blown up, plus a gradient and fine grain.
    coarse = rng.integers(30, 226, size=(rng.integers(2, 7), rng.integers(2, 7), 3)).astype(np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    image += ramp * rng.uniform(-1, 1)
    image += rng.normal(0, rng.uniform(2, 12), size=image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 8))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p0, p1, random_colour(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def make_image(rng: np.random.Generator, spec: SynthSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 RGB with its normalized boxes (N, 4) and class ids (N,)."""
    width, height = spec.width, spec.height
    image = _background(rng, width, height)
    boxes: list[list[int]] = []
    classes: list[int] = []
    wanted = int(rng.integers(1, spec.max_objects + 1))
    short = min(width, height)
    low, high = spec.size_range
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        # Log-uniform sizes (by default from 6% to 70% of the short side): small to large objects.
        side = short * float(np.exp(rng.uniform(np.log(low), np.log(high))))
        aspect = float(np.exp(rng.uniform(-0.4, 0.4)))
        w = int(np.clip(side * aspect, 8, width))
        h = int(np.clip(side / aspect, 8, height))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
        placed = np.array(boxes, np.float32).reshape(-1, 4)  # (K, 4), also when K = 0
        if placed.size and np.any(box_iou(box[None], placed) > 0.2):
            continue
        cls = int(rng.integers(0, spec.classes))
        draw_shape(image, SHAPES[cls], (x0, y0, x0 + w, y0 + h), random_colour(rng))
        boxes.append([x0, y0, x0 + w, y0 + h])
        classes.append(cls)
    scale = np.array([width, height, width, height], np.float32)
    norm = np.array(boxes, np.float32).reshape(-1, 4) / scale  # (N, 4) in [0, 1]
    return image, norm, np.array(classes, np.int32)


def _image_maker(spec: SynthSpec) -> Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """make_image for spec's style, with the photographs loaded once for the photo style."""
    if spec.style == "shapes":
        return lambda rng: make_image(rng, spec)
    from .synth_photo import find_photos, load_photos, make_photo_image

    paths = find_photos(Path(spec.backgrounds) if spec.backgrounds else None)
    photos = load_photos(paths)
    LOG.info("photo style: %d background photographs", len(photos))
    return lambda rng: make_photo_image(rng, photos, spec.width, spec.height, spec.classes, spec.max_objects,
                                        spec.size_range)


def generate(out: Path | str, spec: SynthSpec, progress: Progress | None = None) -> dict[str, int]:
    """Writes the set under out; returns the image count of each split."""
    spec.check()
    out = Path(out)
    draw = _image_maker(spec)
    class_names = {i: SHAPES[i] for i in range(spec.classes)}
    splits = {"train": spec.train, "validation": spec.validation}
    json_root = out / "json" if spec.format == "both" else out
    rec_root = out / "recordio" if spec.format == "both" else out
    manifest_root = out / "manifest" if spec.format == "both" else out
    for split_index, (split, count) in enumerate(splits.items()):
        if count == 0:
            continue
        records: list[tuple[Sample, bytes]] = []
        lines: list[dict] = []
        for index in range(count):
            rng = np.random.default_rng([spec.seed, split_index, index])
            image, boxes, class_ids = draw(rng)
            kind = spec.image_format if spec.image_format != "mixed" else ("png" if index % 4 == 3 else "jpg")
            data = encode(image, "png" if kind == "png" else "jpeg")
            stem = f"{split}_{index:06d}"
            if spec.format in ("json", "both"):
                write_json_item(json_root / split, json_root / f"{split}_annotation", stem, data,
                                spec.width, spec.height, boxes, class_ids, class_names)
            if spec.format in ("recordio", "both"):
                sample = Sample(ImageRef(""), boxes, class_ids, np.zeros(len(class_ids), bool), stem)
                records.append((sample, data))
            if spec.format in ("manifest", "both"):
                # Ground Truth's output: source-ref, the label attribute, its metadata. The images
                # sit beside the manifest (with "both", the json/ images are referred to).
                name = stem + extension_for(data)
                if spec.format == "manifest":
                    (manifest_root / "images" / split).mkdir(parents=True, exist_ok=True)
                    (manifest_root / "images" / split / name).write_bytes(data)
                    ref = f"images/{split}/{name}"
                else:
                    ref = f"../json/{split}/{name}"
                lines.append(manifest_line(ref, spec.width, spec.height, boxes, class_ids, class_names))
            if progress is not None:
                progress.advance()
        if records:
            write_recordio(rec_root / split / f"{split}.rec", records)
        if lines:
            manifest_root.mkdir(parents=True, exist_ok=True)
            (manifest_root / f"{split}.manifest").write_text("".join(json.dumps(line) + "\n" for line in lines))
        LOG.info("wrote %d %s images", count, split)
    return splits
