"""The training report: one CSV row per epoch (a resumed epoch replaces its row), the curves, and
errors that stay warnings."""
from __future__ import annotations

import logging
from pathlib import Path

from ssd_detector.training.report import EpochRow, TrainingReport


def row(epoch: int, validation: float | None = 0.5) -> EpochRow:
    return EpochRow(epoch, 3.0 - epoch, 2.0 - epoch / 2, validation, 0.01, 30.0, 50.0)


def test_rows_and_curves(tmp_path: Path):
    report = TrainingReport(tmp_path / "report", enabled=True)
    for epoch in (0, 1, 2):
        report.add_epoch(row(epoch))
    report.add_epoch(row(1, validation=None))  # a resumed job redoes epoch 1
    lines = (tmp_path / "report/metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,cross_entropy,smooth_l1,validation_map,learning_rate,seconds,images_per_second"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1"] and lines[2].split(",")[3] == ""
    assert (tmp_path / "report/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_that_cannot_be_written_is_a_warning(tmp_path: Path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    report = TrainingReport(blocked / "report", enabled=True)
    with caplog.at_level(logging.WARNING):
        report.add_epoch(row(0))
        report.evaluate_model(tmp_path / "no-model", None, 3)
    assert "training report not updated" in caplog.text


def test_other_workers_write_nothing(tmp_path: Path):
    TrainingReport(tmp_path / "report", enabled=False).add_epoch(row(0))
    assert not (tmp_path / "report").exists()
