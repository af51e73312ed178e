"""The photo family of synthetic sets: the class shapes on real photographs, made hard.

Backgrounds are random crops of photographs (a folder given with --backgrounds, else the sample
photographs that scikit-image, scikit-learn and matplotlib ship, where installed) under changed
lighting. Objects range from tiny (about 10 px) to most of the image; they are filled with flat
colour, a gradient or photo texture, may be cut by the image border, partly hidden by other
objects or by unlabelled occluders, and blurred. Distractors carry no label: the shapes of the
classes the set does not use, irregular polygons, text and strokes. The whole
image then gets a lighting ramp, a colour cast, noise, sometimes blur, and JPEG artefacts.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np

from ..boxes import box_iou
from .shapes import SHAPES, draw_shape, random_colour

LOG = logging.getLogger(__name__)

# Sample photographs that packages ship inside their wheels (package, folder, files); found
# without importing the packages. Logos, charts and binary masks they also ship are left out.
PACKAGED = (
    ("skimage", "data", ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                         "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                         "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg",
                         "rocket.jpg", "text.png")),
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MIN_PHOTO_SIDE = 64
MIN_VISIBLE = 0.6  # of an object's area: less is hidden or cut off too much to be labelled
MAX_HIDDEN = 0.25  # of an object's area that a later object or occluder may cover


def packaged_photos() -> list[Path]:
    """The sample photographs of the installed packages in PACKAGED."""
    found: list[Path] = []
    for package, sub, names in PACKAGED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        found += [folder / name for name in names if (folder / name).is_file()]
    return found


def find_photos(folder: Path | None) -> list[Path]:
    """The photographs in folder (searched recursively), or the packaged ones when folder is None."""
    if folder is None:
        photos = packaged_photos()
        if not photos:
            raise ValueError("--style photo needs photographs: pass --backgrounds DIR (a folder of JPEG or PNG "
                             "photos), or install scikit-image, scikit-learn or matplotlib, whose sample "
                             "photographs are used (make bench-deps installs them)")
        return photos
    if not folder.is_dir():
        raise ValueError(f"--backgrounds {folder}: not a folder")
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise ValueError(f"--backgrounds {folder}: no photographs ({', '.join(PHOTO_SUFFIXES)}) in it")
    return photos


def load_photos(paths: list[Path]) -> list[np.ndarray]:
    """Decodes each photo to (H, W, 3) uint8 RGB; grey photos get three channels."""
    photos = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or min(bgr.shape[:2]) < MIN_PHOTO_SIDE:
            raise ValueError(f"background {path}: not a readable image of at least {MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE}"
                             " pixels")
        photos.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return photos


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A random crop of photo (8% to all of its area, near the wanted aspect), flipped at random,
    resized to (height, width, 3) float32."""
    ph, pw = photo.shape[:2]
    aspect = width / height * float(np.exp(rng.uniform(-0.25, 0.25)))
    area = rng.uniform(0.08, 1.0) * ph * pw
    cw = int(np.clip(round(np.sqrt(area * aspect)), 8, pw))
    ch = int(np.clip(round(np.sqrt(area / aspect)), 8, ph))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    patch = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return cv2.resize(np.ascontiguousarray(patch), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)


def _fill(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """What an object is painted with, (height, width, 3) float32: flat colour, a two-colour
    gradient or a tinted photo texture."""
    kind = rng.random()
    if kind < 0.6:
        return np.broadcast_to(np.array(random_colour(rng), np.float32), (height, width, 3))
    if kind < 0.85:
        a, b = np.array(random_colour(rng), np.float32), np.array(random_colour(rng), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
        t = np.cos(angle) * xs / max(width, 1) + np.sin(angle) * ys / max(height, 1)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return a + (b - a) * t[..., None]
    texture = _photo_crop(rng, photos[int(rng.integers(len(photos)))], width, height)
    tint = np.array(random_colour(rng), np.float32)
    return 0.35 * texture + 0.65 * tint


def _irregular(rng: np.random.Generator, box: tuple[int, int, int, int]) -> np.ndarray:
    """An irregular polygon (5 to 9 corners at random radii) inside box -> (K, 2) int32 points."""
    x0, y0, x1, y1 = box
    count = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = rng.uniform(0.3, 1.0, count)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return np.round(np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], 1)).astype(np.int32)


def _distractor_mask(rng: np.random.Generator, classes: int, box: tuple[int, int, int, int],
                     shape: tuple[int, int]) -> np.ndarray:
    """The mask (H, W) uint8 of an unlabelled distractor filling about box."""
    mask = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = box
    kind = rng.random()
    others = SHAPES[classes:]
    if kind < 0.3 and others:
        draw_shape(mask, others[int(rng.integers(len(others)))], box, (255, 255, 255))
    elif kind < 0.65:
        cv2.fillPoly(mask, [_irregular(rng, box)], (255,), cv2.LINE_AA)
    elif kind < 0.8:
        letters = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 6))))
        scale = max(0.3, (y1 - y0) / 30)
        cv2.putText(mask, letters, (x0, y1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255,), max(1, int(scale * 2)),
                    cv2.LINE_AA)
    else:
        points = np.stack([rng.integers(x0, x1 + 1, 4), rng.integers(y0, y1 + 1, 4)], 1).astype(np.int32)  # (4, 2)
        cv2.polylines(mask, [points], False, (255,), int(rng.integers(2, 6)), cv2.LINE_AA)
    return mask


