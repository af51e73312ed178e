"""The training report in output/data/report/ (SageMaker packs output/data into output.tar.gz):
``metrics.csv`` and ``curves.png`` (both losses, validation mAP and learning rate by epoch),
rewritten after every epoch, and at the end the evaluation report of the saved model on the
validation channel (``validation/``). Written by rank 0 only. Drawing is never allowed to fail
training: any error becomes a warning."""
from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)
CSV_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
EVALUATION_DIR = "validation"


@dataclass(frozen=True)
class EpochRow:
    epoch: int
    cross_entropy: float
    smooth_l1: float
    validation_map: float | None
    learning_rate: float
    seconds: float
    images_per_second: float


class TrainingReport:
    def __init__(self, report_dir: Path, enabled: bool) -> None:
        self.report_dir = report_dir
        self.enabled = enabled
        self.rows: list[EpochRow] = []

    def add_epoch(self, row: EpochRow) -> None:
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.epoch < row.epoch] + [row]  # a resumed job redoes an epoch
        try:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            self._write_csv()
            self._draw_curves()
        except Exception as exc:  # noqa: BLE001 - a report must never stop training
            LOG.warning("training report not updated (%s: %s)", type(exc).__name__, exc)

    def _write_csv(self) -> None:
        path = self.report_dir / CSV_FILE
        staged = path.with_suffix(".tmp")
        with open(staged, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(asdict(self.rows[0])))
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
        staged.replace(path)

    def _draw_curves(self) -> None:
        from ..evaluation.report import new_figure

        epochs = [r.epoch for r in self.rows]
        figure = new_figure(9, 6)
        losses, maps, rates = figure.add_subplot(2, 2, 1), figure.add_subplot(2, 2, 2), figure.add_subplot(2, 2, 3)
        losses.plot(epochs, [r.cross_entropy for r in self.rows], marker=".", label="cross_entropy")
        losses.plot(epochs, [r.smooth_l1 for r in self.rows], marker=".", label="smooth_l1")
        losses.set(title="training losses", xlabel="epoch")
        losses.legend(fontsize="small")
        validated = [(r.epoch, r.validation_map) for r in self.rows if r.validation_map is not None]
        if validated:
            maps.plot(*zip(*validated), marker=".", color="#2a9d55")
        maps.set(title="validation mAP (VOC07)" if validated else "validation mAP: no validation channel",
                 xlabel="epoch", ylim=(0, 1))
        rates.plot(epochs, [r.learning_rate for r in self.rows], marker=".", color="#b5522b")
        rates.set(title="learning rate (at the end of the epoch)", xlabel="epoch")
        speed = figure.add_subplot(2, 2, 4)
        speed.plot(epochs, [r.images_per_second for r in self.rows], marker=".", color="#6b4fa0")
        speed.set(title="training images/s", xlabel="epoch")
        for axes in (losses, maps, rates, speed):
            axes.grid(alpha=0.3)
        staged = self.report_dir / ("." + CURVES_FILE)
        figure.savefig(staged, format="png")
        staged.replace(self.report_dir / CURVES_FILE)

    def evaluate_model(self, model_dir: Path, validation: object, num_classes: int) -> None:
        """The evaluation report of the saved model on the validation channel (File mode data)."""
        if not self.enabled:
            return
        from ..data.channel import ChannelData

        if not isinstance(validation, ChannelData):
            LOG.info("training report: no final evaluation (the validation channel is %s)",
                     "absent" if validation is None else "streamed in Pipe mode")
            return
        try:
            from ..evaluation.evaluate import evaluate
            from ..inference import Predictor

            report = evaluate(validation, Predictor(model_dir), num_classes, 0.0, self.report_dir / EVALUATION_DIR,
                              quiet=True)
            LOG.info("training report: saved model on the validation channel: VOC07 mAP %.4f, VOC12 %.4f, COCO "
                     "AP@[.5:.95] %.4f (%s)", report["voc07_map"], report["voc12_map"], report["coco_map"],
                     self.report_dir / EVALUATION_DIR)
        except Exception as exc:  # noqa: BLE001 - a report must never fail training
            LOG.warning("training report: final evaluation not written (%s: %s)", type(exc).__name__, exc)
