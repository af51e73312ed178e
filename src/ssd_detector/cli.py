"""The ``ssd-detector`` command: SageMaker's `train` and `serve`, and the tools around them (data
checks and conversion, synthetic data, prediction, a fresh model)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Iterator, Sequence

from .errors import Stopped, UserError
from .progress import Progress

if TYPE_CHECKING:
    from .data.channel import ChannelData
    from .data.manifest import ImageResolver

LOG = logging.getLogger("ssd_detector")
EXIT_TERMINATED = 128 + signal.SIGTERM  # a tool stopped by SIGTERM, as a shell reports it
# A SIGTERM that arrives during an import is sent again this much later, until no import runs.
IMPORT_RETRY_SECONDS = 0.05


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s %(levelname)s %(name)s] %(message)s", datefmt="%m/%d/%Y %H:%M:%S")


def _image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r} must look like 320x240") from None
    return width, height


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import SynthSpec, generate

    width, height = args.image_size
    spec = SynthSpec(train=args.train, validation=args.validation, classes=args.classes, width=width,
                     height=height, seed=args.seed, format=args.format, image_format=args.image_format,
                     max_objects=args.max_objects, style=args.style,
                     backgrounds=str(args.backgrounds) if args.backgrounds else "", min_size=args.min_size,
                     max_size=args.max_size)
    try:
        spec.check()
        progress = Progress("synth", total=spec.train + spec.validation, unit="images", quiet=args.quiet)
        counts = generate(args.out, spec, progress)
        progress.close()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps({"output": str(args.out), **counts, "classes": args.classes, "format": args.format}))
    return 0


@contextlib.contextmanager
def _labelled_data(path: Path, annotations: Path | None, images: Path | None, label_attribute: str | None,
                   content_type: str | None = None) -> Iterator["ChannelData"]:
    """A channel (RecordIO, images + annotations) or a Ground Truth manifest, as check-data reads
    it; a manifest's images (downloads included) stay readable until the block ends."""
    from .data.channel import read_channel
    from .data.manifest import ImageResolver, is_manifest, read_manifest

    resolver = ImageResolver(path.parent, images)
    try:
        if is_manifest(path):
            yield read_manifest(path, resolver, label_attribute)
        else:
            yield read_channel(path, annotations, content_type=content_type)
    finally:
        resolver.close()


def _cmd_check_data(args: argparse.Namespace) -> int:
    from .data.channel import summarize, validate

    with _labelled_data(args.path, args.annotations, args.images, args.label_attribute, args.content_type) as data:
        progress = Progress("check-data: decoding", total=len(data.samples), unit="images",
                            quiet=args.quiet or args.no_decode)
        validate(data, args.num_classes, decode=not args.no_decode, require_all_classes=not args.validation,
                 progress=progress)
        progress.close()
    report = summarize(data, args.label_width)
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0 if not report["errors"] else 1


def _channel_summary(channel: object) -> dict:
    from .training.inputs import PipeChannel

    if isinstance(channel, PipeChannel):  # streamed during training: not read here
        return {"format": channel.format, "input_mode": "Pipe", "distribution": channel.distribution}
    return {"format": channel.format, "images": len(channel.samples)}  # type: ignore[attr-defined]


def _cmd_check_job(args: argparse.Namespace) -> int:
    from .failure import run_job
    from .sagemaker_env import Paths
    from .training.inputs import read_training_inputs

    paths = Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()

    def job() -> None:
        inputs = read_training_inputs(paths, decode_images=not args.no_decode)
        hp = inputs.hyperparameters
        if hp.anchor_sizes:  # their count depends on the network, which train checks only when it builds it
            from .model.ssd import layout_for

            layout_for(hp.base_network, hp.image_shape, hp.anchor_sizes)
        summary = {
            "hyperparameters": inputs.hyperparameters.to_strings(),
            "hosts": list(inputs.resources.hosts),
            "current_host": inputs.resources.current_host,
            "train": _channel_summary(inputs.train),
            "validation": _channel_summary(inputs.validation) if inputs.validation else None,
            "class_names": {str(k): v for k, v in sorted(inputs.class_names.items())},
        }
        print(json.dumps(summary))

    if args.write_failure:
        return run_job(job, paths.failure_file)
    try:
        job()
    except UserError as exc:
        LOG.error("%s", exc)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .environment import default_cpu_threads

    default_cpu_threads()  # before MXNet loads
    from .failure import run_job
    from .sagemaker_env import Paths
    from .training.entry import train
    from .training.protocol import failure_file

    paths = Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()
    return run_job(lambda: train(paths), failure_file(paths))


