"""CPU inference, four engines side by side: MXNet FP32, MXNet INT8 (`ssd-detector quantize`),
and ONNX Runtime on the exported FP32 and INT8 files (`ssd-detector export-onnx [--int8]`), on two
briefly trained models.

`mobilenet-1.0`@300 and `mobilenet-0.25`@256 SSDs are trained on the synthetic shapes family
(once; kept under --root), quantized on the validation split with quantize's defaults and exported
to ONNX, FP32 and INT8 (export-onnx's defaults; --ort-int8 for other choices; calibrated
on the same images). Each engine is scored on a held-out split made with another seed (VOC07 mAP,
the code training's validation uses) and timed at batch 1 and 8 on the same preprocessed images,
in interleaved rounds (the median round counts), all in one run so the ratios share the machine's
state. MXNet runs as `predict` runs it (one static graph per batch size); ONNX Runtime runs in its
own virtualenv (`make onnx-venv`) through scripts/onnx_infer.py. `--mxnet-variants` adds quantize's
other choices; `--also DIR` measures a model trained elsewhere, in `make bench-accuracy`'s layout
(e.g. build/bench/accuracy/photo). Run with `make bench-infer` (ARGS="..." passes options).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np

from ssd_detector.machine import usable_cpus

from .common import CLASSES, HEIGHT, WIDTH, job_tree, make_sets, train

LOG = logging.getLogger("bench_infer")
ROOT = Path(__file__).resolve().parents[2]
ORT_PYTHON = ROOT / ".venv-onnx/bin/python"
COMMON = {"mini_batch_size": "16", "optimizer": "adam", "learning_rate": "0.005", "use_pretrained_model": "0",
          "augmentation": "light"}
# The two models measured, each trained once per --root and kept.
MODELS = {
    "mobilenet-1.0@300": {**COMMON, "base_network": "mobilenet-1.0", "image_shape": "300", "epochs": "16",
                          "lr_scheduler_step": "12,14"},
    "mobilenet-0.25@256": {**COMMON, "base_network": "mobilenet-0.25", "image_shape": "256", "epochs": "16",
                           "lr_scheduler_step": "12,14"},
}
DEFAULT_ORT_INT8 = "int8/7"  # export-onnx --int8's defaults (the fields left out are too)
TARGETS = {"int8_speedup_b8": 3.0, "int8_speedup_b1": 2.0, "int8_map_drop": 0.01, "onnx_map_gap": 0.005,
           "ort_fp32_speedup": 1.3, "ort_int8_speedup_b8": 2.5}

Rows = list[np.ndarray]


def train_model(root: Path, name: str, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The trained model `name` (of MODELS), the validation channel (calibration) and the held-out
    channel; the sets are made once per --root, each model trained once."""
    data, test_dir = make_sets(root, "shapes", args.train, args.validation, args.test)
    model = root / name.replace("@", "-") / "job/model"
    if not (model / "model_algo_1-symbol.json").exists():
        hyperparameters = {**MODELS[name], "num_classes": str(CLASSES),
                           **{k: str(v) for k, v in args.hyperparameters.items()}}
        LOG.info("training %s (kept in %s for later runs)", json.dumps(hyperparameters), model)
        run = train(job_tree(model.parent, hyperparameters, {d.name: d for d in data.iterdir() if d.is_dir()}),
                    model.parents[1] / "train.log", budget=args.budget)
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


def quantize_options(extra: bool) -> dict:
    """MXNet's INT8 variants: quantize's defaults (naive, class predictors with int32 outputs), and
    with extra entropy calibration, class predictors FP32, class predictors with INT8 outputs."""
    from ssd_detector.model.quantize import QuantizeOptions

    options = {"MXNet INT8": QuantizeOptions(calibration_mode="naive")}
    if extra:
        options.update({"MXNet INT8 entropy": QuantizeOptions(calibration_mode="entropy"),
                        "MXNet INT8 cls FP32": QuantizeOptions(calibration_mode="naive", class_heads="fp32"),
                        "MXNet INT8 cls INT8": QuantizeOptions(calibration_mode="naive", class_heads="int8")})
    return options


