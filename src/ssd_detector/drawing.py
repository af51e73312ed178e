"""Detections drawn on the image: labelled boxes, one colour per class."""
from __future__ import annotations

import cv2
import numpy as np


def draw(image_rgb: np.ndarray, rows: np.ndarray, class_names: dict[int, str] | None = None,
         colour_rgb: tuple[int, int, int] | None = None, scores: bool = True) -> np.ndarray:
    """The image with each row's box and "name score" label drawn (RGB uint8): one colour per
    class, or colour_rgb for every box; scores=False leaves the score out (ground truth)."""
    out = np.ascontiguousarray(image_rgb.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    for cls, score, x0, y0, x1, y1 in rows:
        hue = int(cls) * 47 % 180
        colour = list(colour_rgb) if colour_rgb is not None else \
            cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        p0, p1 = (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h))
        cv2.rectangle(out, p0, p1, colour, thickness)
        name = (class_names or {}).get(int(cls), str(int(cls)))
        label = f"{name} {score:.2f}" if scores else name
        scale = 0.4 * thickness
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(p0[1], th + base)
        cv2.rectangle(out, (p0[0], top - th - base), (p0[0] + tw, top), colour, -1)
        cv2.putText(out, label, (p0[0], top - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
