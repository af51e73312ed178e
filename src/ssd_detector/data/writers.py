"""Writing samples as SageMaker channels: images with JSON annotations, or RecordIO."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .images import image_kind
from .recordio import RecordWriter
from .sample import Sample


def json_annotation(rel_file: str, width: int, height: int, boxes: np.ndarray, class_ids: np.ndarray,
                    class_names: Mapping[int, str] | None = None) -> dict:
    """The built-in's per-image JSON: pixel left/top/width/height from normalized corners."""
    annotations = []
    for (x0, y0, x1, y1), cls in zip(boxes, class_ids):
        left, top = round(float(x0) * width), round(float(y0) * height)
        right, bottom = round(float(x1) * width), round(float(y1) * height)
        annotations.append({"class_id": int(cls), "left": left, "top": top,
                            "width": max(1, right - left), "height": max(1, bottom - top)})
    doc = {"file": rel_file, "image_size": [{"width": int(width), "height": int(height), "depth": 3}],
           "annotations": annotations}
    if class_names:
        doc["categories"] = [{"class_id": int(k), "name": v} for k, v in sorted(class_names.items())]
    return doc


LABEL_ATTRIBUTE = "bounding-box"


def manifest_line(source_ref: str, width: int, height: int, boxes: np.ndarray, class_ids: np.ndarray,
                  class_names: Mapping[int, str] | None = None, attribute: str = LABEL_ATTRIBUTE) -> dict:
    """One line of a Ground Truth bounding-box augmented manifest."""
    label = json_annotation("", width, height, boxes, class_ids)
    del label["file"]
    meta: dict = {"objects": [{"confidence": 1.0} for _ in class_ids], "type": "groundtruth/object-detection",
                  "human-annotated": "yes"}
    if class_names:
        meta["class-map"] = {str(k): v for k, v in sorted(class_names.items())}
    return {"source-ref": source_ref, attribute: label, f"{attribute}-metadata": meta}


def extension_for(data: bytes) -> str:
    return ".png" if image_kind(data) == "png" else ".jpg"


def write_json_item(image_dir: Path, annotation_dir: Path, stem: str, image: bytes, width: int, height: int,
                    boxes: np.ndarray, class_ids: np.ndarray, class_names: Mapping[int, str] | None = None) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    annotation_dir.mkdir(parents=True, exist_ok=True)
    rel = stem + extension_for(image)
    (image_dir / rel).write_bytes(image)
    doc = json_annotation(rel, width, height, boxes, class_ids, class_names)
    (annotation_dir / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")


def write_recordio(path: Path, items: Iterable[tuple[Sample, bytes]], object_width: int = 5) -> int:
    """Writes (sample, encoded image) pairs as one ``.rec`` (+ ``.idx``); returns the record count.

    object_width 5 is what SageMaker's tools write; 6 adds VOC's difficult flag.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with RecordWriter(path) as writer:
        for sample, image in items:
            writer.write(sample.label_array(object_width), image)
        return writer.count
