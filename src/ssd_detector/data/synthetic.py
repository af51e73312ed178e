"""A synthetic detection set: shapes on textured backgrounds, laid out as SageMaker channels.

Each class is a shape (its colour is random, so a model must learn the shape); objects range
from small to large, several per image, on backgrounds of smooth noise, gradients and clutter
lines. The same seed gives the same files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..boxes import box_iou
from .images import encode
from .sample import ImageRef, Sample
from .writers import extension_for, manifest_line, write_json_item, write_recordio

LOG = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon", "bar", "arrow")
FORMATS = ("json", "recordio", "manifest", "both")
IMAGE_FORMATS = ("jpg", "png", "mixed")


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
        cv2.line(image, p0, p1, _colour(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in rng.integers(0, 256, 3))
    return r, g, b


def _polygon(kind: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    cx, cy = x0 + w / 2, y0 + h / 2
    pts: list[tuple[float, float]]
    if kind == "triangle":
        pts = [(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif kind == "diamond":
        pts = [(cx, y0), (x0 + w, cy), (cx, y0 + h), (x0, cy)]
    elif kind == "hexagon":
        pts = [(cx + w / 2 * np.cos(a), cy + h / 2 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    elif kind == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.2
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + r * w * np.cos(a), cy + r * h * np.sin(a)))
    elif kind == "arrow":
        pts = [(x0, y0 + h * 0.35), (x0 + w * 0.55, y0 + h * 0.35), (x0 + w * 0.55, y0), (x0 + w, cy),
               (x0 + w * 0.55, y0 + h), (x0 + w * 0.55, y0 + h * 0.65), (x0, y0 + h * 0.65)]
    else:
        raise ValueError(kind)
    return np.round(np.array(pts)).astype(np.int32)


def _draw(image: np.ndarray, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    thick = max(2, min(w, h) // 5)
    if kind == "circle":
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (w - 1, h - 1), 0), colour, -1, cv2.LINE_AA)
    elif kind == "ring":
        cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (w - thick, h - thick), 0), colour, thick, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
    elif kind == "cross":
        cv2.rectangle(image, (x0 + (w - thick) // 2, y0), (x0 + (w + thick) // 2, y1 - 1), colour, -1)
        cv2.rectangle(image, (x0, y0 + (h - thick) // 2), (x1 - 1, y0 + (h + thick) // 2), colour, -1)
    elif kind == "bar":
        cv2.rectangle(image, (x0, y0 + h // 3), (x1 - 1, y1 - 1 - h // 3), colour, -1)
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
    else:
        cv2.fillPoly(image, [_polygon(kind, x0, y0, w - 1, h - 1)], colour, cv2.LINE_AA)


def make_image(rng: np.random.Generator, spec: SynthSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 RGB with its normalized boxes (N, 4) and class ids (N,)."""
    width, height = spec.width, spec.height
    image = _background(rng, width, height)
    boxes: list[list[int]] = []
    classes: list[int] = []
    wanted = int(rng.integers(1, spec.max_objects + 1))
    short = min(width, height)
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        # Log-uniform sizes from about 6% to 70% of the short side: small to large objects.
        side = short * float(np.exp(rng.uniform(np.log(0.06), np.log(0.7))))
        aspect = float(np.exp(rng.uniform(-0.4, 0.4)))
        w = int(np.clip(side * aspect, 8, width))
        h = int(np.clip(side / aspect, 8, height))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
        placed = np.array(boxes, np.float32).reshape(-1, 4)  # (K, 4), also when K = 0
        if placed.size and np.any(box_iou(box[None], placed) > 0.2):
            continue
        cls = int(rng.integers(0, spec.classes))
        _draw(image, SHAPES[cls], (x0, y0, x0 + w, y0 + h), _colour(rng))
        boxes.append([x0, y0, x0 + w, y0 + h])
        classes.append(cls)
    scale = np.array([width, height, width, height], np.float32)
    norm = np.array(boxes, np.float32).reshape(-1, 4) / scale  # (N, 4) in [0, 1]
    return image, norm, np.array(classes, np.int32)


def generate(out: Path | str, spec: SynthSpec) -> dict[str, int]:
    """Writes the set under out; returns the image count of each split."""
    spec.check()
    out = Path(out)
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
            image, boxes, class_ids = make_image(rng, spec)
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
        if records:
            write_recordio(rec_root / split / f"{split}.rec", records)
        if lines:
            manifest_root.mkdir(parents=True, exist_ok=True)
            (manifest_root / f"{split}.manifest").write_text("".join(json.dumps(line) + "\n" for line in lines))
        LOG.info("wrote %d %s images", count, split)
    return splits
