"""The data commands: ``synth``, ``check-data``, ``check-job`` and ``convert``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..progress import Progress


def cmd_synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import SynthSpec, generate

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


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..data.channel import summarize, validate
    from ..data.sources import labelled_data

    with labelled_data(args.path, args.annotations, args.images, args.label_attribute, args.content_type) as data:
        progress = Progress("check-data: decoding", total=len(data.samples), unit="images",
                            quiet=args.quiet or args.no_decode)
        validate(data, args.num_classes, decode=not args.no_decode, require_all_classes=not args.validation,
                 progress=progress)
        progress.close()
    report = summarize(data, args.label_width)
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0 if not report["errors"] else 1


def _channel_summary(channel: object) -> dict:
    from ..training.inputs import PipeChannel

    if isinstance(channel, PipeChannel):  # streamed during training: not read here
        return {"format": channel.format, "input_mode": "Pipe", "distribution": channel.distribution}
    return {"format": channel.format, "images": len(channel.samples)}  # type: ignore[attr-defined]


def cmd_check_job(args: argparse.Namespace) -> int:
    from ..failure import run_job
    from ..sagemaker_env import Paths
    from ..training.inputs import read_training_inputs

    paths = Paths(Path(args.base_dir)) if args.base_dir else Paths.from_env()

    def job() -> None:
        inputs = read_training_inputs(paths, decode_images=not args.no_decode)
        hp = inputs.hyperparameters
        if hp.anchor_sizes:  # their count depends on the network, which train checks only when it builds it
            from ..model.ssd import layout_for

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
    job()  # a UserError is reported by main
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..data import convert
    from ..data.channel import validate
    from ..data.sources import conversion_source, json_outputs, recordio_output

    with conversion_source(args.source, Path(args.input), args.annotations, args.images, args.label_attribute,
                           args.image_root, args.split, args.classes) as data:
        progress = Progress("convert: checking", total=len(data.samples), unit="images", quiet=args.quiet)
        validate(data, None, decode=True, require_all_classes=False, progress=progress)
        progress.close()
        if data.issues:
            listed = "; ".join(f"{i.where}: {i.what}" for i in data.issues[:10])
            raise UserError(f"{args.input}: {len(data.issues)} problem(s), nothing written: {listed}")
        progress = Progress("convert: writing", total=len(data.samples), unit="images", quiet=args.quiet)
        if args.to == "recordio":
            out = recordio_output(Path(args.output), data.name)
            count = convert.to_recordio(data, out, object_width=6 if args.keep_difficult else 5, progress=progress)
            result: dict = {"output": str(out), "records": count}
        else:
            image_dir, annotation_dir = json_outputs(Path(args.output),
                                                     Path(args.output_annotations) if args.output_annotations
                                                     else None)
            count = convert.to_json(data, image_dir, annotation_dir, progress)
            result = {"images": str(image_dir), "annotations": str(annotation_dir), "count": count}
        progress.close()
    print(json.dumps(result))
    return 0
