"""The ground truth of one evaluated image, with its source size in pixels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageTruth:
    where: str  # the file or record, as check-data names it
    width: int
    height: int
    boxes: np.ndarray  # (G, 4) normalized corners
    classes: np.ndarray  # (G,) int
    difficult: np.ndarray  # (G,) bool
