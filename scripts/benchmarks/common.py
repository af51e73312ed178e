"""What several benchmarks share: the synthetic sets they train on, a training job run through the
real entry point (`ssd-detector train` on a SageMaker-style tree) and read back from its metric
lines, held-out scoring, and how a benchmark starts another one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ssd_detector.sagemaker_env import write_job
from ssd_detector.training.metrics import metric_values

# The synthetic sets: 5 classes of 320x240 images.
CLASSES, WIDTH, HEIGHT = 5, 320, 240
HELD_OUT_PHOTO_EVERY = 4  # every 4th packaged photograph (by name) shows only in held-out images
# Another benchmark, started as a process of its own: [*BENCH, NAME, options...].
BENCH = [sys.executable, str(Path(__file__).resolve().parents[1] / "bench.py")]


def split_photos(root: Path) -> tuple[Path, Path]:
    """Folders of links to the packaged photographs: one for training and validation images, one
    (every HELD_OUT_PHOTO_EVERY-th by name) for held-out images only."""
    from ssd_detector.data.synth_photo import find_photos

    photos = sorted(find_photos(None), key=lambda p: p.name)
    seen, unseen = root / "photos/seen", root / "photos/unseen"
    for folder in (seen, unseen):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for index, photo in enumerate(photos):
        folder = unseen if index % HELD_OUT_PHOTO_EVERY == HELD_OUT_PHOTO_EVERY - 1 else seen
        (folder / photo.name).symlink_to(photo)
    return seen, unseen


def make_sets(root: Path, family: str, train: int, validation: int, test: int, seed: int = 31,
              data_format: str = "recordio") -> tuple[Path, Path]:
    """Training and validation sets under root/data (``data_format`` as `synth --format` takes it)
    and a held-out RecordIO split made with another seed -> (root/data, the held-out channel).
    Made once per family, size and format; the photo family's held-out images are drawn on
    photographs its training images never show."""
    from ssd_detector.data.synthetic import SynthSpec, generate

    data, held_out = root / "data", root / "test"
    marker = root / f".made-{family}-{train}-{validation}-{test}-{seed}-{data_format}"
    if not marker.exists():
        for folder in (data, held_out):
            shutil.rmtree(folder, ignore_errors=True)
        seen, unseen = split_photos(root) if family == "photo" else (None, None)
        common = dict(classes=CLASSES, width=WIDTH, height=HEIGHT, style=family)
        generate(data, SynthSpec(train=train, validation=validation, seed=seed, backgrounds=str(seen or ""),
                                 format=data_format, **common))
        generate(held_out, SynthSpec(train=0, validation=test, seed=seed + 1, backgrounds=str(unseen or ""),
                                     format="recordio", **common))
        marker.touch()
    return data, held_out / "validation"


def job_tree(base: Path, hyperparameters: Mapping[str, str], channels: Mapping[str, Path] | None = None,
             input_data_config: dict | None = None) -> Path:
    """A fresh /opt/ml tree at base (channels linked, not copied)."""
    shutil.rmtree(base, ignore_errors=True)
    return write_job(base, dict(hyperparameters), dict(channels) if channels else None, link=True,
                     input_data_config=input_data_config).base


@dataclass
class TrainRun:
    wall_seconds: float
    finished: bool  # False: stopped at the budget (SIGTERM, so the best model so far was saved)
    log: str

    def values(self, metric: str) -> list[float]:
        """Every value of a metric (a METRIC_DEFINITIONS name such as "validation:mAP") in order."""
        return metric_values(self.log, metric)

    @property
    def epochs(self) -> int:
        """Epochs completed: one progress line each."""
        return len(self.values("train:progress"))


def train(base: Path, log_path: Path, env: Mapping[str, str] | None = None, budget: float | None = None) -> TrainRun:
    """`ssd-detector train` on the tree at base, its log in log_path; stopped with SIGTERM after
    budget seconds. Raises RuntimeError when the job fails."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "ssd_detector.cli", "train"], stdout=log, stderr=log,
                                   env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "1",
                                        **(env or {})})
        try:
            code = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            process.terminate()  # the job saves its best model so far on SIGTERM, as on SageMaker
            process.wait(timeout=120)
            code = None
    if code not in (0, None):
        raise RuntimeError(f"training failed (exit {code}); see {log_path}")
    return TrainRun(time.monotonic() - start, code == 0, log_path.read_text())


def held_out(model_dir: Path, test_dir: Path) -> dict:
    """VOC07 mAP of the model on the held-out channel, overall and per size (evaluation's code)."""
    from ssd_detector.data.channel import read_channel
    from ssd_detector.evaluation.evaluate import held_out_scores
    from ssd_detector.inference import Predictor

    return held_out_scores(read_channel(test_dir), Predictor.load(model_dir), CLASSES)


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (one run: no spread)"
    return (f"mean {np.mean(values):.4f}, std {np.std(values, ddof=1):.4f}, range {min(values):.4f}-{max(values):.4f} "
            f"over {len(values)} runs")


def sizes_text(by_size: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in by_size.items())
