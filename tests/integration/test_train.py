"""`ssd-detector train` as the container runs it: a real process on a SageMaker-style tree."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import mxnet as mx
import numpy as np

from ssd_detector.data.synthetic import SynthSpec, generate
from ssd_detector.sagemaker_env import write_job
from ssd_detector.training.metrics import METRIC_DEFINITIONS

CLI = [sys.executable, "-m", "ssd_detector.cli"]
TINY = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "64", "mini_batch_size": "8",
        "learning_rate": "0.02", "use_pretrained_model": "0"}


def make_job(root: Path, synth_set: Path, hyperparameters: dict, fmt: str = "recordio") -> Path:
    channels = {d.name: d for d in (synth_set / fmt).iterdir() if d.is_dir()}
    return write_job(root / "opt_ml", hyperparameters, channels).base


def train(base: Path, workers: str = "0", timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "train"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": workers, **env})


def metric_values(log: str, name: str) -> list[float]:
    regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
    return [float(m.group(1)) for m in re.finditer(regex, log)]


def test_train_end_to_end_then_predict(tmp_path: Path, synth_set: Path):
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "6"}, fmt="json")
    result = train(base, workers="1")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "Traceback" not in log and "Exception ignored" not in log
    for definition in METRIC_DEFINITIONS:
        assert metric_values(log, definition["Name"]), definition["Name"]
    assert metric_values(log, "train:progress")[-1] == 100
    assert len(metric_values(log, "validation:mAP")) == 6
    ce = metric_values(log, "train:cross_entropy")
    assert ce[-1] < ce[0], "training loss must fall"
    model = base / "model"
    assert sorted(p.name for p in model.iterdir()) == ["classes.json", "hyperparams.json",
                                                       "model_algo_1-0000.params", "model_algo_1-symbol.json"]
    hyper = json.loads((model / "hyperparams.json").read_text())
    assert all(isinstance(v, str) for v in hyper.values())
    assert hyper["num_training_samples"] == "16" and hyper["nms_topk"] == "400"
    assert json.loads((model / "classes.json").read_text()) == {"0": "circle", "1": "square", "2": "triangle"}
    assert not (base / "output/failure").exists()
    # The training report: one CSV row per epoch, the curves, and the saved model's evaluation.
    report = base / "output/data/report"
    rows = (report / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,cross_entropy,smooth_l1,validation_map,learning_rate") and len(rows) == 7
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((report / "validation/evaluation.json").read_text())
    best = float(re.search(r"best validation mAP (\S+) at epoch", log).group(1))
    assert abs(evaluation["voc07_map"] - best) < 1e-5
    assert re.search(r"Epoch 5: .* elapsed, 0:00 left", log)

    images = sorted((synth_set / "json/validation").iterdir())[:2]
    out = tmp_path / "predictions.json"
    result = subprocess.run([*CLI, "predict", "--model-dir", str(model), "--output", str(out), "--draw",
                             str(tmp_path / "drawn"), *map(str, images)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(out.read_text())
    assert sorted(predictions) == sorted(p.name for p in images)
    for rows in predictions.values():
        scores = [r[1] for r in rows]
        assert scores == sorted(scores, reverse=True)
        for cls, score, x0, y0, x1, y1 in rows:
            assert cls in (0, 1, 2) and 0 <= score <= 1
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(p.stem + ".png" for p in images)


def test_bad_hyperparameters_fail_with_reason(tmp_path: Path, synth_set: Path):
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "1", "image_shape": "\"abc\""})
    result = train(base)
    assert result.returncode == 1
    failure = (base / "output/failure").read_text()
    assert "image_shape='\"abc\"' is not valid" in failure


def test_anchor_sizes_reach_the_saved_model(tmp_path: Path, synth_set: Path):
    from ssd_detector.model.ssd import SSD

    default = SSD("mobilenet-0.25", 3, 64).layout
    sizes = (0.05,) + default.sizes[1:]
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "1", "anchor_sizes": ",".join(map(str, sizes))})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = mx.nd.load(str(base / "model/model_algo_1-0000.params"))
    first = saved["arg:anchors"].asnumpy()[0, 0] * 64  # (1, N, 4) normalized corners
    half = 0.05 * 64 / 2
    centre = default.steps[0] / 2
    np.testing.assert_allclose(first, [centre - half, centre - half, centre + half, centre + half], atol=1e-3)
    assert json.loads((base / "model/hyperparams.json").read_text())["anchor_sizes"] == ",".join(map(str, sizes))


def test_anchor_sizes_of_the_wrong_count_fail_with_reason(tmp_path: Path, synth_set: Path):
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "1", "anchor_sizes": "0.1,0.5"})
    result = train(base)
    assert result.returncode == 1
    failure = (base / "output/failure").read_text()
    assert "anchor_sizes=0.1,0.5 has 2 sizes" in failure and "so it takes" in failure


def test_missing_imagenet_weights_fail_clearly(tmp_path: Path, synth_set: Path):
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "1", "use_pretrained_model": "1"})
    result = train(base, MXNET_HOME=str(tmp_path / "empty"))
    assert result.returncode == 1
    failure = (base / "output/failure").read_text()
    assert str(tmp_path / "empty" / "models") in failure and "use_pretrained_model=0" in failure


def test_sigterm_saves_a_checkpoint_and_a_restart_resumes(tmp_path: Path, synth_set: Path):
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "200", "mini_batch_size": "2"})
    (base / "checkpoints").mkdir()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "1"}
    process = subprocess.Popen([*CLI, "train"], stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stderr:
        seen.append(line)
        if "epoch=1, batch=" in line:  # mid-epoch, after one full epoch and a checkpoint
            process.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "training did not start"
    start = time.monotonic()
    _, rest = process.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert process.returncode == 0, "".join(seen) + rest
    assert "stopped by SIGTERM during epoch 1" in rest
    [saved] = sorted((base / "checkpoints").glob("ssd-checkpoint-*"))[-1:]
    state = json.loads((saved / "ssd-checkpoint.json").read_text())
    assert state["next_epoch"] == 1
    # A restart (as spot training does) resumes at the interrupted epoch.
    write_job(base, {**TINY, "epochs": "2", "mini_batch_size": "2"})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint" in result.stderr and "at epoch 1" in result.stderr
    assert "epoch=0," not in result.stderr.split("resuming from checkpoint")[1]
    newest = sorted((base / "checkpoints").glob("ssd-checkpoint-*"))
    assert len(newest) == 2, "the newest checkpoint and the one before it"
    assert json.loads((newest[-1] / "ssd-checkpoint.json").read_text())["next_epoch"] == 2
    assert not list((base / "checkpoints").glob(".*")), "no temporary folders left"


def test_time_budget_moves_the_end_and_the_steps_earlier(tmp_path: Path, synth_set: Path):
    # Far more epochs than 20 s hold: the job ends in time, with its two drops before the end, and
    # the epoch the budget made the last is validated (validation_interval alone would skip it).
    hyperparameters = {**TINY, "epochs": "5000", "lr_scheduler_step": "4990,4995", "time_budget_seconds": "20",
                       "validation_interval": "1000"}
    base = make_job(tmp_path, synth_set, hyperparameters)
    (base / "checkpoints").mkdir()
    start = time.monotonic()
    result = train(base)
    wall = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert wall < 20 + 15, f"{wall:.0f} s for a 20 s budget (the process's start and imports are not counted)"
    assert re.search(r"time_budget_seconds=20: epochs \d+ to 4999 do not fit", result.stderr)
    assert "learning-rate steps now at epochs" in result.stderr
    rows = list(csv.DictReader(open(base / "output/data/report/metrics.csv")))
    assert 3 <= len(rows) < 5000 and rows[-1]["epoch"] == str(len(rows) - 1)
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[0] == 0.02 and abs(rates[-1] - 0.02 * 0.01) < 1e-9, rates  # both drops were reached
    assert validated_epochs(result.stderr) == [len(rows) - 1]
    assert [r["validation_map"] != "" for r in rows] == [False] * (len(rows) - 1) + [True]
    assert json.loads((base / "model/hyperparams.json").read_text())["time_budget_seconds"] == "20"
    # The checkpoint keeps the end: a restart trains no further epoch.
    [saved] = sorted((base / "checkpoints").glob("ssd-checkpoint-*"))[-1:]
    state = json.loads((saved / "ssd-checkpoint.json").read_text())
    assert state["next_epoch"] == state["end_epoch"] == len(rows)
    again = train(base)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint" in again.stderr and "epoch=" not in again.stderr.split("resuming")[1]


def test_incremental_training_with_more_classes(tmp_path: Path, synth_set: Path):
    two_classes = tmp_path / "two"
    generate(two_classes, SynthSpec(train=8, validation=2, classes=2, width=96, height=64, seed=1, format="both"))
    first = make_job(tmp_path / "a", two_classes, {**TINY, "epochs": "1", "num_classes": "2"})
    assert train(first).returncode == 0
    second = make_job(tmp_path / "b", synth_set, {**TINY, "epochs": "1", "num_classes": "3"})
    # As SageMaker delivers an earlier job's output: one model.tar.gz in the model channel.
    (second / "input/data/model").mkdir()
    with tarfile.open(second / "input/data/model/model.tar.gz", "w:gz") as tar:
        for item in (first / "model").iterdir():
            tar.add(item, arcname=item.name)
    result = train(second)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-initialized the class predictors" in result.stderr
    assert "initialized from the model" in result.stderr
    other = make_job(tmp_path / "c", two_classes, {**TINY, "epochs": "1", "num_classes": "2",
                                                   "base_network": "mobilenet-1.0"})
    shutil.copytree(first / "model", other / "input/data/model")
    result = train(other)
    assert result.returncode == 1
    assert "incremental training needs the same base network" in (other / "output/failure").read_text()


def validated_epochs(log: str) -> list[int]:
    return [int(e) for e in re.findall(r"epoch=(\d+), validation mAP", log)]


def test_validation_interval(tmp_path: Path, synth_set: Path):
    """Every third epoch and the last are validated; the model kept is the best of those."""
    base = make_job(tmp_path / "a", synth_set, {**TINY, "epochs": "5", "validation_interval": "3"})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert validated_epochs(result.stderr) == [2, 4]
    best = re.search(r"best validation mAP [\d.]+ at epoch (\d+)", result.stderr)
    assert best is not None and int(best.group(1)) in (2, 4)
    assert json.loads((base / "model/hyperparams.json").read_text())["validation_interval"] == "3"
    # Patience counts epochs, not validations: with a validation every 2 epochs and a patience of
    # 2, the first figure that does not double the best (tolerance 1) ends the job.
    base = make_job(tmp_path / "b", synth_set, {**TINY, "epochs": "30", "validation_interval": "2",
                                                "early_stopping": "True", "early_stopping_min_epochs": "2",
                                                "early_stopping_patience": "2", "early_stopping_tolerance": "1.0"})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs, values = validated_epochs(result.stderr), metric_values(result.stderr, "validation:mAP")
    assert epochs == list(range(1, 2 * len(epochs), 2)) and len(epochs) < 15
    best = values[0]
    for epoch, value in zip(epochs[1:], values[1:]):  # a figure is the new best when above twice the best
        if value <= 2 * best:
            break
        best = value
    assert epoch == epochs[-1] and f"early stopping after epoch {epoch}" in result.stderr


def test_early_stopping(tmp_path: Path, synth_set: Path):
    # A tolerance of 1 asks each epoch to double the best mAP; after the first epoch it never does.
    base = make_job(tmp_path, synth_set, {**TINY, "epochs": "30", "early_stopping": "True",
                                          "early_stopping_min_epochs": "2", "early_stopping_patience": "1",
                                          "early_stopping_tolerance": "1.0"})
    result = train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "early stopping after epoch" in result.stderr
    assert len(metric_values(result.stderr, "validation:mAP")) < 30
