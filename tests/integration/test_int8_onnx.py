"""`quantize` and `export-onnx` through the CLI: the INT8 artifact loads and serves like any other,
and the ONNX file, run by ONNX Runtime in its own virtualenv (`make onnx-venv`), gives MXNet's
detections on the same images."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from ssd_detector.data.images import decode_rgb, encode
from ssd_detector.inference import Predictor
from ssd_detector.model import artifact
from ssd_detector.sagemaker_env import write_job
from serve_process import Server

ROOT = Path(__file__).resolve().parents[2]
ORT_PYTHON = ROOT / ".venv-onnx/bin/python"
CLI = [sys.executable, "-m", "ssd_detector.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_dir(trained_model: tuple[Path, str]) -> Path:
    return trained_model[0]


@pytest.fixture(scope="module")
def quantized(model_dir: Path, synth_set: Path, tmp_path_factory) -> tuple[Path, dict]:
    """`ssd-detector quantize` of model_dir, calibrated on the RecordIO training channel -> its
    folder and the JSON summary it printed."""
    out = tmp_path_factory.mktemp("int8-out") / "int8"
    result = cli("quantize", "--model-dir", str(model_dir), "--calibration-data", str(synth_set / "recordio/train"),
                 "--output", str(out), "--num-calibration", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def images(synth_set: Path) -> list[np.ndarray]:
    paths = sorted((synth_set / "json/train").glob("*.*"))[:7]
    return [decode_rgb(p.read_bytes()) for p in paths]


def ort_run(onnx_file: Path, batch: np.ndarray, tmp: Path, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    if not ORT_PYTHON.exists():
        pytest.fail(f"{ORT_PYTHON} missing: `make onnx-venv` installs ONNX Runtime")
    np.savez(tmp / "in.npz", images=batch)
    result = subprocess.run([str(ORT_PYTHON), str(ROOT / "scripts/onnx_infer.py"), str(onnx_file), str(tmp / "in.npz"),
                             str(tmp / "out.npz"), "--batch", str(batch_size)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp / "out.npz")
    return out["detections"], out["batch_index"]


def mxnet_rows(predictor: Predictor, batch: np.ndarray) -> list[np.ndarray]:
    """MultiBoxDetection's rows per image without the -1 rows, best score first."""
    raw = predictor.net(mx.nd.array(batch, dtype="uint8")).asnumpy()  # (B, N, 6)
    return [rows[rows[:, 0] >= 0][np.argsort(-rows[rows[:, 0] >= 0][:, 1], kind="stable")] for rows in raw]


