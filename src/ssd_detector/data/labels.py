"""Detection labels: unpacking RecordIO label arrays and checking objects against the rules."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import shown

from ..config import MAX_NUM_CLASSES  # class ids run below num_classes' upper bound
from .sample import empty_objects

# Normalized coordinates may overshoot [0, 1] by float rounding; more than this is an error.
COORD_TOLERANCE = 1e-3


class LabelError(ValueError):
    """A label that cannot be used; the message says what is wrong with it."""


def unpack_detection_label(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A packed label ``[header_width, object_width, extra header..., objects...]`` ->
    (boxes (N, 4), class_ids (N,), difficult (N,), raw label width).

    Rows whose class id is -1 are padding and are dropped. Boxes are returned as found;
    ``check_boxes`` and ``check_class_ids`` judge them.
    """
    values = np.asarray(label, dtype=np.float32).reshape(-1)  # any shape -> (L,)
    if values.size < 2:
        raise LabelError(f"label has {values.size} value(s); a detection label starts with the header width "
                         "and the object width (pack it with im2rec --pack-label)")
    if not np.all(np.isfinite(values[:2])):
        raise LabelError(f"label header width {values[0]:g} and object width {values[1]:g} must be finite numbers")
    header_width, object_width = float(values[0]), float(values[1])
    if header_width != int(header_width) or int(header_width) < 2 or int(header_width) > values.size:
        raise LabelError(f"label header width {values[0]:g} must be a whole number from 2 to the label length "
                         f"{values.size}")
    if object_width != int(object_width) or int(object_width) < 5:
        raise LabelError(f"label object width {values[1]:g} must be a whole number >= 5 "
                         "(class_id, xmin, ymin, xmax, ymax[, difficult])")
    hw, ow = int(header_width), int(object_width)
    body = values[hw:]
    if body.size % ow:
        raise LabelError(f"label has {body.size} object values after its {hw}-value header, not a multiple of the "
                         f"object width {ow}: each object needs {ow} numbers [class_id, xmin, ymin, xmax, ymax...]")
    rows = body.reshape(-1, ow)  # (N, object_width)
    if not np.all(np.isfinite(rows[:, 0])):
        raise LabelError("a class id is not a finite number (NaN or infinite)")
    rows = rows[rows[:, 0] != -1]
    if rows.shape[0] == 0:
        return (*empty_objects(), int(values.size))
    difficult = rows[:, 5] > 0 if ow >= 6 else np.zeros(rows.shape[0], bool)
    class_ids = rows[:, 0]
    if np.any(class_ids != np.round(class_ids)):
        bad = class_ids[class_ids != np.round(class_ids)][0]
        raise LabelError(f"class id {bad:g} is not a whole number")
    if np.any(np.abs(class_ids) >= MAX_NUM_CLASSES):
        bad = class_ids[np.abs(class_ids) >= MAX_NUM_CLASSES][0]
        raise LabelError(f"class id {bad:g} is beyond the largest supported class id {MAX_NUM_CLASSES - 1}")
    return rows[:, 1:5].astype(np.float32), class_ids.astype(np.int32), difficult, int(values.size)


def check_boxes(boxes: np.ndarray) -> list[str]:
    """Problems with normalized (N, 4) boxes, one message per bad object (object index first)."""
    problems = []
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        if not np.all(np.isfinite(box)):
            problems.append(f"object {i}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has a coordinate that is not a "
                            "finite number")
        elif max(x0, y0, x1, y1) > 2:
            problems.append(f"object {i}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) looks like pixels; RecordIO "
                            "coordinates must be normalized to [0, 1] by the image width and height")
        elif min(x0, y0) < -COORD_TOLERANCE or max(x1, y1) > 1 + COORD_TOLERANCE:
            problems.append(f"object {i}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the image [0, 1]")
        elif x1 <= x0 or y1 <= y0:
            problems.append(f"object {i}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area "
                            "(xmax must exceed xmin and ymax must exceed ymin)")
    return problems


