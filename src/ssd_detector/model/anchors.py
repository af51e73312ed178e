"""SSD anchor layouts and anchor boxes.

The layouts of the SSD paper and GluonCV are used where they are defined (VGG-16 at 300 and
512; ResNet-50 and MobileNet at 512); any other size gets the same rule scaled to its feature
maps. Anchors are normalized corners (x0, y0, x1, y1), one row per anchor, ordered by feature
map, then row, column, then anchor shape: (s_k, 1), (sqrt(s_k s_k+1), 1), then s_k at each
other aspect ratio, as MXNet's MultiBoxPrior orders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import HyperparameterError

WIDE = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
NARROW = (1.0, 2.0, 0.5)
# Anchor sizes (fractions of the image side) of the published layouts, one more than layers.
_GLUONCV_300 = (30, 60, 111, 162, 213, 264, 315)
_VGG_512 = (51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)
_OTHER_512 = (51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492)


@dataclass(frozen=True)
class AnchorLayout:
    """Per feature map: its size (square), the anchor sizes (s_k, s_k+1) and aspect ratios."""

    image_size: int
    feature_sizes: tuple[int, ...]
    sizes: tuple[float, ...]  # len(feature_sizes) + 1, fractions of the image side
    ratios: tuple[tuple[float, ...], ...]
    steps: tuple[float, ...]  # pixels between anchor centres

    @property
    def anchors_per_location(self) -> tuple[int, ...]:
        return tuple(len(r) + 1 for r in self.ratios)

    @property
    def num_anchors(self) -> int:
        return sum(f * f * a for f, a in zip(self.feature_sizes, self.anchors_per_location))


def default_ratios(num_layers: int) -> tuple[tuple[float, ...], ...]:
    """SSD's pattern: 4 anchor shapes on the first and the last two maps, 6 on the others."""
    if num_layers < 3:
        return tuple(NARROW for _ in range(num_layers))
    return (NARROW,) + tuple(WIDE for _ in range(num_layers - 3)) + (NARROW, NARROW)


def make_layout(base_network: str, image_size: int, feature_sizes: Sequence[int],
                anchor_sizes: Sequence[float] = ()) -> AnchorLayout:
    """The layout of a network whose feature maps are feature_sizes at image_size; anchor_sizes
    (the anchor_sizes hyperparameter, one per map plus one) replaces the default sizes."""
    feature_sizes = tuple(int(f) for f in feature_sizes)
    layers = len(feature_sizes)
    if base_network == "vgg-16" and image_size == 300 and layers == 6:
        sizes = tuple(s / 300 for s in _GLUONCV_300)
        steps: tuple[float, ...] = (8, 16, 32, 64, 100, 300)
    elif base_network == "vgg-16" and image_size == 512 and layers == 7:
        sizes = tuple(s / 512 for s in _VGG_512)
        steps = (8, 16, 32, 64, 128, 256, 512)
    elif image_size == 512 and layers == 6:
        sizes = tuple(s / 512 for s in _OTHER_512)
        steps = (16, 32, 64, 128, 256, 512)
    else:
        # GluonCV's rule for MobileNet at 300: 0.07 on the first map, evenly from 0.15 to 0.87, then 1.05.
        sizes = (0.07,) + tuple(np.linspace(0.15, 0.87, layers - 1)) + (1.05,) if layers > 1 else (0.07, 1.05)
        steps = tuple(image_size / f for f in feature_sizes)
    if anchor_sizes:
        if len(anchor_sizes) != layers + 1:
            default = ",".join(f"{s:.4g}" for s in sizes)
            raise HyperparameterError(
                f"anchor_sizes={','.join(f'{s:g}' for s in anchor_sizes)} has {len(anchor_sizes)} sizes; "
                f"base_network={base_network} at image_shape={image_size} has {layers} feature maps, so it takes "
                f"{layers + 1} (its default: {default})")
        sizes = tuple(anchor_sizes)
    return AnchorLayout(image_size, feature_sizes, tuple(float(s) for s in sizes), default_ratios(layers),
                        tuple(float(s) for s in steps))


def generate_anchors(layout: AnchorLayout) -> np.ndarray:
    """All anchors of a layout -> (num_anchors, 4) float32 normalized corners (not clipped)."""
    out = []
    for k, (fsize, ratios, step) in enumerate(zip(layout.feature_sizes, layout.ratios, layout.steps)):
        s_k, s_next = layout.sizes[k], layout.sizes[k + 1]
        shapes = [(s_k, s_k), (np.sqrt(s_k * s_next),) * 2]
        shapes += [(s_k * np.sqrt(r), s_k / np.sqrt(r)) for r in ratios[1:]]
        wh = np.array(shapes, np.float32)  # (A, 2)
        centres = (np.arange(fsize, dtype=np.float32) + 0.5) * step / layout.image_size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # (F, F) each
        cxy = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # (F*F, 1, 2)
        boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=-1)  # (F*F, A, 4)
        out.append(boxes.reshape(-1, 4))  # (F*F, A, 4) -> (F*F*A, 4)
    return np.concatenate(out).astype(np.float32)
