"""Conversions between the formats: any reader's ChannelData -> RecordIO or JSON channels."""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..progress import Progress
from .channel import ChannelData
from .images import image_size
from .sample import Sample
from .writers import write_json_item, write_recordio

LOG = logging.getLogger(__name__)


def to_recordio(data: ChannelData, output: Path, object_width: int = 5, progress: Progress | None = None) -> int:
    """Writes every sample (image bytes copied as they are) to one ``.rec`` with its ``.idx``.

    object_width 6 keeps VOC's difficult flag; 5 is what SageMaker's own tools write.
    """
    def items() -> Iterator[tuple[Sample, bytes]]:
        for sample in data.samples:
            yield sample, sample.image.read()
            if progress is not None:
                progress.advance()

    count = write_recordio(output, items(), object_width)
    LOG.info("wrote %d records to %s", count, output)
    return count


def to_json(data: ChannelData, image_dir: Path, annotation_dir: Path, progress: Progress | None = None) -> int:
    """Writes images and one JSON annotation each, in pixel units, as SageMaker's image format."""
    for index, sample in enumerate(data.samples):
        image = sample.image.read()
        width, height = (sample.width, sample.height) if sample.width else image_size(image)
        if data.format == "manifest":  # named after the image; images of several prefixes may share a name
            base = PurePosixPath(sample.image.path).stem
        else:
            base = PurePosixPath(sample.where.replace("#", "_").replace(":", "_")).stem
        stem = f"{index:06d}_{base}" if data.format in ("recordio", "lst", "manifest") else base
        write_json_item(image_dir, annotation_dir, stem, image, width, height, sample.boxes, sample.class_ids,
                        data.class_names or None)
        if progress is not None:
            progress.advance()
    LOG.info("wrote %d images with annotations to %s and %s", len(data.samples), image_dir, annotation_dir)
    return len(data.samples)
