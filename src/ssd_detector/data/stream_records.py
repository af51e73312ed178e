"""The records of a Pipe-mode stream, parsed into samples: RecordIO image records (label in the
header, as File mode's .rec), or an augmented manifest streamed with RecordWrapperType RecordIO
(per line the image's bytes, then the label attribute's JSON). Every label is checked as File mode
checks it; images only get a cheap header check here (the data workers decode them)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError, shown
from . import recordio
from .channel import JSON_OBJECT_WIDTH, image_record_sample
from .images import HeaderIncomplete, ImageError, image_kind, image_size
from .manifest import class_map_names, is_label, parse_label
from .sample import ImageRef, Sample


class StreamFormatError(DataError):
    """The stream cannot be read on (truncated, not RecordIO, records out of order)."""


@dataclass
class Parsed:
    index: int  # image index in the stream
    sample: Sample | None
    problems: list[str]
    label_width: int
    class_names: dict[int, str] = field(default_factory=dict)


def _decode_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        return None


def _payload_ref(payload: bytes) -> Callable[[int], ImageRef]:
    """The image of a record: its payload from the label's end on."""
    return lambda start: ImageRef("", data=payload[start:])


def parse_recordio(stream: Any, where: str) -> Iterator[Parsed]:
    for record in recordio.iter_records(stream, where):
        name = f"{where} record {record.index}"
        sample, problems, width = image_record_sample(record.payload, name, _payload_ref(record.payload))
        yield Parsed(record.index, sample, problems, width)


def parse_manifest(stream: Any, where: str) -> Iterator[Parsed]:
    """Records of an augmented manifest streamed with RecordWrapperType RecordIO: per line the
    image's bytes, then the label attribute's JSON (and any further attributes' JSON)."""
    index = -1
    image: bytes | None = None
    first_record = 0
    labels: list[Any] = []

    def finish() -> Parsed:
        name = f"{where} image {index} (records {first_record}-{record_index - 1})"
        return _manifest_sample(index, name, image or b"", labels)

    record_index = 0
    for record in recordio.iter_records(stream, where):
        record_index = record.index
        if image_kind(record.payload) is not None:
            if index >= 0:
                yield finish()
            index, image, first_record, labels = index + 1, record.payload, record.index, []
            continue
        value = _decode_json(record.payload)
        if index < 0:
            if value is not None:
                raise StreamFormatError(
                    f"{where}: record 0 is JSON, not an image: AttributeNames must list \"source-ref\" first, then "
                    "the label attribute (SageMaker streams the attributes in that order)")
            raise StreamFormatError(f"{where}: record 0 is neither a JPEG/PNG image nor JSON; is this an augmented "
                                    "manifest channel with RecordWrapperType RecordIO?")
        labels.append(value if value is not None else record.payload[:40])
    record_index += 1
    if index >= 0:
        yield finish()


def _manifest_sample(index: int, name: str, image: bytes, values: list[Any]) -> Parsed:
    def bad(problem: str) -> Parsed:
        return Parsed(index, None, [problem], 0)

    usable = [v for v in values if isinstance(v, dict)]
    if len(usable) < len(values):
        other = next(v for v in values if not isinstance(v, dict))
        return bad(f"a record after the image is neither an image nor a JSON object (starts {shown(other, 40)})")
    label = None
    for value in usable:
        if is_label(value):
            if label is not None:
                return bad("two label records follow the image")
            label = value
    if label is None:
        if not values:
            return bad("the image has no label record after it (AttributeNames must list the label attribute "
                       "after \"source-ref\")")
        label = usable[0]  # not a bounding-box label: parse_label says why
    header = image_header(image)
    if isinstance(header, str):
        return bad(header)
    width, height = header
    try:
        boxes, class_ids, problems = parse_label(label, width, height)
    except ValueError as exc:
        return bad(str(exc))
    sample = Sample(ImageRef("", data=image), boxes, class_ids, np.zeros(len(class_ids), bool), name,
                    width=width, height=height)
    names: dict[int, str] = {}
    for value in usable:  # the label's metadata, when AttributeNames also lists it: the class names
        names.update(class_map_names(value))
    return Parsed(index, sample, problems, 2 + JSON_OBJECT_WIDTH * len(class_ids), names)


PARSERS: dict[str, Callable[[Any, str], Iterator[Parsed]]] = {"recordio": parse_recordio,
                                                                 "manifest": parse_manifest}


def image_header(data: bytes) -> tuple[int, int] | str:
    """(width, height), or what is wrong: the cheap check (signature and size) every image gets
    while streaming; decoding happens in the data workers."""
    try:
        width, height = image_size(data)
    except HeaderIncomplete as exc:
        return f"{exc} (truncated)"
    except ImageError as exc:
        return str(exc)
    if width <= 0 or height <= 0:
        return f"image header gives an empty size {width}x{height}"
    return width, height