def onnx_files(model: Path, calibration: np.ndarray, work: Path, choices: list[str]) -> dict[str, Path]:
    """The FP32 file and an INT8 file per choice, CLASS_HEADS/WEIGHT_BITS[/MIN_CHANNELS[/CALIBRATION]]
    (export-onnx's defaults named plainly "ORT INT8")."""
    from ssd_detector.model.onnx_export import export_onnx
    from ssd_detector.model.onnx_int8 import Int8Choices

    files = {"ORT FP32": work / "model.onnx"}
    export_onnx(model, files["ORT FP32"])
    default = Int8Choices()
    for choice in choices:
        given = dict(zip([f.name for f in fields(Int8Choices)], choice.split("/")))  # each as its default's type
        picked = Int8Choices(**{k: type(getattr(default, k))(v) for k, v in given.items()})
        full = f"{picked.class_heads}/{picked.weight_bits}/{picked.min_channels}/{picked.calibration}"
        name = "ORT INT8" if picked == default else f"ORT INT8 {full}"
        files[name] = work / f"model-int8-{full.replace('/', '-')}.onnx"
        export_onnx(model, files[name], calibration=calibration, choices=picked)
    return files


def measure(model: Path, validation: Path, test_dir: Path, work: Path, args: argparse.Namespace,
            threads: int) -> dict[str, dict]:
    """MXNet FP32 and INT8 (predict's engine) and ONNX Runtime on the exported FP32 and INT8 files:
    held-out mAP and img/s at batch 1 and 8 per interleaved round."""
    from ssd_detector.model import artifact
    from ssd_detector.model.quantize import calibration_images, quantize

    work.mkdir(parents=True, exist_ok=True)
    size = artifact.read_image_shape(model)
    calibration = calibration_images(validation, None, args.num_calibration, size)
    variants = {"MXNet FP32": model}
    for name, options in quantize_options(args.mxnet_variants).items():
        variants[name] = work / name.lower().replace(" ", "-")
        quantize(model, calibration, variants[name], options)
    files = onnx_files(model, calibration, work, args.ort_int8.split(","))
    images, samples = held_out(test_dir, size)
    LOG.info("%s: %d held-out images from %s", model, len(images), test_dir)
    timing = images[:args.timing_images]
    engines = {name: mxnet_engine(path) for name, path in variants.items()}
    results: dict[str, dict] = {name: {"ips": {1: [], 8: []}} for name in [*engines, *files]}
    for name, run in engines.items():
        results[name]["map"] = score(all_rows(run, images, 8), samples)
        run(images[:8])  # warm both batch shapes
        run(images[:1])
    for name, onnx_file in files.items():
        results[name]["map"] = score(onnx_pass(onnx_file, images, 8, work, 0, threads)["rows"], samples)
    for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every engine alike
        for batch in (1, 8):
            for name, run in engines.items():
                results[name]["ips"][batch].append(images_per_second(run, timing, batch))
            for name, onnx_file in files.items():
                results[name]["ips"][batch].extend(onnx_pass(onnx_file, timing, batch, work, 1, threads)["ips"])
    return results


def table(title: str, results: dict[str, dict]) -> dict[str, dict]:
    """Logs results as a table (ratios to MXNet FP32) -> its summary."""
    fp32 = results["MXNet FP32"]
    LOG.info("== %s", title)
    LOG.info("%-22s %8s %9s %9s %9s %9s", "engine", "mAP", "b1 img/s", "b1 ratio", "b8 img/s", "b8 ratio")
    summary = {}
    for name, result in results.items():
        medians = {b: float(np.median(v)) for b, v in result["ips"].items()}
        ratios = {b: medians[b] / float(np.median(fp32["ips"][b])) for b in medians}
        LOG.info("%-22s %8.4f %9.1f %8.2fx %9.1f %8.2fx", name, result["map"], medians[1], ratios[1], medians[8],
                 ratios[8])
        summary[name] = {"map": result["map"], "images_per_second": medians, "ratio_to_mxnet_fp32": ratios,
                         "rounds": result["ips"]}
    return summary


