"""`ssd-detector evaluate` through the CLI on a trained model: the figure training logged, both
channel formats, the report's pictures, and bad data refused as check-data reports it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

CLI = [sys.executable, "-m", "ssd_detector.cli"]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "evaluate", *args], capture_output=True, text=True, timeout=300)


def test_voc07_equals_the_training_log_and_the_report_is_drawn(trained_model: tuple[Path, str], synth_set: Path,
                                                               tmp_path: Path):
    model, log = trained_model
    best = float(re.search(r"best validation mAP (\S+) at epoch", log).group(1))
    result = evaluate(str(synth_set / "json/validation"), "--annotations", str(synth_set / "json/validation_annotation"),
                      "--model-dir", str(model), "--output", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["voc07_map"] == pytest.approx(best, abs=1e-5)
    assert set(report) >= {"voc07_map", "voc12_map", "coco_map", "per_class", "per_size", "images", "objects",
                           "images_per_second"}
    assert list(report["per_class"]) == ["circle", "square", "triangle"]  # names from the JSON categories
    assert set(report["per_size"]) == {"small", "medium", "large"} and report["images"] == 4
    for kind, path in report["report"].items():
        assert Path(path).is_file(), kind
        if path.endswith(".png"):
            picture = cv2.imread(path)
            assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 300, (kind, picture)
    assert json.loads((tmp_path / "report/evaluation.json").read_text())["voc07_map"] == report["voc07_map"]
    # The same images from RecordIO: the same figures.
    again = evaluate(str(synth_set / "recordio/validation"), "--model-dir", str(model), "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["voc07_map"] == pytest.approx(report["voc07_map"], abs=1e-6)
    assert "report" not in json.loads(again.stdout) and "evaluate:" not in again.stderr


def test_bad_data_is_refused_with_check_datas_words(trained_model: tuple[Path, str], synth_set: Path, tmp_path: Path):
    model = trained_model[0]
    broken = tmp_path / "annotations"
    broken.mkdir()
    for source in sorted((synth_set / "json/validation_annotation").iterdir()):
        (broken / source.name).write_text(source.read_text())
    first = sorted(broken.iterdir())[0]
    doc = json.loads(first.read_text())
    doc["annotations"][0]["class_id"] = 7
    first.write_text(json.dumps(doc))
    result = evaluate(str(synth_set / "json/validation"), "--annotations", str(broken), "--model-dir", str(model))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert first.stem in result.stderr and "class id 7" in result.stderr, result.stderr[-2000:]
    result = evaluate(str(tmp_path / "absent"), "--model-dir", str(model))
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = evaluate(str(synth_set / "recordio/validation"), "--model-dir", str(model), "--threshold", "2")
    assert result.returncode == 1 and "--threshold 2" in result.stderr
