"""`ssd-detector evaluate`: a model on a labelled channel -> the metrics as one JSON object, and
a report folder of pictures.

``voc07_map`` is the figure training logs as validation mAP: the same transform (the image
resized to S x S), the same graph and the same VOCMeanAP, so the two agree for the same model
and data. ``voc12_map`` is the all-point AP of VOC2010 and later, ``coco_map`` AP@[.5:.95]
through pycocotools; ``per_size`` is VOC07 AP by COCO's pixel-area bounds on the source image.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..boxes import box_iou
from ..data.channel import ChannelData
from ..data.images import ImageError, decode_rgb
from ..errors import UserError
from ..progress import Progress
from .by_size import SizedMeanAP
from .coco import coco_map
from .truth import ImageTruth
from .voc_map import VOCMeanAP

LOG = logging.getLogger(__name__)
BATCH = 8
# A detection at least this confident counts when ranking images by their mistakes.
CONFIDENT = 0.5


def read_truth_and_detect(data: ChannelData, predictor: Any, threshold: float,
                          progress: Progress) -> tuple[list[ImageTruth], list[np.ndarray], float]:
    """Every image of data through the predictor -> truths, detections (K, 6) per image and the
    seconds spent predicting."""
    truths: list[ImageTruth] = []
    detections: list[np.ndarray] = []
    seconds = 0.0
    samples = data.samples
    for start in range(0, len(samples), BATCH):
        chunk = samples[start:start + BATCH]
        images = []
        for sample in chunk:
            try:
                images.append(decode_rgb(sample.image.read()))
            except (ImageError, OSError) as exc:
                raise UserError(f"{sample.where}: {exc}") from None
        begin = time.perf_counter()
        rows = predictor.predict_batch(images, threshold)
        seconds += time.perf_counter() - begin
        for sample, image, found in zip(chunk, images, rows):
            height, width = image.shape[:2]
            truths.append(ImageTruth(sample.where, width, height, sample.boxes, sample.class_ids.astype(np.int64),
                                     sample.difficult.astype(bool)))
            detections.append(found)
        progress.advance(len(chunk))
    return truths, detections, seconds


def sized_voc07(truths: Sequence[ImageTruth], detections: Sequence[np.ndarray], num_classes: int,
                overlap: float = 0.5) -> SizedMeanAP:
    """VOC07 mAP, overall and per object size, of detections (K, 6) per image against their truths."""
    metric = SizedMeanAP(num_classes, overlap, voc07=True)
    for truth, rows in zip(truths, detections):
        metric.update(rows[:, 2:6], rows[:, 0].astype(np.int64), rows[:, 1], truth.boxes, truth.classes,
                      truth.difficult, truth.width, truth.height)
    return metric


def held_out_scores(data: ChannelData, predictor: Any, num_classes: int) -> dict[str, Any]:
    """What the benchmarks report for a held-out split: ``map`` (VOC07), ``by_size`` (VOC07 AP per
    size, None for a size without objects) and ``objects_by_size``."""
    truths, detections, _ = read_truth_and_detect(data, predictor, 0.0, Progress("score", quiet=True))
    metric = sized_voc07(truths, detections, num_classes)
    return {"map": metric.value(), "by_size": metric.size_values(), "objects_by_size": metric.counts}


def metrics(truths: Sequence[ImageTruth], detections: Sequence[np.ndarray], num_classes: int,
            class_names: dict[int, str], overlap: float = 0.5) -> tuple[dict[str, Any], VOCMeanAP]:
    """The report's figures; also the VOC07 metric, whose curves the report draws."""
    voc07 = sized_voc07(truths, detections, num_classes, overlap)
    voc12 = VOCMeanAP(num_classes, overlap, voc07=False)
    for truth, rows in zip(truths, detections):
        voc12.update(rows[:, 2:6], rows[:, 0].astype(np.int64), rows[:, 1], truth.boxes, truth.classes,
                     truth.difficult)
    aps07, aps12 = voc07.overall.average_precisions(), voc12.average_precisions()
    positives = voc07.overall.positives
    per_class = {}
    for cls in range(num_classes):
        name = class_names.get(cls, str(cls))
        per_class[name] = {"class_id": cls, "objects": int(positives[cls]),
                           "voc07_ap": None if np.isnan(aps07[cls]) else float(aps07[cls]),
                           "voc12_ap": None if np.isnan(aps12[cls]) else float(aps12[cls])}
    sizes = voc07.size_values()
    coco = coco_map(truths, detections, num_classes)
    report = {
        "voc07_map": voc07.value(),
        "voc12_map": voc12.value(),
        "coco_map": coco["map"],
        "coco": coco,
        "per_class": per_class,
        "per_size": {name: {"voc07_ap": sizes[name], "objects": voc07.counts[name], "coco_ap": coco[name]}
                     for name in sizes},
        "images": len(truths),
        "objects": int(sum(len(t.classes) for t in truths)),
        "difficult_objects": int(sum(int(t.difficult.sum()) for t in truths)),
        "detections": int(sum(len(d) for d in detections)),
        "overlap_threshold": overlap,
    }
    return report, voc07.overall


def mistakes(truth: ImageTruth, rows: np.ndarray, overlap: float = 0.5, confident: float = CONFIDENT) -> int:
    """Objects missed plus confident detections that match no object of their class (IoU >= overlap)."""
    rows = rows[rows[:, 1] >= confident]
    matched = np.zeros(len(truth.classes), bool)
    false_positives = 0
    iou = box_iou(rows[:, 2:6], truth.boxes) if len(rows) and len(truth.boxes) else np.zeros((len(rows), 0))
    for i, row in enumerate(rows):
        candidates = np.flatnonzero((truth.classes == int(row[0])) & ~matched & (iou[i] >= overlap)) \
            if iou.shape[1] else np.zeros(0, int)
        if candidates.size:
            matched[candidates[np.argmax(iou[i, candidates])]] = True
        else:
            false_positives += 1
    missed = int((~matched & ~truth.difficult).sum())
    return missed + false_positives


def evaluate(data: ChannelData, predictor: Any, num_classes: int, threshold: float, report_dir: Path | None,
             quiet: bool = False) -> dict[str, Any]:
    """The JSON object `evaluate` prints; with report_dir, the pictures too (see report.py)."""
    if not data.samples:
        raise UserError(f"{data.name}: no labelled image to evaluate")
    progress = Progress("evaluate", total=len(data.samples), unit="images", quiet=quiet)
    truths, detections, seconds = read_truth_and_detect(data, predictor, threshold, progress)
    progress.close()
    report, voc07 = metrics(truths, detections, num_classes, predictor.class_names)
    report["images_per_second"] = len(truths) / max(seconds, 1e-9)
    report["threshold"] = threshold
    if report_dir is not None:
        from .report import write_report

        order = sorted(range(len(truths)), key=lambda i: -mistakes(truths[i], detections[i]))
        report["report"] = write_report(Path(report_dir), report, voc07, predictor.class_names, truths, detections,
                                        order, lambda i: decode_rgb(data.samples[i].image.read()))
    return report
