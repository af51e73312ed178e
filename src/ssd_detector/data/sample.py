"""The one in-memory form every input format is read into."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """Where the encoded bytes (JPEG or PNG) of one image are.

    Either a byte range of a file (cheap to send to worker processes) or, for the rare
    RecordIO record that had to be split around the magic number, the bytes themselves.
    """

    path: str
    offset: int = 0
    length: int = -1  # -1: to the end of the file
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read() if self.length < 0 else handle.read(self.length)


@dataclass
class Sample:
    """One image with its objects.

    boxes: (N, 4) float32 corners xmin, ymin, xmax, ymax normalized to [0, 1] by the image size.
    class_ids: (N,) int32, contiguous from 0. difficult: (N,) bool (VOC's flag; ignored by mAP).
    """

    image: ImageRef
    boxes: np.ndarray
    class_ids: np.ndarray
    difficult: np.ndarray
    where: str  # shown in errors: a file name, or "file.rec#record"
    width: int = 0  # pixel size, when known without decoding
    height: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return int(self.class_ids.shape[0])

    def label_array(self, object_width: int = 6) -> np.ndarray:
        """The packed RecordIO label: [header_width=2, object_width, (cls, x0, y0, x1, y1[, difficult])...]."""
        rows = np.concatenate([self.class_ids[:, None].astype(np.float32), self.boxes.astype(np.float32)], axis=1)
        if object_width >= 6:
            rows = np.concatenate([rows, self.difficult[:, None].astype(np.float32)], axis=1)
        header = np.array([2, rows.shape[1]], dtype=np.float32)
        return np.concatenate([header, rows.reshape(-1)])  # (2 + N * object_width,)


def empty_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), np.zeros((0,), bool)


@dataclass
class Issue:
    """One problem found in a data set: where it is and what is wrong."""

    where: str
    what: str

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "what": self.what}
