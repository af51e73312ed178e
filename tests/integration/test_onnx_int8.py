"""`export-onnx --int8`: an ONNX file in QDQ form, calibrated on the user's images, that plain ONNX
Runtime (its own virtualenv, `make onnx-venv`) runs with INT8 convolutions and that finds what the
FP32 file finds."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import decode_rgb, encode
from ssd_detector.data.transforms import ValTransform
from ssd_detector.model import artifact
from ssd_detector.model.onnx_class_logits import FLOOR_SHARE

ROOT = Path(__file__).resolve().parents[2]
ORT_PYTHON = ROOT / ".venv-onnx/bin/python"
CLI = [sys.executable, "-m", "ssd_detector.cli"]
# Runs a file in ONNX Runtime, optimized as a session optimizes it, and counts what it then runs.
OPTIMIZED_OPS = """
import collections, sys, onnxruntime as ort
options = ort.SessionOptions()
options.optimized_model_filepath = sys.argv[2]
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def export(model_dir: Path, out: Path, *extra: str) -> dict:
    result = cli("export-onnx", "--model-dir", str(model_dir), "--output", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def model_dir(trained_model: tuple[Path, str]) -> Path:
    return trained_model[0]


@pytest.fixture(scope="module")
def images(synth_set: Path, model_dir: Path) -> np.ndarray:
    """Validation images preprocessed as serving does: (K, 3, S, S) uint8."""
    size = artifact.read_image_shape(model_dir)
    transform = ValTransform(size)
    paths = sorted(p for p in (synth_set / "json/validation").iterdir() if p.suffix in (".jpg", ".png"))
    return np.stack([transform(decode_rgb(p.read_bytes()), np.zeros((0, 4), np.float32))[0] for p in paths])


def ort_rows(onnx_file: Path, images: np.ndarray, tmp: Path, quantization: dict | None = None) -> list[np.ndarray]:
    """scripts/onnx_infer.py's rows per image; its summary names the file's quantization."""
    if not ORT_PYTHON.exists():
        pytest.fail(f"{ORT_PYTHON} missing: `make onnx-venv` installs ONNX Runtime")
    np.savez(tmp / "in.npz", images=images)
    result = subprocess.run([str(ORT_PYTHON), str(ROOT / "scripts/onnx_infer.py"), str(onnx_file), str(tmp / "in.npz"),
                             str(tmp / "out.npz"), "--batch", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1])["quantization"] == quantization
    out = np.load(tmp / "out.npz")
    return [out["detections"][out["batch_index"] == i] for i in range(len(images))]


def ops_run_by_onnx_runtime(onnx_file: Path, tmp: Path) -> str:
    optimized = tmp / f"{onnx_file.stem}.optimized.onnx"
    result = subprocess.run([str(ORT_PYTHON), "-c", OPTIMIZED_OPS, str(onnx_file), str(optimized)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import onnx

    return " ".join(n.op_type for n in onnx.load(str(optimized)).graph.node)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


@pytest.fixture(scope="module")
def fp32_export(model_dir: Path, images: np.ndarray, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """The FP32 file and its rows per image in ONNX Runtime."""
    folder = tmp_path_factory.mktemp("fp32-onnx")
    export(model_dir, folder / "fp32.onnx")
    return folder / "fp32.onnx", ort_rows(folder / "fp32.onnx", images, folder)


@pytest.mark.parametrize("class_heads,bits,min_channels,calibration", [
    ("fp32", 7, 16, "percentile"), ("int32-output", 7, 16, "naive"), ("int8", 8, 0, "naive")])
def test_the_int8_file_runs_int8_convolutions_and_finds_what_fp32_finds(model_dir: Path, synth_set: Path,
                                                                        images: np.ndarray, tmp_path: Path,
                                                                        fp32_export: tuple[Path, list[np.ndarray]],
                                                                        class_heads: str, bits: int, min_channels: int,
                                                                        calibration: str):
    import onnx
    from onnx import numpy_helper

    (fp32_file, fp32_rows), int8_file = fp32_export, tmp_path / "int8.onnx"
    summary = export(model_dir, int8_file, "--int8", "--calibration-data", str(synth_set / "recordio/train"),
                     "--num-calibration", "16", "--class-heads", class_heads, "--weight-bits", str(bits),
                     "--int8-min-channels", str(min_channels), "--calibration", calibration)
    done = summary["quantization"]
    assert done["calibration"] == {"naive": "naive", "percentile": "percentile 99.99"}[calibration]
    assert done["format"] == "QDQ" and done["class_heads"] == class_heads and done["calibration_images"] == 16
    assert done["weight_bits"] == bits and done["min_channels"] == min_channels
    # mobilenet-0.25's stem reads 3, 8 and 8 channels: below 16 those stay FP32, with their Relu.
    narrow = done["fp32_narrow_convolutions"]
    assert narrow == (3 if min_channels == 16 else 0)
    assert done["batchnorms_folded"] > 10 and done["relus_dropped"] == done["batchnorms_folded"] - narrow
    wide = done["int32_output_convolutions"]
    assert (done["fp32_convolutions"] > narrow) == (class_heads == "fp32") and (wide > 0) == (class_heads == "int32-output")

    model = onnx.load(str(int8_file))
    assert {o.domain for o in model.opset_import} == {""}, "standard operators only"
    first = next(n for n in model.graph.node if n.op_type == "Conv")  # reads the RGB input
    weights = {i.name: i for i in model.graph.initializer}
    assert (first.input[1] in weights and numpy_helper.to_array(weights[first.input[1]]).dtype == np.float32) == \
        (min_channels > 3)
    assert json.loads(dict((p.key, p.value) for p in model.metadata_props)["quantization"]) == done
    # An INT8 convolution on the image reads its uint8 pixels as they are: no Cast, no FP32 normalization.
    readers = [n for n in model.graph.node if "data" in n.input]
    if min_channels <= 3:
        assert [n.op_type for n in readers] == ["DequantizeLinear"], readers
        scale, zero = (numpy_helper.to_array(weights[name]) for name in readers[0].input[1:])
        assert scale == 1 and zero.dtype == np.uint8 and done["image_input"].endswith(f"zero point {zero}")
    else:
        assert [n.op_type for n in readers] == ["Cast"] and "image_input" not in done
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("ConvInteger") == wide
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == done["int8_convolutions"] - wide
    assert int8_file.stat().st_size < fp32_file.stat().st_size / 2
    # INT8 class outputs: each class predictor gives its logits relative to the background's (0),
    # in one convolution with its box predictor, split after it into the class and box channels.
    splits = [n for n in model.graph.node if n.op_type == "Split"]
    assert len(splits) == done["merged_predictors"] and (len(splits) > 0) == (class_heads == "int8")
    producer = {o: n for n in model.graph.node for o in n.output}
    for split in splits:  # Conv -> QuantizeLinear -> DequantizeLinear -> Split
        conv = producer[producer[producer[split.input[0]].input[0]].input[0]]
        weight = numpy_helper.to_array(weights[producer[conv.input[1]].input[0]])
        class_rows, box_rows = numpy_helper.to_array(weights[split.input[1]])
        assert len(weight) == class_rows + box_rows and box_rows % 4 == 0
        # (A * (C + 1), Cin, 3, 3) -> (A, C + 1, Cin * 9): the background's filters 0
        assert not weight[:class_rows].reshape(-1, summary["num_classes"] + 1, weight[0].size)[:, 0].any()
    if class_heads == "int8":
        floor = math.log(summary["threshold"] * FLOOR_SHARE / summary["num_classes"])
        assert done["class_logits"] == "relative to the background" and done["class_logit_floor"] == round(floor, 4)
    else:
        assert "class_logits" not in done

    # ONNX Runtime runs those as QLinearConv (each with its QDQ pairs fused), not in FP32.
    run = ops_run_by_onnx_runtime(int8_file, tmp_path)
    assert run.count("QLinearConv") == len(int8_weights), run

    int8_rows = ort_rows(int8_file, images, tmp_path, done)
    matched = 0
    for want, got in zip(fp32_rows, int8_rows):
        best = want[0]  # the FP32 file's best detection of the image
        same = [g for g in got if g[0] == best[0] and iou(g[2:], best[2:]) >= 0.7]
        assert same, (best, got[:3])
        matched += abs(same[0][1] - best[1]) <= 0.1
    assert matched == len(images), "the best detection's score moves by more than 0.1"


def test_refusals_name_the_problem(model_dir: Path, synth_set: Path, tmp_path: Path):
    out = str(tmp_path / "x.onnx")
    calibration = str(synth_set / "recordio/train")
    cases = [
        (["--int8"], "--int8 needs --calibration-data"),
        (["--calibration-data", calibration], "--calibration-data is for --int8"),
        (["--int8", "--calibration-data", calibration, "--class-heads", "int4"], "--class-heads 'int4'"),
        (["--int8", "--calibration-data", calibration, "--num-calibration", "0"], "--num-calibration 0"),
        (["--int8", "--calibration-data", calibration, "--weight-bits", "4"], "--weight-bits 4"),
        (["--int8", "--calibration-data", calibration, "--int8-min-channels", "-1"], "--int8-min-channels -1"),
        (["--int8", "--calibration-data", calibration, "--calibration", "entropy"], "--calibration 'entropy'"),
        (["--int8", "--calibration-data", str(tmp_path / "none")], "does not exist"),
    ]
    for extra, message in cases:
        result = cli("export-onnx", "--model-dir", str(model_dir), "--output", out, *extra)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr[-1500:])
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("base_network", ["vgg-16", "resnet-50"])
def test_other_backbones_quantize_and_run(base_network: str, tmp_path: Path):
    """vgg-16 (max pooling, no BatchNorm) and resnet-50 (additions, a Relu after each), with
    export-onnx's defaults: every convolution runs as QLinearConv in ONNX Runtime, the class
    predictors' and the one on the image (3 channels, but followed by wide ones, reading the pixels) included."""
    from ssd_detector.model.onnx_int8 import Int8Choices

    from ssd_detector.model.untrained import export_untrained

    model_dir = export_untrained(tmp_path / "model", {"num_classes": "3", "base_network": base_network,
                                                      "image_shape": "128"})
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 128, 128), dtype=np.uint8)
    (tmp_path / "calibration").mkdir()
    for i, image in enumerate(images):
        (tmp_path / "calibration" / f"{i}.png").write_bytes(encode(image.transpose(1, 2, 0), "png"))
    int8_file = tmp_path / "int8.onnx"
    done = export(model_dir, int8_file, "--int8", "--calibration-data", str(tmp_path / "calibration"))["quantization"]
    defaults = Int8Choices()
    assert (done["class_heads"], done["weight_bits"], done["min_channels"], done["calibration"].split()[0]) == \
        (defaults.class_heads, defaults.weight_bits, defaults.min_channels, defaults.calibration)
    assert done["calibration_images"] == 6 and done["fp32_convolutions"] == 0 and done["int8_convolutions"] > 10
    assert done["image_input"].startswith("uint8 pixels into "), "the image's normalization folded"
    assert ops_run_by_onnx_runtime(int8_file, tmp_path).count("QLinearConv") == done["int8_convolutions"]
    rows = ort_rows(int8_file, images, tmp_path, done)
    assert all(len(r) for r in rows)