def checks(name: str, summary: dict[str, dict]) -> dict[str, bool]:
    """The targets, per model: MXNet INT8's (mobilenet-1.0@300 only, quantize's own), ONNX
    Runtime's against MXNet FP32, INT8's accuracy."""
    mx_fp32, mx_int8 = summary["MXNet FP32"], summary["MXNet INT8"]
    ort_fp32, ort_int8 = summary["ORT FP32"], summary.get("ORT INT8")
    found = {}
    if name == "mobilenet-1.0@300":
        found[f"MXNet INT8 >= {TARGETS['int8_speedup_b8']}x MXNet FP32 at batch 8"] = \
            mx_int8["ratio_to_mxnet_fp32"][8] >= TARGETS["int8_speedup_b8"]
        found[f"MXNet INT8 >= {TARGETS['int8_speedup_b1']}x MXNet FP32 at batch 1"] = \
            mx_int8["ratio_to_mxnet_fp32"][1] >= TARGETS["int8_speedup_b1"]
    found[f"MXNet INT8 mAP drop <= {TARGETS['int8_map_drop']}"] = \
        mx_fp32["map"] - mx_int8["map"] <= TARGETS["int8_map_drop"]
    found[f"ORT FP32 mAP within {TARGETS['onnx_map_gap']} of MXNet FP32"] = \
        abs(ort_fp32["map"] - mx_fp32["map"]) <= TARGETS["onnx_map_gap"]
    for batch in (1, 8):
        found[f"ORT FP32 >= {TARGETS['ort_fp32_speedup']}x MXNet FP32 at batch {batch}"] = \
            ort_fp32["ratio_to_mxnet_fp32"][batch] >= TARGETS["ort_fp32_speedup"]
    if ort_int8:
        if name == "mobilenet-1.0@300":
            found[f"ORT INT8 >= {TARGETS['ort_int8_speedup_b8']}x MXNet FP32 at batch 8"] = \
                ort_int8["ratio_to_mxnet_fp32"][8] >= TARGETS["ort_int8_speedup_b8"]
        for batch in (1, 8):
            found[f"ORT INT8 faster than ORT FP32 at batch {batch}"] = \
                ort_int8["images_per_second"][batch] > ort_fp32["images_per_second"][batch]
        found[f"ORT INT8 mAP drop <= {TARGETS['int8_map_drop']}"] = \
            mx_fp32["map"] - ort_int8["map"] <= TARGETS["int8_map_drop"]
    return found


# The CPU features that decide how fast INT8 runs (VNNI multiplies uint8 by int8 into 32 bits in one step).
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and which of INT8_FEATURES it has, e.g. "AMD EPYC (avx2 avx512f avx512_vnni)"."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "unknown CPU"
    fields_seen = {key.strip(): value for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = set(fields_seen.get("flags", "").split())
    model = fields_seen.get("model name", "unknown CPU").strip()
    return f"{model} ({' '.join(f for f in INT8_FEATURES if f in flags) or 'none of ' + ', '.join(INT8_FEATURES)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("build/bench/infer"))
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--budget", type=float, default=3600, help="seconds allowed for each training")
    parser.add_argument("--hyperparameters", type=json.loads, default={}, help="JSON overriding the trainings'")
    parser.add_argument("--num-calibration", type=int, default=128)
    parser.add_argument("--timing-images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per engine and batch size")
    parser.add_argument("--mxnet-variants", action="store_true",
                        help="also MXNet INT8 with entropy calibration, class predictors FP32 and with INT8 outputs")
    parser.add_argument("--ort-int8", default=DEFAULT_ORT_INT8,
                        help="comma-separated INT8 files to measure, each CLASS_HEADS/WEIGHT_BITS[/MIN_CHANNELS[/CALIBRATION]] "
                        f"as export-onnx takes them (default {DEFAULT_ORT_INT8}, export-onnx's defaults)")
    parser.add_argument("--output", type=Path, default=Path("build/bench/infer.json"))
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="a trained model's folder in make bench-accuracy's layout (job/model, data/validation, "
                        "test/validation, e.g. build/bench/accuracy/photo): measured the same way; repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    threads = usable_cpus()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before MXNet loads: every core, as serving
    if not ORT_PYTHON.exists():
        parser.error(f"{ORT_PYTHON} missing: run `make onnx-venv`")
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {', '.join(MODELS)}")
    for folder in args.also:
        missing = [p for p in ("job/model", "data/validation", "test/validation") if not (folder / p).exists()]
        if missing:
            parser.error(f"--also {folder}: no {', '.join(missing)} (make bench-accuracy's layout)")
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    LOG.info("CPU: %s", cpu)
    summaries, found = {}, {}
    measured = [(name, *train_model(root, name, args), root / name.replace("@", "-")) for name in names]
    measured += [(str(folder), folder / "job/model", folder / "data/validation", folder / "test/validation",
                  root / "also" / folder.name) for folder in args.also]
    for name, model, validation, test_dir, work in measured:
        results = measure(model, validation, test_dir, work, args, threads)
        summaries[name] = table(f"CPU inference, {name}, {threads} threads of {cpu} (timing: {args.timing_images} images, "
                                f"median of {args.rounds} rounds)", results)
        found[name] = checks(name, summaries[name])
        for check, met in found[name].items():
            LOG.info("%s: %s", check, "met" if met else "NOT met")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"models": summaries, "checks": found, "threads": threads, "cpu": cpu},
                                           indent=2))
    return 0