def _stop_on_sigterm(reason: str) -> None:
    """As PID 1 of a container a process ignores SIGTERM unless it handles it: every command
    handles it from its first line (`train` until its loop takes over, and a stop is not a
    failure there; `serve` hands it to gunicorn, which installs its own)."""
    def stop(signum: int, frame: FrameType | None) -> None:
        if _importing(frame):
            # Raised inside an import (cv2's initialization, numpy's under it), the exception becomes
            # an ImportError and leaves half-made extension modules that can crash the interpreter
            # at exit: the stop waits until the import is done.
            resend = threading.Timer(IMPORT_RETRY_SECONDS, os.kill, (os.getpid(), signal.SIGTERM))
            resend.daemon = True
            resend.start()
            return
        raise Stopped(reason)
    signal.signal(signal.SIGTERM, stop)


def _importing(frame: FrameType | None) -> bool:
    """Whether frame, or a frame that called it, is the import machinery's."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data.images import ImageError, decode_rgb, encode
    from .drawing import draw
    from .inference import Predictor

    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold} must be in [0, 1]")
    predictor = Predictor.load(args.model_dir)
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from .sagemaker_env import Paths
    from .serving.server import serve
    from .serving.settings import ServeSettings

    model_dir = args.model_dir or (Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()).model_dir
    settings = ServeSettings.from_env(model_dir, port=args.port, workers=args.workers, host=args.host)
    return serve(settings)


def _cmd_init_model(args: argparse.Namespace) -> int:
    from .model.export import export_untrained

    hyperparameters = {"num_classes": str(args.num_classes), "base_network": args.base_network,
                       "image_shape": str(args.image_shape)}
    out = export_untrained(args.out, hyperparameters, seed=args.seed)
    print(json.dumps({"model_dir": str(out), **hyperparameters}))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .data.manifest import ImageResolver

    resolver = ImageResolver(Path(args.input).parent, args.images)
    try:
        return _convert(args, resolver)
    finally:
        resolver.close()


def _convert(args: argparse.Namespace, resolver: "ImageResolver") -> int:
    from .data import convert
    from .data.channel import read_channel, validate
    from .data.manifest import read_manifest

    if args.source == "manifest":
        if not Path(args.input).is_file():
            raise UserError(f"convert manifest: {args.input} is not a file (a Ground Truth output.manifest)")
        data = read_manifest(args.input, resolver, args.label_attribute)
    elif args.source == "voc":
        from .data.voc import read_voc
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        data = read_voc(args.input, args.split, classes)
    elif args.source == "lst":
        from .data.lst import read_lst
        data = read_lst(args.input, args.image_root or Path(args.input).parent)
    elif args.source == "json":
        if not args.annotations:
            raise UserError("convert json needs --annotations DIR (the annotation channel)")
        data = read_channel(args.input, args.annotations, content_type="image/jpeg")
    else:
        data = read_channel(args.input, content_type="application/x-recordio")
    progress = Progress("convert: checking", total=len(data.samples), unit="images", quiet=args.quiet)
    validate(data, None, decode=True, require_all_classes=False, progress=progress)
    progress.close()
    if data.issues:
        listed = "; ".join(f"{i.where}: {i.what}" for i in data.issues[:10])
        raise UserError(f"{args.input}: {len(data.issues)} problem(s), nothing written: {listed}")
    if args.to == "recordio":
        out = Path(args.output)
        if out.suffix != ".rec":
            out = out / f"{data.name or 'data'}.rec"
        progress = Progress("convert: writing", total=len(data.samples), unit="images", quiet=args.quiet)
        count = convert.to_recordio(data, out, object_width=6 if args.keep_difficult else 5, progress=progress)
        progress.close()
        print(json.dumps({"output": str(out), "records": count}))
    else:
        out = Path(args.output)
        image_dir = out
        annotation_dir = Path(args.output_annotations) if args.output_annotations else \
            out.parent / f"{out.name}_annotation"
        progress = Progress("convert: writing", total=len(data.samples), unit="images", quiet=args.quiet)
        count = convert.to_json(data, image_dir, annotation_dir, progress)
        progress.close()
        print(json.dumps({"images": str(image_dir), "annotations": str(annotation_dir), "count": count}))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .model import artifact
    from .model.quantize import QuantizeOptions, calibration_images, quantize

    options = QuantizeOptions(args.calibration_mode, args.num_calibration,
                              tuple(p.strip() for p in (args.fp32_layers or "").split(",") if p.strip()),
                              args.granularity, args.class_heads)
    options.check()
    model_dir = artifact.locate(args.model_dir)
    images = calibration_images(args.calibration_data, args.annotations, options.num_calibration,
                                artifact.read_image_shape(model_dir))
    print(json.dumps(quantize(model_dir, images, args.output, options)))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.channel import raise_if_issues, validate
    from .evaluation.evaluate import evaluate
    from .inference import Predictor

    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold} must be in [0, 1]")
    predictor = Predictor.load(args.model_dir)
    num_classes = args.num_classes or predictor.num_classes
    if num_classes is None or num_classes < 1:
        raise UserError("the model's hyperparams.json has no num_classes; give --num-classes")
    with _labelled_data(args.data, args.annotations, args.images, args.label_attribute) as data:
        validate(data, num_classes, decode=False, require_all_classes=False)
        raise_if_issues(data, str(args.data))
        report = evaluate(data, predictor, num_classes, args.threshold, args.output, quiet=args.quiet)
    print(json.dumps(report))
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .model import artifact
    from .model.onnx_export import export_onnx

    print(json.dumps(export_onnx(artifact.locate(args.model_dir), args.output, args.opset)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .environment import describe

    print(json.dumps(describe(), indent=2 if args.pretty else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssd-detector", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="make a synthetic detection set laid out as SageMaker channels")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, required=True, help="training images")
    p.add_argument("--validation", type=int, default=0, help="validation images")
    p.add_argument("--classes", type=int, required=True, help="number of classes (shapes), 1 to 10")
    p.add_argument("--image-size", type=_image_size, default=(320, 240), metavar="WxH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("json", "recordio", "manifest", "both"), default="json",
                   help="json: train/ + train_annotation/ ...; recordio: train/train.rec ...; manifest: "
                        "train.manifest (Ground Truth) + images/; both: OUT/json/, OUT/recordio/, OUT/manifest/")
    p.add_argument("--image-format", choices=("jpg", "png", "mixed"), default="jpg")
    p.add_argument("--max-objects", type=int, default=6, help="most objects in one image")
    p.add_argument("--style", choices=("shapes", "photo"), default="shapes",
                   help="shapes: on noise and gradients; photo: harder, on photographs with distractors, "
                        "occlusion, blur and lighting changes")
    p.add_argument("--min-size", type=float, default=None,
                   help="smallest object side, a fraction of the image's short side (default 0.06; photo 0.05)")
    p.add_argument("--max-size", type=float, default=None,
                   help="largest object side, a fraction of the image's short side (default 0.7; photo 0.8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--backgrounds", type=Path, default=None,
                   help="photo style: a folder of photographs (default: the sample photographs of "
                        "scikit-image, scikit-learn and matplotlib, where installed)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("check-data", help="check a channel and print a JSON report; exit 0 only when it is clean")
    p.add_argument("path", type=Path, help="a .rec file, a folder of .rec files, an image folder, or a Ground "
                                           "Truth augmented manifest (.manifest, .jsonl)")
    p.add_argument("--annotations", type=Path, help="the annotation folder of an image channel")
    p.add_argument("--images", type=Path, help="manifest: local folder holding the source-ref images")
    p.add_argument("--label-attribute", help="manifest: the label attribute (default: the bounding-box one)")
    p.add_argument("--num-classes", type=int, help="check class ids against this (default: highest id + 1)")
    p.add_argument("--label-width", type=int, help="also check this label_width hyperparameter")
    p.add_argument("--content-type", help="the channel's ContentType (default: inferred)")
    p.add_argument("--validation", action="store_true", help="a validation channel: classes may be absent")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--pretty", action="store_true", help="indent the JSON report")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("check-job", help="read and check a SageMaker /opt/ml tree as train does, without training")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    p.add_argument("--write-failure", action="store_true", help="write output/failure on error, as train does")
    p.set_defaults(func=_cmd_check_job)

    p = sub.add_parser("train", help="train from a SageMaker /opt/ml tree (the container's train)")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="run a trained model on images")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--model-dir", type=Path, required=True, help="model folder or model.tar.gz")
    p.add_argument("--output", help="write the JSON here instead of stdout")
    p.add_argument("--threshold", type=float, default=0.0, help="drop detections scoring below this")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--draw", type=Path, help="also write each image with its boxes drawn (PNG) here")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("serve", help="host the model over HTTP with gunicorn (the container's serve)")
    p.add_argument("--model-dir", type=Path, help="model folder or model.tar.gz (default: $SAGEMAKER_BASE_DIR/model)")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.add_argument("--port", type=int, help="instead of $SAGEMAKER_BIND_TO_PORT or 8080")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--workers", type=int, help="instead of $SAGEMAKER_MODEL_SERVER_WORKERS or one per CPU/GPU")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("info", help="print what this installation is made of as JSON: MXNet and its "
                                    "features, GPUs seen, Horovod's backends, the CUDA wheels")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("init-model", help="write an untrained model in the artifact's format (to try serve)")
    p.add_argument("out", type=Path, help="the model folder to write")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--base-network", default="mobilenet-1.0")
    p.add_argument("--image-shape", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_init_model)

    p = sub.add_parser("convert", help="convert between RecordIO, JSON annotations, .lst and Pascal VOC")
    p.add_argument("source", choices=("json", "recordio", "lst", "voc", "manifest"), help="input format")
    p.add_argument("input", type=Path, help="image folder (json), .rec or folder (recordio), .lst file, VOC root, "
                                            "Ground Truth augmented manifest (manifest)")
    p.add_argument("--to", choices=("recordio", "json"), required=True)
    p.add_argument("--output", required=True, help="a .rec file or folder (recordio); the image folder (json)")
    p.add_argument("--annotations", type=Path, help="json input: the annotation folder")
    p.add_argument("--output-annotations", help="json output: annotation folder (default OUTPUT_annotation)")
    p.add_argument("--image-root", type=Path, help="lst input: folder the image paths are relative to")
    p.add_argument("--split", help="voc input: ImageSets/Main/<split>.txt (default: every annotation)")
    p.add_argument("--classes", help="voc input: comma-separated class names in id order")
    p.add_argument("--images", type=Path, help="manifest input: local folder holding the source-ref images "
                   "(s3://bucket/key is looked up as KEY, BUCKET/KEY or the file name; else downloaded with boto3)")
    p.add_argument("--label-attribute", help="manifest input: the label attribute (default: the one "
                   "holding bounding boxes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--keep-difficult", action="store_true",
                   help="recordio output: write 6 values per object, the 6th VOC's difficult flag")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("quantize", help="write an INT8 copy of a model (CPU hosting), calibrated on your images")
    p.add_argument("--model-dir", type=Path, required=True, help="the FP32 model folder or model.tar.gz")
    p.add_argument("--calibration-data", type=Path, required=True,
                   help="a .rec file or folder, an image folder with --annotations (a JSON channel), or plain images")
    p.add_argument("--annotations", type=Path, help="the annotation folder of a JSON channel")
    p.add_argument("--output", type=Path, required=True, help="the INT8 model folder to write")
    p.add_argument("--num-calibration", type=int, default=128,
                   help="images spread evenly over the data (default 128)")
    p.add_argument("--calibration-mode", default="naive", help="naive (min/max, default) or entropy (KL)")
    p.add_argument("--fp32-layers", help="comma-separated layer names (or parts) to keep FP32 besides the "
                   "input normalization and the detection head")
    p.add_argument("--granularity", default="tensor-wise", help="weight scales: tensor-wise (default) or "
                   "channel-wise")
    p.add_argument("--class-heads", default="int32-output", help="the class predictors: int32-output (INT8 "
                   "convolutions with 32-bit outputs, default), fp32, or int8 (INT8 outputs: loses accuracy, "
                   "see the README)")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("evaluate", help="score a model on labelled data: one JSON object on stdout (VOC07, VOC12, "
                       "COCO mAP, per class, per size) and a report folder of pictures")
    p.add_argument("data", type=Path, help="what check-data takes: a .rec file or folder, an image folder with "
                   "--annotations, or a Ground Truth manifest")
    p.add_argument("--model-dir", type=Path, required=True, help="model folder or model.tar.gz")
    p.add_argument("--output", type=Path, help="the report folder to write (PNG pictures and the JSON)")
    p.add_argument("--annotations", type=Path, help="the annotation folder of an image channel")
    p.add_argument("--images", type=Path, help="manifest: local folder holding the source-ref images")
    p.add_argument("--label-attribute", help="manifest: the label attribute (default: the bounding-box one)")
    p.add_argument("--num-classes", type=int, help="default: the model's num_classes")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="drop detections scoring below this before scoring (default 0: every detection, as training's "
                   "validation mAP)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export-onnx", help="write the model as one ONNX file with decoding and NMS inside")
    p.add_argument("--model-dir", type=Path, required=True, help="the FP32 model folder or model.tar.gz")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (13 or later; default 13)")
    p.set_defaults(func=_cmd_export_onnx)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    _stop_on_sigterm(f"SIGTERM during {args.command}")
    try:
        return args.func(args)
    except UserError as exc:
        LOG.error("%s", exc)
        return 1
    except Stopped as exc:
        LOG.warning("stopped: %s", exc)
        return EXIT_TERMINATED


if __name__ == "__main__":
    sys.exit(main())
