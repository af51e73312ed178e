"""CPU inference: FP32 MXNet vs the INT8 artifact (`ssd-detector quantize`) vs the ONNX file
(`ssd-detector export-onnx`) in ONNX Runtime, on one briefly trained model.

A `mobilenet-1.0`@300 SSD is trained on the synthetic shapes family (once; kept under --root),
then quantized on the validation split (quantize's defaults: naive calibration, class predictors
with int32 outputs; entropy calibration; class predictors FP32; class predictors with INT8
outputs) and exported to ONNX. Each
engine is scored on a held-out split made with another seed (VOC07 mAP, the code training's
validation uses) and timed at batch 1 and 8 on the same preprocessed images, in interleaved
rounds (the median round counts), all in one run so the ratios share the machine's state. ONNX
Runtime runs in its own virtualenv (`make onnx-venv`) through scripts/onnx_infer.py.
`--also DIR` measures the same quantizations (but entropy) of a model trained elsewhere, in
`make bench-accuracy`'s layout (e.g. build/bench/accuracy/photo).
Run with `make bench-infer` (ARGS="..." passes options).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ssd_detector.machine import usable_cpus

from .common import CLASSES, HEIGHT, WIDTH, job_tree, make_sets, train

LOG = logging.getLogger("bench_infer")
ROOT = Path(__file__).resolve().parents[2]
ORT_PYTHON = ROOT / ".venv-onnx/bin/python"
HYPERPARAMETERS = {
    "base_network": "mobilenet-1.0", "image_shape": "300", "mini_batch_size": "16", "epochs": "8",
    "optimizer": "adam", "learning_rate": "0.005", "lr_scheduler_step": "6,7", "use_pretrained_model": "0",
    "augmentation": "light",
}
TARGETS = {"int8_speedup_b8": 3.0, "int8_speedup_b1": 2.0, "int8_map_drop": 0.01, "onnx_map_gap": 0.005}

Rows = list[np.ndarray]


def train_model(root: Path, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The trained model, the validation channel (calibration) and the held-out channel; training
    happens once per --root."""
    data, test_dir = make_sets(root, "shapes", args.train, args.validation, args.test)
    model = root / "job/model"
    if not (model / "model_algo_1-symbol.json").exists():
        hyperparameters = {**HYPERPARAMETERS, "num_classes": str(CLASSES),
                           **{k: str(v) for k, v in args.hyperparameters.items()}}
        LOG.info("training %s (kept in %s for later runs)", json.dumps(hyperparameters), model)
        run = train(job_tree(root / "job", hyperparameters, {d.name: d for d in data.iterdir() if d.is_dir()}),
                    root / "train.log", budget=args.budget)
        LOG.info("trained in %.0f s; validation mAP by epoch %s", run.wall_seconds,
                 [round(v, 3) for v in run.values("validation:mAP")])
    return model, data / "validation", test_dir


def held_out(test_dir: Path, size: int) -> tuple[np.ndarray, list]:
    """Held-out images preprocessed as serving does -> (K, 3, S, S) uint8 and their samples."""
    from ssd_detector.data.channel import read_channel
    from ssd_detector.data.images import decode_rgb
    from ssd_detector.data.transforms import ValTransform

    samples = read_channel(test_dir).samples
    transform = ValTransform(size)
    no_boxes = np.zeros((0, 4), np.float32)
    return np.stack([transform(decode_rgb(s.image.read()), no_boxes)[0] for s in samples]), samples


def score(rows: Rows, samples: list) -> float:
    """VOC07 mAP of the rows per image (evaluation's code)."""
    from ssd_detector.evaluation.evaluate import sized_voc07
    from ssd_detector.evaluation.truth import ImageTruth

    truths = [ImageTruth(s.where, WIDTH, HEIGHT, s.boxes, s.class_ids.astype(np.int64), s.difficult.astype(bool))
              for s in samples]
    return sized_voc07(truths, rows, CLASSES).value()


