"""The model commands: ``predict``, ``evaluate``, ``init-model``, ``quantize`` and ``export-onnx``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..progress import Progress


def _check_threshold(value: float) -> None:
    if not 0 <= value <= 1:
        raise UserError(f"--threshold {value} must be in [0, 1]")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.images import ImageError, decode_rgb, encode
    from ..drawing import draw
    from ..inference import Predictor

    _check_threshold(args.threshold)
    predictor = Predictor.load(args.model_dir, image_shape=args.image_shape, mean_pixels=args.mean_pixels)
    results = {}
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    progress = Progress("predict", total=len(args.images), unit="images", quiet=args.quiet)
    for path in args.images:
        try:
            image = decode_rgb(path.read_bytes())
        except (OSError, ImageError) as exc:
            raise UserError(f"{path}: {exc}") from None
        rows = predictor.predict(image, args.threshold)
        results[path.name] = [[round(float(v), 6) for v in row] for row in rows]
        if args.draw:
            (args.draw / (path.stem + ".png")).write_bytes(encode(draw(image, rows, predictor.class_names), "png"))
        progress.advance()
    progress.close()
    text = json.dumps(results)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data.channel import raise_if_issues, validate
    from ..data.sources import labelled_data
    from ..evaluation.evaluate import evaluate
    from ..inference import Predictor

    _check_threshold(args.threshold)
    predictor = Predictor.load(args.model_dir, image_shape=args.image_shape, mean_pixels=args.mean_pixels)
    num_classes = args.num_classes or predictor.num_classes
    if num_classes is None or num_classes < 1:
        raise UserError("the model's hyperparams.json has no num_classes; give --num-classes")
    with labelled_data(args.data, args.annotations, args.images, args.label_attribute) as data:
        validate(data, num_classes, decode=False, require_all_classes=False)
        raise_if_issues(data, str(args.data))
        report = evaluate(data, predictor, num_classes, args.threshold, args.output, quiet=args.quiet)
    print(json.dumps(report))
    return 0


def cmd_init_model(args: argparse.Namespace) -> int:
    from ..model.untrained import export_untrained

    hyperparameters = {"num_classes": str(args.num_classes), "base_network": args.base_network,
                       "image_shape": str(args.image_shape)}
    out = export_untrained(args.out, hyperparameters, seed=args.seed)
    print(json.dumps({"model_dir": str(out), **hyperparameters}))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..model import artifact
    from ..model.quantize import QuantizeOptions, calibration_images, quantize

    options = QuantizeOptions(args.calibration_mode, args.num_calibration,
                              tuple(p.strip() for p in (args.fp32_layers or "").split(",") if p.strip()),
                              args.granularity, args.class_heads)
    options.check()
    model_dir = artifact.locate(args.model_dir)
    artifact.refuse_builtin(model_dir, "quantize")
    images = calibration_images(args.calibration_data, args.annotations, options.num_calibration,
                                artifact.read_image_shape(model_dir))
    print(json.dumps(quantize(model_dir, images, args.output, options)))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..model import artifact
    from ..model.onnx_export import export_onnx
    from ..model.onnx_int8 import Int8Choices
    from ..model.quantize import MAX_CALIBRATION_IMAGES, calibration_images

    if args.int8 != (args.calibration_data is not None):
        raise UserError("--int8 needs --calibration-data" if args.int8
                        else "--calibration-data is for --int8 (an INT8 file)")
    given = {"class_heads": args.class_heads, "weight_bits": args.weight_bits, "min_channels": args.int8_min_channels,
             "calibration": args.calibration}
    choices = Int8Choices(**{name: value for name, value in given.items() if value is not None})
    choices.check()  # before the calibration images are read
    if not 1 <= args.num_calibration <= MAX_CALIBRATION_IMAGES:
        raise UserError(f"--num-calibration {args.num_calibration}: expected 1 to {MAX_CALIBRATION_IMAGES}")
    model_dir = artifact.locate(args.model_dir)
    images = None
    if args.int8:
        artifact.refuse_builtin(model_dir, "export-onnx")
        images = calibration_images(args.calibration_data, args.annotations, args.num_calibration,
                                    artifact.read_image_shape(model_dir))
    print(json.dumps(export_onnx(model_dir, args.output, args.opset, images, choices)))
    return 0


def cmd_import_builtin(args: argparse.Namespace) -> int:
    from ..model import artifact
    from ..model.builtin import import_model

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    if names is not None and not all(names):
        raise UserError(f"--class-names {args.class_names!r} has an empty name")
    print(json.dumps(import_model(artifact.locate(args.model_dir), args.output, names, args.image_shape,
                                  args.mean_pixels)))
    return 0
