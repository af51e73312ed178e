"""The evaluation report's files: the JSON, precision-recall curves, AP by class and by size, and a
contact sheet of the images with the most mistakes (ground truth and predictions in two colours).
Drawn with matplotlib's object API on the Agg canvas: no display, no global pyplot state."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..data.images import encode
from ..drawing import draw
from .truth import ImageTruth
from .voc_map import VOCMeanAP

LOG = logging.getLogger(__name__)
TRUTH_RGB = (40, 220, 40)
PREDICTION_RGB = (235, 40, 40)
SHEET_IMAGES = 12
SHEET_COLUMNS = 3
CELL = (360, 270)  # width, height of one contact-sheet picture
# Predictions drawn on the contact sheet: the confident ones (fainter ones would hide the rest).
DRAWN_SCORE = 0.3
FILES = {"json": "evaluation.json", "pr_curves": "pr_curves.png", "ap_per_class": "ap_per_class.png",
         "ap_per_size": "ap_per_size.png", "worst_images": "worst_images.png"}


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def pr_curves(path: Path, metric: VOCMeanAP, names: dict[int, str], title: str) -> None:
    figure = new_figure(7, 5)
    axes = figure.add_subplot()
    aps = metric.average_precisions()
    for cls in range(metric.num_classes):
        curve = metric.curve(cls)
        if curve is None:
            continue
        recall, precision = curve
        axes.plot(recall, precision, linewidth=1.5, label=f"{names.get(cls, cls)} (AP {aps[cls]:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    if metric.num_classes <= 20:
        axes.legend(loc="lower left", fontsize="small")
    figure.savefig(path)


def bars(path: Path, labels: Sequence[str], values: Sequence[float | None], counts: Sequence[int], title: str,
         xlabel: str) -> None:
    """Horizontal bars, one per label, with the object count beside each; None is drawn as n/a."""
    figure = new_figure(7, max(2.5, 0.35 * len(labels) + 1.2))
    axes = figure.add_subplot()
    shown = [v if v is not None else 0.0 for v in values]
    positions = np.arange(len(labels))
    axes.barh(positions, shown, color="#3b75af")
    for y, value, count in zip(positions, values, counts):
        text = f"{value:.3f}" if value is not None else "n/a"
        axes.text(min((value or 0.0) + 0.01, 0.85), y, f"{text} ({count} objects)", va="center", fontsize="small")
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1), xlabel=xlabel, title=title)
    figure.savefig(path)


def contact_sheet(path: Path, order: Sequence[int], truths: Sequence[ImageTruth], detections: Sequence[np.ndarray],
                  load_image: Callable[[int], np.ndarray], names: dict[int, str]) -> int:
    """The first SHEET_IMAGES of order, ground truth in green and predictions in red -> images drawn."""
    chosen = list(order[:SHEET_IMAGES])
    if not chosen:
        return 0
    rows = (len(chosen) + SHEET_COLUMNS - 1) // SHEET_COLUMNS
    width, height = CELL
    caption = 22
    sheet = np.full((rows * (height + caption), SHEET_COLUMNS * width, 3), 255, np.uint8)
    for slot, index in enumerate(chosen):
        image = load_image(index)
        truth, found = truths[index], detections[index]
        objects = np.column_stack([truth.classes, np.ones(len(truth.classes)), truth.boxes]) \
            if len(truth.classes) else np.zeros((0, 6))
        picture = draw(image, objects, names, TRUTH_RGB, scores=False)
        picture = draw(picture, found[found[:, 1] >= DRAWN_SCORE], names, PREDICTION_RGB)
        scale = min(width / picture.shape[1], height / picture.shape[0])
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        top, left = (slot // SHEET_COLUMNS) * (height + caption), (slot % SHEET_COLUMNS) * width
        sheet[top + caption:top + caption + size[1], left:left + size[0]] = picture
        cv2.putText(sheet, truth.where[-48:], (left + 4, top + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path.write_bytes(encode(sheet, "png"))
    return len(chosen)


def write_report(report_dir: Path, report: dict[str, Any], metric: VOCMeanAP, names: dict[int, str],
                 truths: Sequence[ImageTruth], detections: Sequence[np.ndarray], order: Sequence[int],
                 load_image: Callable[[int], np.ndarray]) -> dict[str, str]:
    """Writes FILES into report_dir -> their paths by kind."""
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: str(report_dir / name) for kind, name in FILES.items()}
    pr_curves(report_dir / FILES["pr_curves"], metric, names,
              f"precision-recall at IoU {report['overlap_threshold']} (VOC07 mAP {report['voc07_map']:.3f})")
    per_class = report["per_class"]
    bars(report_dir / FILES["ap_per_class"], list(per_class), [c["voc07_ap"] for c in per_class.values()],
         [c["objects"] for c in per_class.values()], "AP per class", "VOC07 AP")
    per_size = report["per_size"]
    bars(report_dir / FILES["ap_per_size"], list(per_size), [s["voc07_ap"] for s in per_size.values()],
         [s["objects"] for s in per_size.values()], "AP per object size (COCO pixel areas)", "VOC07 AP")
    drawn = contact_sheet(report_dir / FILES["worst_images"], order, truths, detections, load_image, names)
    LOG.info("report: %d images with the most mistakes drawn (green: ground truth, red: predictions >= %.1f)",
             drawn, DRAWN_SCORE)
    (report_dir / FILES["json"]).write_text(json.dumps({**report, "report": paths}, indent=2))
    return paths
