"""A model of SageMaker's built-in algorithm, as its owner holds it (model.tar.gz with the
training graph, Module checkpoint and hyperparams.json; made by tests/builtin_models.py), given
to a real `serve`, to `predict`, `evaluate` and `import-builtin`: every answer is the deploy
graph's that owners build by hand (scores and corners within 1e-4)."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from builtin_models import deploy_detections, write_builtin_model
from serve_process import Server

from ssd_detector.data.images import decode_rgb, encode
from ssd_detector.data.synthetic import SynthSpec, make_image
from ssd_detector.data.transforms import ValTransform

CLI = [sys.executable, "-m", "ssd_detector.cli"]
SIZE = 128


@pytest.fixture(scope="module")
def builtin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the model's folder, its model.tar.gz as SageMaker writes it)."""
    root = tmp_path_factory.mktemp("builtin")
    folder = write_builtin_model(root / "model", "resnet-50", 3, SIZE)
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return folder, archive


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return make_image(np.random.default_rng(5), SynthSpec(train=1, validation=0, classes=3, width=200, height=150))[0]


def expected_rows(folder: Path, image: np.ndarray) -> np.ndarray:
    """The deploy graph's rows for a picture as predict feeds it: resized to S x S, then the
    built-in's rows (no -1 rows, sorted by score, corners within the image)."""
    resized = ValTransform(SIZE)(image, np.zeros((0, 4), np.float32))[0]
    rows = deploy_detections(folder, resized[None])[0]
    rows = rows[rows[:, 0] >= 0]
    rows = rows[np.argsort(-rows[:, 1], kind="stable")]
    rows[:, 2:] = np.clip(rows[:, 2:], 0, 1)
    return rows


def test_serve_answers_as_the_deploy_graph_in_every_format(builtin, picture: np.ndarray, tmp_path: Path):
    folder, archive = builtin
    jpeg = encode(picture, "jpeg")
    expected = expected_rows(folder, decode_rgb(jpeg))
    assert len(expected) > 20
    server = Server(archive, tmp_path, workers=1)
    try:
        server.wait_ready()
        status, _, body = server.invoke(jpeg)
        assert status == 200, body
        served = np.array(json.loads(body)["prediction"], np.float32)
        np.testing.assert_allclose(served, expected, atol=1e-4)
        status, _, body = server.invoke(jpeg, Accept="application/json;annotation=1")
        answer = json.loads(body)
        assert status == 200 and answer["image_size"] == [{"width": 200, "height": 150, "depth": 3}]
        boxes = np.array([[a["left"], a["top"], a["width"], a["height"]] for a in answer["annotations"]], np.float32)
        pixels = np.stack([expected[:, 2] * 200, expected[:, 3] * 150, (expected[:, 4] - expected[:, 2]) * 200,
                           (expected[:, 5] - expected[:, 3]) * 150], axis=1)
        np.testing.assert_allclose(boxes, pixels, atol=1.01)  # whole pixels
        np.testing.assert_allclose([a["score"] for a in answer["annotations"]], expected[:, 1], atol=1e-4)
        status, _, body = server.invoke(jpeg, Accept="application/jsonlines")
        assert status == 200 and np.allclose(json.loads(body)["prediction"], expected, atol=1e-4)
    finally:
        assert server.stop() == 0
    assert "built-in model: resnet-50, 3 classes, 128" in server.log.read_text()


def test_predict_evaluate_and_import_take_it_as_it_is(builtin, picture: np.ndarray, tmp_path: Path, synth_set: Path):
    folder, archive = builtin
    path = tmp_path / "picture.png"
    path.write_bytes(encode(picture, "png"))
    done = subprocess.run([*CLI, "predict", str(path), "--model-dir", str(archive), "--output", str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    predicted = np.array(json.loads((tmp_path / "p.json").read_text())["picture.png"], np.float32)
    np.testing.assert_allclose(predicted, expected_rows(folder, picture), atol=1e-4)

    done = subprocess.run([*CLI, "evaluate", str(synth_set / "recordio/validation"), "--model-dir", str(archive),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"] == 4 and 0 <= report["voc07_map"] <= 1

    done = subprocess.run([*CLI, "import-builtin", "--model-dir", str(archive), "--output", str(tmp_path / "ours"),
                           "--class-names", "circle,square,triangle"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*CLI, "predict", str(path), "--model-dir", str(tmp_path / "ours"), "--output",
                           str(tmp_path / "q.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.array(json.loads((tmp_path / "q.json").read_text())["picture.png"]), predicted,
                               atol=1e-4)
    assert json.loads((tmp_path / "ours/classes.json").read_text()) == {"0": "circle", "1": "square", "2": "triangle"}


def test_an_imported_model_exports_to_onnx_with_the_same_detections(builtin, tmp_path: Path):
    from test_int8_onnx import ort_run

    folder, archive = builtin
    ours, onnx_file = tmp_path / "ours", tmp_path / "model.onnx"
    for args in (["import-builtin", "--model-dir", str(archive), "--output", str(ours)],
                 ["export-onnx", "--model-dir", str(ours), "--output", str(onnx_file)]):
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    batch = np.random.default_rng(9).integers(0, 256, (2, 3, SIZE, SIZE)).astype(np.uint8)
    detections, index = ort_run(onnx_file, batch, tmp_path, 2)
    expected = deploy_detections(folder, batch)
    for i in range(len(batch)):
        rows = expected[i][expected[i][:, 0] >= 0]
        rows = rows[np.argsort(-rows[:, 1], kind="stable")]
        mine = detections[index == i]
        # Above 0.3, as the other ONNX test: below it, equal scores may be cut in another order.
        np.testing.assert_allclose(mine[mine[:, 1] > 0.3], rows[rows[:, 1] > 0.3], atol=1e-4)