def mxnet_engine(model_dir: Path) -> Callable[[np.ndarray], Rows]:
    """A model folder -> a function from a (B, 3, S, S) uint8 batch to its rows per image."""
    from ssd_detector.inference import Predictor

    predictor = Predictor(model_dir)

    def run(batch: np.ndarray) -> Rows:
        raw = predictor.forward(batch)  # (B, N, 6), as predict and serve run it
        return [r[r[:, 0] >= 0] for r in raw]
    return run


def all_rows(run: Callable[[np.ndarray], Rows], images: np.ndarray, batch: int) -> Rows:
    rows: Rows = []
    for start in range(0, len(images), batch):
        rows.extend(run(images[start:start + batch]))
    return rows


def images_per_second(run: Callable[[np.ndarray], Rows], images: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    all_rows(run, images, batch)
    return len(images) / (time.perf_counter() - start)


def onnx_pass(onnx_file: Path, images: np.ndarray, batch: int, work: Path, repeat: int, threads: int) -> dict:
    """scripts/onnx_infer.py in the ONNX Runtime virtualenv -> rows per image and img/s per pass."""
    np.savez(work / "images.npz", images=images)
    out = work / f"onnx-{batch}.npz"
    result = subprocess.run([str(ORT_PYTHON), str(ROOT / "scripts/onnx_infer.py"), str(onnx_file),
                             str(work / "images.npz"), str(out), "--batch", str(batch), "--threads", str(threads),
                             "--repeat", str(repeat)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"onnx_infer.py failed: {result.stderr[-2000:]}")
    saved = np.load(out)
    rows = [saved["detections"][saved["batch_index"] == i] for i in range(len(images))]
    return {"rows": rows, "ips": [len(images) / s for s in saved["seconds"]]}


def quantize_options() -> dict:
    """The INT8 variants measured: quantize's defaults (naive, class predictors with int32
    outputs), entropy calibration, class predictors FP32, class predictors with INT8 outputs."""
    from ssd_detector.model.quantize import QuantizeOptions

    return {"INT8 naive": QuantizeOptions(calibration_mode="naive"),
            "INT8 entropy": QuantizeOptions(calibration_mode="entropy"),
            "INT8 cls FP32": QuantizeOptions(calibration_mode="naive", class_heads="fp32"),
            "INT8 cls INT8": QuantizeOptions(calibration_mode="naive", class_heads="int8")}


def measure(model: Path, validation: Path, test_dir: Path, work: Path, choices: list[str], args: argparse.Namespace,
            onnx_file: Path | None = None, threads: int = 1) -> dict[str, dict]:
    """FP32 and each chosen INT8 variant of model (and the ONNX file in ONNX Runtime when given):
    held-out mAP and img/s at batch 1 and 8 per interleaved round."""
    from ssd_detector.model import artifact
    from ssd_detector.model.quantize import calibration_images, quantize

    size = artifact.read_image_shape(model)
    calibration = calibration_images(validation, None, args.num_calibration, size)
    variants = {"FP32": model}
    options = quantize_options()
    for name in choices:
        variants[name] = work / name.lower().replace(" ", "-")
        quantize(model, calibration, variants[name], options[name])
    images, samples = held_out(test_dir, size)
    timing = images[:args.timing_images]
    engines = {name: mxnet_engine(path) for name, path in variants.items()}
    names = [*engines, *(["ONNX Runtime"] if onnx_file else [])]
    results: dict[str, dict] = {name: {"ips": {1: [], 8: []}} for name in names}
    for name, run in engines.items():
        results[name]["map"] = score(all_rows(run, images, 8), samples)
        run(images[:8])  # warm both batch shapes
        run(images[:1])
    if onnx_file:
        results["ONNX Runtime"]["map"] = score(onnx_pass(onnx_file, images, 8, work, 0, threads)["rows"], samples)
    for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every engine alike
        for batch in (1, 8):
            for name, run in engines.items():
                results[name]["ips"][batch].append(images_per_second(run, timing, batch))
            if onnx_file:
                results["ONNX Runtime"]["ips"][batch].extend(
                    onnx_pass(onnx_file, timing, batch, work, 1, threads)["ips"])
    return results


def table(title: str, results: dict[str, dict]) -> dict[str, dict]:
    """Logs results as a table (ratios to FP32) -> its summary."""
    fp32 = results["FP32"]
    LOG.info("== %s", title)
    LOG.info("%-13s %8s %9s %9s %9s %9s", "engine", "mAP", "b1 img/s", "b1 ratio", "b8 img/s", "b8 ratio")
    summary = {}
    for name, result in results.items():
        medians = {b: float(np.median(v)) for b, v in result["ips"].items()}
        ratios = {b: medians[b] / float(np.median(fp32["ips"][b])) for b in medians}
        LOG.info("%-13s %8.4f %9.1f %8.2fx %9.1f %8.2fx", name, result["map"], medians[1], ratios[1], medians[8],
                 ratios[8])
        summary[name] = {"map": result["map"], "images_per_second": medians, "ratio_to_fp32": ratios,
                         "rounds": result["ips"]}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("build/bench/infer"))
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--budget", type=float, default=3600, help="seconds allowed for the one training")
    parser.add_argument("--hyperparameters", type=json.loads, default={}, help="JSON overriding the training's")
    parser.add_argument("--num-calibration", type=int, default=128)
    parser.add_argument("--timing-images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per engine and batch size")
    parser.add_argument("--output", type=Path, default=Path("build/bench/infer.json"))
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="a trained model's folder in make bench-accuracy's layout (job/model, data/validation, "
                        "test/validation, e.g. build/bench/accuracy/photo): quantized and measured the same way; "
                        "repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    threads = usable_cpus()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before MXNet loads: every core, as serving
    if not ORT_PYTHON.exists():
        parser.error(f"{ORT_PYTHON} missing: run `make onnx-venv`")
    for folder in args.also:
        missing = [p for p in ("job/model", "data/validation", "test/validation") if not (folder / p).exists()]
        if missing:
            parser.error(f"--also {folder}: no {', '.join(missing)} (make bench-accuracy's layout)")
    from ssd_detector.model.onnx_export import export_onnx

    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    model, validation, test_dir = train_model(root, args)
    size = int(HYPERPARAMETERS["image_shape"])
    onnx_file = root / "model.onnx"
    export_onnx(model, onnx_file)
    choices = list(quantize_options())
    results = measure(model, validation, test_dir, root, choices, args, onnx_file=onnx_file, threads=threads)
    summary = table(f"CPU inference, {HYPERPARAMETERS['base_network']}@{size}, {threads} threads, "
                    f"{args.test} held-out images (timing: {args.timing_images} images, median of {args.rounds} "
                    "rounds)", results)
    fp32 = summary["FP32"]
    others = {}
    for folder in args.also:  # models trained elsewhere, in bench-accuracy's layout
        work = root / "also" / folder.name
        work.mkdir(parents=True, exist_ok=True)
        results = measure(folder / "job/model", folder / "data/validation", folder / "test/validation", work,
                          [c for c in choices if c != "INT8 entropy"], args)
        others[str(folder)] = table(f"{folder / 'job/model'}: the same quantizations but entropy", results)
    best = "INT8 naive"  # quantize's defaults
    int8 = summary[best]
    checks = {
        f"{best} >= {TARGETS['int8_speedup_b8']}x FP32 at batch 8": int8["ratio_to_fp32"][8] >= TARGETS["int8_speedup_b8"],
        f"{best} >= {TARGETS['int8_speedup_b1']}x FP32 at batch 1": int8["ratio_to_fp32"][1] >= TARGETS["int8_speedup_b1"],
        f"{best} mAP drop <= {TARGETS['int8_map_drop']}": fp32["map"] - int8["map"] <= TARGETS["int8_map_drop"],
        f"ONNX Runtime mAP within {TARGETS['onnx_map_gap']} of MXNet's":
            abs(summary["ONNX Runtime"]["map"] - fp32["map"]) <= TARGETS["onnx_map_gap"],
    }
    for check, met in checks.items():
        LOG.info("%s: %s", check, "met" if met else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"engines": summary, "checks": checks, "threads": threads, "also": others},
                                      indent=2))
    return 0