def check_class_ids(class_ids: np.ndarray, num_classes: int | None) -> list[str]:
    """Problems with class ids: negative, or not below num_classes (when known)."""
    problems = []
    for i, cls in enumerate(class_ids):
        if cls < 0:
            problems.append(f"object {i}: class id {cls} is negative")
        elif num_classes is not None and cls >= num_classes:
            problems.append(f"object {i}: class id {cls} is out of range for num_classes={num_classes} "
                            f"(ids run from 0 to {num_classes - 1})")
    return problems


def clip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clips the rounding overshoot that check_boxes tolerates."""
    return np.clip(boxes, 0.0, 1.0).astype(np.float32)


def number_value(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}={shown(value, 40)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{key}={shown(value, 40)} is not a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"{key}={shown(value, 40)} is not a finite number")
    return number


def class_id_value(value: Any, where: str) -> int:
    """A category's or an object's class id: a whole number (JSON number or decimal string) from 0
    to MAX_NUM_CLASSES - 1."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) < 12:
        value = int(value.strip())
    name = f"{where} class_id" if where else "class_id"
    number = number_value(value, name)
    if number != int(number):
        raise ValueError(f"{name} {shown(value, 40)} is not a whole number")
    if number < 0:
        raise ValueError(f"{name} {shown(value, 40)} is negative")
    if number >= MAX_NUM_CLASSES:
        raise ValueError(f"{name} {shown(value, 40)} is beyond the largest supported class id {MAX_NUM_CLASSES - 1}")
    return int(number)


def check_pixel_object(obj: Any, i: int, width: int, height: int) -> str | None:
    if not isinstance(obj, dict):
        return f"annotation {i} must be an object, not {obj!r}"
    missing = [k for k in ("class_id", "left", "top", "width", "height") if k not in obj]
    if missing:
        return f"annotation {i} lacks {', '.join(missing)}"
    try:
        left, top = number_value(obj["left"], "left"), number_value(obj["top"], "top")
        w, h = number_value(obj["width"], "width"), number_value(obj["height"], "height")
        if isinstance(obj["class_id"], str):
            raise ValueError(f"class_id={shown(obj['class_id'], 40)} is not a number")
        class_id_value(obj["class_id"], "")
    except ValueError as exc:
        return f"annotation {i}: {exc}"
    if w <= 0 or h <= 0:
        return f"annotation {i}: box width {w:g} x height {h:g} has zero area"
    # Half a pixel of overshoot is rounding; more is a box outside the image.
    if left < -0.5 or top < -0.5 or left + w > width + 0.5 or top + h > height + 0.5:
        return (f"annotation {i}: box left={left:g} top={top:g} width={w:g} height={h:g} lies outside the "
                f"{width}x{height} image")
    return None


def pixel_objects(objects: Any, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The objects of a JSON annotation or a Ground Truth label (pixel left, top, width, height)
    -> (boxes (N, 4) normalized corners, class ids (N,), problems: one message per bad object)."""
    if not isinstance(objects, list):
        return *empty_objects()[:2], [f"'annotations' must be a list, not {type(objects).__name__}"]
    boxes, class_ids, problems = [], [], []
    for i, obj in enumerate(objects):
        problem = check_pixel_object(obj, i, width, height)
        if problem:
            problems.append(problem)
            continue
        left, top = float(obj["left"]), float(obj["top"])
        boxes.append([left / width, top / height, (left + float(obj["width"])) / width,
                      (top + float(obj["height"])) / height])
        class_ids.append(class_id_value(obj["class_id"], ""))
    if not boxes:
        return *empty_objects()[:2], problems
    return np.clip(np.array(boxes, np.float32), 0, 1), np.array(class_ids, np.int32), problems


def check_image_size(size: Any, width: int, height: int) -> str | None:
    """A label's optional ``image_size`` ([{"width", "height", "depth"}]) against the image's real size."""
    if size is None:
        return None
    entry = size[0] if isinstance(size, list) and size else size
    if not isinstance(entry, dict):
        return f"image_size must be [{{\"width\": W, \"height\": H, \"depth\": 3}}], not {shown(size, 60)}"
    given = (entry.get("width"), entry.get("height"))
    if given != (width, height):
        return f"image_size says {given[0]}x{given[1]} but the image is {width}x{height}"
    return None