def _paint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, photos: list[np.ndarray],
           blur: float = 0.0) -> None:
    """Paints a fill through mask (H, W) uint8 onto image (H, W, 3) float32, in place, within the
    mask's bounding rectangle; blur > 0 blurs the painted region (defocus or motion)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    pad = int(np.ceil(3 * blur)) + 1
    x0, y0 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
    x1, y1 = min(int(xs.max()) + pad + 1, image.shape[1]), min(int(ys.max()) + pad + 1, image.shape[0])
    alpha = mask[y0:y1, x0:x1].astype(np.float32)[..., None] / 255  # (h, w, 1)
    region = image[y0:y1, x0:x1]
    region[:] = region * (1 - alpha) + _fill(rng, photos, x1 - x0, y1 - y0) * alpha
    if blur > 0:
        region[:] = cv2.GaussianBlur(region, (0, 0), blur)


def _random_box(rng: np.random.Generator, width: int, height: int, low: float, high: float,
                overhang: float) -> tuple[int, int, int, int]:
    """A box log-uniform in size from low to high of the short side; with overhang > 0 it may
    reach that fraction of itself past the image border."""
    side = min(width, height) * float(np.exp(rng.uniform(np.log(low), np.log(high))))
    aspect = float(np.exp(rng.uniform(-0.45, 0.45)))
    w, h = max(int(side * aspect), 6), max(int(side / aspect), 6)
    w, h = min(w, width), min(h, height)
    x0 = int(rng.integers(-int(overhang * w), width - w + int(overhang * w) + 1))
    y0 = int(rng.integers(-int(overhang * h), height - h + int(overhang * h) + 1))
    return x0, y0, x0 + w, y0 + h


def _hides_too_much(mask: np.ndarray, objects: list[np.ndarray]) -> bool:
    """Whether mask would cover more than MAX_HIDDEN of any labelled object's drawn area."""
    covered = mask > 0
    return any(np.count_nonzero(covered & (m > 0)) > MAX_HIDDEN * max(np.count_nonzero(m), 1) for m in objects)


def make_photo_image(rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int, classes: int,
                     max_objects: int, size_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 RGB with its normalized boxes (N, 4) and class ids (N,); object
    sides log-uniform in size_range (fractions of the short side; synthetic.SIZE_RANGES)."""
    image = _photo_crop(rng, photos[int(rng.integers(len(photos)))], width, height)
    shape = (height, width)
    for _ in range(int(rng.integers(0, 5))):  # distractors behind the objects
        box = _random_box(rng, width, height, 0.05, 0.6, 0.2)
        _paint(image, _distractor_mask(rng, classes, box, shape), rng, photos, blur=float(rng.choice([0, 0, 1.0])))
    masks: list[np.ndarray] = []
    boxes: list[list[int]] = []
    class_ids: list[int] = []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 10):
        if len(boxes) == wanted:
            break
        full = _random_box(rng, width, height, *size_range, overhang=0.3 if rng.random() < 0.2 else 0.0)
        x0, y0, x1, y1 = full
        seen = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))
        if (seen[2] - seen[0]) * (seen[3] - seen[1]) < MIN_VISIBLE * (x1 - x0) * (y1 - y0):
            continue
        placed = np.array(boxes, np.float32).reshape(-1, 4)  # (K, 4), also when K = 0
        if placed.size and np.any(box_iou(np.array([seen], np.float32), placed) > 0.3):
            continue
        cls = int(rng.integers(0, classes))
        mask = np.zeros(shape, np.uint8)
        draw_shape(mask, SHAPES[cls], full, (255, 255, 255))
        if not np.any(mask) or _hides_too_much(mask, masks):
            continue
        blur = float(rng.uniform(0.8, 2.5)) if rng.random() < 0.15 else 0.0
        _paint(image, mask, rng, photos, blur)
        masks.append(mask)
        if seen != full:  # cut by the border: the label is what shows of the shape
            ys, xs = np.nonzero(mask)
            seen = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        boxes.append(list(seen))
        class_ids.append(cls)
    for _ in range(int(rng.integers(0, 3))):  # occluders in front, each hiding little of any object
        box = _random_box(rng, width, height, 0.04, 0.3, 0.2)
        mask = _distractor_mask(rng, classes, box, shape)
        if not _hides_too_much(mask, masks):
            _paint(image, mask, rng, photos)
    image = _camera(rng, image)
    scale = np.array([width, height, width, height], np.float32)
    norm = np.array(boxes, np.float32).reshape(-1, 4) / scale  # (N, 4) in [0, 1]
    return image, norm, np.array(class_ids, np.int32)


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Lighting ramp, gain, colour cast, gamma, noise, sometimes blur, then JPEG artefacts:
    (H, W, 3) float32 -> uint8."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W) each
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xs / width - 0.5) + np.sin(angle) * (ys / height - 0.5)  # in about [-0.7, 0.7]
    light = 1 + rng.uniform(0, 0.8) * ramp
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image = image * (rng.uniform(0.55, 1.35) * light)[..., None] * cast + rng.uniform(-25, 25)
    image = 255 * (np.clip(image, 0, 255) / 255) ** rng.uniform(0.7, 1.4)
    image += rng.normal(0, rng.uniform(0, 8), image.shape).astype(np.float32)
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    out = np.clip(image, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else out