@pytest.mark.parametrize("opset", [13, 17])
def test_onnx_runtime_gives_mxnets_detections(model_dir: Path, images: list[np.ndarray], tmp_path: Path,
                                              opset: int):
    onnx_file = tmp_path / "model.onnx"
    result = cli("export-onnx", "--model-dir", str(model_dir), "--output", str(onnx_file), "--opset", str(opset))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["opset"] == opset and summary["num_classes"] == 3 and onnx_file.stat().st_size == summary["bytes"]
    import onnx

    # Weights are constants, not inputs a caller could override: ONNX Runtime folds and fuses them.
    assert [value.name for value in onnx.load(str(onnx_file)).graph.input] == ["data"]
    predictor = Predictor(model_dir)
    batch = np.stack([predictor.preprocess(image) for image in images])  # (7, 3, 128, 128)
    expected = mxnet_rows(predictor, batch)
    # Batches of 3: the batch dimension is dynamic, and the last batch is short.
    detections, batch_index = ort_run(onnx_file, batch, tmp_path, batch_size=3)
    # Equal scores (many low-scoring anchors share one) may be cut or suppressed in another order;
    # the rows above them depend only on higher scores, so they must match one for one.
    confident = 0.3
    assert sum(int((rows[:, 1] >= confident).sum()) for rows in expected) > 20
    for b, rows in enumerate(expected):
        got = detections[batch_index == b]
        assert abs(len(got) - len(rows)) <= max(2, len(rows) // 50), (b, len(got), len(rows))
        assert np.all(np.diff(got[:, 1]) <= 0), "best score first"
        top = got[got[:, 1] >= confident]
        assert len(top) == int((rows[:, 1] >= confident).sum())
        for row in rows[rows[:, 1] >= confident]:  # near-equal scores may swap places: match by value
            close = (top[:, 0] == row[0]) & (np.abs(top[:, 1] - row[1]) < 1e-4) & \
                (np.abs(top[:, 2:] - row[2:]).max(axis=1) < 1e-4)
            assert close.any(), (b, row)


def test_int8_artifact_loads_predicts_and_serves(model_dir: Path, quantized: tuple[Path, dict],
                                                 images: list[np.ndarray], tmp_path: Path):
    out, summary = quantized
    assert summary["calibration_images"] == 16 and "ssd_concat1" in summary["fp32_layers"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in model_dir.iterdir()), "the same files as any artifact"
    recorded = json.loads(artifact.read_hyperparameters(out)["quantization"])
    assert recorded["dtype"] == "int8" and recorded["calibration_mode"] == "naive"
    assert recorded["class_heads"] == "int32-output"
    symbol = json.loads((out / artifact.SYMBOL_FILE).read_text())
    assert any("quantize" in node["op"] for node in symbol["nodes"])
    # SymbolBlock.imports (through Predictor) runs it unchanged; detections stay close to FP32's.
    fp32, int8 = Predictor(model_dir), Predictor(out)
    assert int8.class_names == fp32.class_names
    for image in images[:3]:
        a, b = fp32.predict(image, 0.3), int8.predict(image, 0.3)
        assert len(b) > 0 and abs(len(a) - len(b)) <= max(2, len(a) // 4)
    # predict and serve take it like any model folder.
    image_file = tmp_path / "one.jpg"
    image_file.write_bytes(encode(images[0], "jpeg"))
    predicted = cli("predict", str(image_file), "--model-dir", str(out))
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["one.jpg"], predicted.stderr[-2000:]
    server = Server(out, tmp_path, workers=1)
    try:
        server.wait_ready()
        status, _, body = server.invoke(image_file.read_bytes())
        assert status == 200 and json.loads(body)["prediction"], body
    finally:
        assert server.stop() == 0


def class_probabilities(model: Path, batch: np.ndarray) -> np.ndarray:
    """The graph's softmax output (B, classes + 1, anchors) for batch (B, 3, S, S) uint8."""
    symbol = mx.sym.load(str(model / artifact.SYMBOL_FILE)).get_internals()["softmax0_output"]
    net = mx.gluon.SymbolBlock(symbol, mx.sym.var("data"))
    net.collect_params().load(str(model / artifact.PARAMS_FILE), ignore_extra=True)
    return net(mx.nd.array(batch, dtype="uint8")).asnumpy()


def test_class_predictors_compute_in_int8_with_int32_outputs(model_dir: Path, quantized: tuple[Path, dict],
                                                             images: list[np.ndarray], synth_set: Path,
                                                             tmp_path: Path):
    """INT8 class predictors keep their int32 accumulators as outputs (quantize's default)."""
    from ssd_detector.model.quantize import class_head_layers

    out = quantized[0]
    heads = class_head_layers(json.loads((model_dir / artifact.SYMBOL_FILE).read_text())["nodes"])
    nodes = json.loads((out / artifact.SYMBOL_FILE).read_text())["nodes"]
    widened = [n for n in nodes if n["name"].endswith("_logits")]
    assert len(heads) == len(widened) > 0
    for node in widened:  # int32 -> transpose -> Cast -> * scale, from a quantized convolution
        cast = nodes[node["inputs"][0][0]]
        transpose = nodes[cast["inputs"][0][0]]
        conv = nodes[transpose["inputs"][0][0]]
        assert (cast["op"], transpose["op"], conv["op"]) == ("Cast", "transpose", "_sg_mkldnn_conv")
        assert conv["attrs"]["quantized"] == "true"
    assert not any(h in n["name"] for n in nodes for h in heads), "no class predictor left FP32"
    # Logits spanning hundreds (some anchors' background, as trained detectors have) make an INT8
    # output scale too coarse for every other logit (200 / 127 per step); int32 outputs keep them:
    # one output channel's bias raised by 200 in every class predictor of a copy of the model.
    outlier = tmp_path / "outlier"
    shutil.copytree(model_dir, outlier)
    params = mx.nd.load(str(outlier / artifact.PARAMS_FILE))
    for name in params:
        if name.startswith("arg:ssd_class_conv") and name.endswith("_bias"):
            params[name][0] += 200
    mx.nd.save(str(outlier / artifact.PARAMS_FILE), params)
    predictor = Predictor(outlier)
    batch = np.stack([predictor.preprocess(image) for image in images])
    fp32 = class_probabilities(outlier, batch)
    errors = {}
    for heads in ("int32-output", "int8"):
        result = cli("quantize", "--model-dir", str(outlier), "--calibration-data", str(synth_set / "recordio/train"),
                     "--output", str(tmp_path / heads), "--num-calibration", "16", "--class-heads", heads)
        assert result.returncode == 0, result.stderr[-3000:]
        errors[heads] = np.abs(class_probabilities(tmp_path / heads, batch) - fp32)
    # Measured: mean probability error 1e-4 (int32 outputs) against 0.016 (INT8 outputs).
    assert errors["int8"].mean() > 0.005 and errors["int32-output"].mean() < 0.05 * errors["int8"].mean(), \
        {k: float(v.mean()) for k, v in errors.items()}


def test_calibration_from_an_image_folder_and_a_json_channel(model_dir: Path, synth_set: Path, tmp_path: Path):
    from ssd_detector.model.quantize import calibration_images

    plain = calibration_images(synth_set / "json/train", None, 5, 128)
    annotated = calibration_images(synth_set / "json/train", synth_set / "json/train_annotation", 40, 128)
    assert plain.shape == (5, 3, 128, 128) and plain.dtype == np.uint8
    assert annotated.shape == (16, 3, 128, 128)  # every image when fewer than asked


def test_refusals_name_the_problem(model_dir: Path, quantized: tuple[Path, dict], synth_set: Path, tmp_path: Path):
    int8 = quantized[0]
    cases = [
        (["export-onnx", "--model-dir", str(int8), "--output", str(tmp_path / "m.onnx")], "the model is quantized"),
        (["export-onnx", "--model-dir", str(model_dir), "--output", str(tmp_path / "m.onnx"), "--opset", "11"],
         "--opset 11"),
        (["quantize", "--model-dir", str(int8), "--calibration-data", str(synth_set / "json/train"), "--output",
          str(tmp_path / "again")], "already quantized"),
        (["quantize", "--model-dir", str(model_dir), "--calibration-data", str(synth_set / "json/train"), "--output",
          str(tmp_path / "x"), "--fp32-layers", "no_such_layer"], "'no_such_layer' matches no layer"),
        (["quantize", "--model-dir", str(model_dir), "--calibration-data", str(tmp_path / "absent"), "--output",
          str(tmp_path / "x")], "does not exist"),
        (["quantize", "--model-dir", str(model_dir), "--calibration-data", str(synth_set / "json/train"), "--output",
          str(tmp_path / "x"), "--calibration-mode", "minmax"], "'minmax' is not one of naive, entropy"),
        (["quantize", "--model-dir", str(model_dir), "--calibration-data", str(synth_set / "json/train"), "--output",
          str(tmp_path / "x"), "--class-heads", "int16"], "--class-heads 'int16' is not one of int32-output, fp32"),
    ]
    broken = tmp_path / "broken.rec"
    broken.write_bytes(b"\x00" * 64)
    cases.append((["quantize", "--model-dir", str(model_dir), "--calibration-data", str(broken), "--output",
                   str(tmp_path / "x")], "broken.rec"))
    for args, message in cases:
        result = cli(*args)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-2000:])


