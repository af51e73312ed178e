"""MXNet ``.lst`` files for detection: ``index \\t 2 \\t 5 \\t cls \\t x0 \\t y0 \\t x1 \\t y1 ... \\t path``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .channel import ChannelData
from .labels import LabelError, check_boxes, clip_boxes, unpack_detection_label
from .sample import ImageRef, Issue, Sample


def read_lst(list_file: Path | str, image_root: Path | str) -> ChannelData:
    """Reads a detection ``.lst``; image paths are relative to image_root."""
    list_file, image_root = Path(list_file), Path(image_root)
    data = ChannelData(name=list_file.stem, format="lst")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        data.issues.append(Issue(str(list_file), f"cannot read: {exc}"))
        return data
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{list_file.name}:{number}"
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 4:
            data.issues.append(Issue(where, f"has {len(cols)} tab-separated columns; a detection line is "
                                            "index, header width, object width, objects..., image path"))
            continue
        try:
            label = np.array([float(c) for c in cols[1:-1]], np.float32)
            boxes, class_ids, difficult, width = unpack_detection_label(label)
        except ValueError as exc:
            data.issues.append(Issue(where, str(exc) if isinstance(exc, LabelError) else f"not a number: {exc}"))
            continue
        problems = check_boxes(boxes)
        for problem in problems:
            data.issues.append(Issue(where, problem))
        path = image_root / cols[-1].strip()
        if not path.is_file():
            data.issues.append(Issue(where, f"image {cols[-1].strip()!r} not found under {image_root}"))
            continue
        if not problems:
            data.samples.append(Sample(ImageRef(str(path)), clip_boxes(boxes), class_ids, difficult, where))
            data.label_widths.append(width)
    return data
