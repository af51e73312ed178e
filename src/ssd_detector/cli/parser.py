"""The ``ssd-detector`` command line: every command, its arguments and the function that runs it."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import data, model, runtime

DESCRIPTION = ("SageMaker's train and serve for an SSD object detector, and the tools around them: data checks "
               "and conversion, synthetic data, prediction, evaluation, INT8 and ONNX, a fresh model.")


def _image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r} must look like 320x240") from None
    return width, height


def _builtin_options(p: argparse.ArgumentParser) -> None:
    """How a model of SageMaker's built-in algorithm is fed, where its files do not say."""
    p.add_argument("--image-shape", type=int, help="a model of the built-in algorithm without hyperparams.json: "
                   "its input size S")
    p.add_argument("--mean-pixels", help="a model of the built-in algorithm: the RGB mean subtracted before it, "
                   "R,G,B (default: 123.68,116.779,103.939 for vgg-16, none for resnet-50)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssd-detector", description=DESCRIPTION)
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
    p.set_defaults(func=data.cmd_synth)

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
    p.set_defaults(func=data.cmd_check_data)

    p = sub.add_parser("check-job", help="read and check a SageMaker /opt/ml tree as train does, without training")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    p.add_argument("--write-failure", action="store_true", help="write output/failure on error, as train does")
    p.set_defaults(func=data.cmd_check_job)

    p = sub.add_parser("train", help="train from a SageMaker /opt/ml tree (the container's train)")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.set_defaults(func=runtime.cmd_train)

    p = sub.add_parser("predict", help="run a trained model on images")
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--model-dir", type=Path, required=True, help="model folder or model.tar.gz")
    p.add_argument("--output", help="write the JSON here instead of stdout")
    p.add_argument("--threshold", type=float, default=0.0, help="drop detections scoring below this")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--draw", type=Path, help="also write each image with its boxes drawn (PNG) here")
    _builtin_options(p)
    p.set_defaults(func=model.cmd_predict)

    p = sub.add_parser("serve", help="host the model over HTTP: nginx in front of gunicorn (the container's serve)")
    p.add_argument("--model-dir", type=Path, help="model folder or model.tar.gz (default: $SAGEMAKER_BASE_DIR/model)")
    p.add_argument("--base-dir", help="instead of $SAGEMAKER_BASE_DIR or /opt/ml")
    p.add_argument("--port", type=int, help="instead of $SAGEMAKER_BIND_TO_PORT or 8080")
    p.add_argument("--host", help="address to bind (default 0.0.0.0)")
    p.add_argument("--workers", type=int, help="instead of $SAGEMAKER_MODEL_SERVER_WORKERS or one per CPU/GPU")
    p.add_argument("--multi-model", action="store_true",
                   help="SageMaker's multi-model API over /models (also SAGEMAKER_MULTI_MODEL=true); models "
                        "come from folders under $SAGEMAKER_BASE_DIR/models")
    p.add_argument("--no-proxy", action="store_true",
                   help="gunicorn alone on the port, without nginx in front (the default when nginx is not installed)")
    p.set_defaults(func=runtime.cmd_serve)

    p = sub.add_parser("info", help="print what this installation is made of as JSON: MXNet and its "
                                    "features, GPUs seen, Horovod's backends, the CUDA wheels")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.set_defaults(func=runtime.cmd_info)

    p = sub.add_parser("init-model", help="write an untrained model in the artifact's format (to try serve)")
    p.add_argument("out", type=Path, help="the model folder to write")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--base-network", default="mobilenet-1.0")
    p.add_argument("--image-shape", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=model.cmd_init_model)

    p = sub.add_parser("convert", help="convert between RecordIO, JSON annotations, .lst and Pascal VOC")
    p.add_argument("source", choices=("json", "recordio", "lst", "voc", "manifest"),  # data.sources.SOURCES
                   help="input format")
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
    p.set_defaults(func=data.cmd_convert)

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
    p.set_defaults(func=model.cmd_quantize)

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
    _builtin_options(p)
    p.set_defaults(func=model.cmd_evaluate)

    p = sub.add_parser("import-builtin", help="write a model of SageMaker's built-in Object Detection algorithm "
                       "(its model.tar.gz or folder) as a model of this algorithm, with the same detections")
    p.add_argument("--model-dir", type=Path, required=True, help="the built-in model's folder or model.tar.gz")
    p.add_argument("--output", type=Path, required=True, help="the model folder to write")
    p.add_argument("--class-names", help="comma-separated class names in id order, kept in classes.json")
    _builtin_options(p)
    p.set_defaults(func=model.cmd_import_builtin)

    p = sub.add_parser("export-onnx", help="write the model as one ONNX file with decoding and NMS inside")
    p.add_argument("--model-dir", type=Path, required=True, help="the FP32 model folder or model.tar.gz")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (13 or later; default 13)")
    p.add_argument("--int8", action="store_true", help="write INT8 convolutions in ONNX's QDQ form, calibrated on "
                   "--calibration-data")
    p.add_argument("--calibration-data", type=Path, help="with --int8: what quantize takes (a .rec file or folder, "
                   "an image folder with --annotations, or plain images)")
    p.add_argument("--annotations", type=Path, help="the annotation folder of a JSON channel")
    p.add_argument("--num-calibration", type=int, default=128, help="images spread evenly over the data "
                   "(default 128)")
    # The INT8 options' defaults are onnx_int8.Int8Choices' (None here: not given).
    p.add_argument("--class-heads", help="with --int8, the class predictors: int8 (default: INT8 outputs, the logits "
                   "made relative to the background's), fp32, or int32-output (INT8 convolutions with 32-bit "
                   "outputs, as quantize's default, but slow in ONNX Runtime)")
    p.add_argument("--weight-bits", type=int, help="with --int8: 7 (default; safe on every x86 CPU) or 8 "
                   "(CPUs with VNNI, GPUs)")
    p.add_argument("--int8-min-channels", type=int, help="with --int8: convolutions reading fewer channels stay "
                   "FP32 (default 16: narrow stems, where INT8 kernels are slower than FP32 ones; a convolution on "
                   "the image followed by INT8 ones only is INT8 all the same; 0 makes every convolution INT8)")
    p.add_argument("--calibration", help="with --int8, the activation ranges: percentile (default: 99.99%% of "
                   "each activation's values kept) or naive (minimum and maximum, as quantize's default)")
    p.set_defaults(func=model.cmd_export_onnx)
    return parser