def test_a_graph_without_the_detection_head_is_refused(model_dir: Path, tmp_path: Path):
    """A graph cut before MultiBoxDetection (e.g. someone's raw network) names its last layer."""
    other = tmp_path / "raw"
    other.mkdir()
    for name in (artifact.PARAMS_FILE, artifact.HYPERPARAMS_FILE):
        (other / name).write_bytes((model_dir / name).read_bytes())
    symbol = mx.sym.load(str(model_dir / artifact.SYMBOL_FILE)).get_children()[0]
    symbol.save(str(other / artifact.SYMBOL_FILE))
    result = cli("export-onnx", "--model-dir", str(other), "--output", str(tmp_path / "m.onnx"))
    assert result.returncode == 1 and "ends in" in result.stderr and "MultiBoxDetection" in result.stderr, \
        result.stderr[-2000:]


def test_training_refuses_to_start_from_an_int8_model(quantized: tuple[Path, dict], synth_set: Path,
                                                      tmp_path: Path):
    int8 = quantized[0]
    channels = {d.name: d for d in (synth_set / "json").iterdir() if d.is_dir()}
    hyperparameters = {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": "128", "epochs": "1",
                       "use_pretrained_model": "0"}
    base = write_job(tmp_path / "opt_ml", hyperparameters, {**channels, "model": int8}).base
    result = subprocess.run([*CLI, "train"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SSD_DATA_WORKERS": "0"})
    assert result.returncode != 0
    assert "INT8 model" in (base / "output/failure").read_text()


def test_the_profiler_sums_onnx_runtimes_time_per_operator(model_dir: Path, tmp_path: Path):
    """scripts/ort_profile.py on an exported model, in ONNX Runtime's own environment."""
    if not ORT_PYTHON.exists():
        pytest.fail(f"{ORT_PYTHON} missing: `make onnx-venv` installs ONNX Runtime")
    onnx_file = tmp_path / "model.onnx"
    assert cli("export-onnx", "--model-dir", str(model_dir), "--output", str(onnx_file)).returncode == 0
    result = subprocess.run([str(ORT_PYTHON), str(ROOT / "scripts/ort_profile.py"), str(onnx_file), "--batches", "1,2",
                             "--runs", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("batch")] == ["batch 1", "batch 2"]
    conv = [float(line.split()[1]) for line in lines if line.strip().startswith("Conv ")]
    assert len(conv) == 2 and all(ms > 0 for ms in conv), result.stdout
    assert "BatchNormalization" not in result.stdout, "folded into the convolutions"
    assert "will not be treated as constant" not in result.stderr
