"""The shapes of the synthetic sets: one per class, drawn by OpenCV into an image or a mask."""
from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon", "bar", "arrow")


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in rng.integers(0, 256, 3))
    return r, g, b


def polygon(kind: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
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


def draw_shape(image: np.ndarray, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """Draws kind filling box (x0, y0, x1, y1 in pixels, may reach past the image) in colour."""
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
        cv2.fillPoly(image, [polygon(kind, x0, y0, w - 1, h - 1)], colour, cv2.LINE_AA)
