"""Which reader takes a path a tool is given, and where converted data is written.

``check-data`` and ``evaluate`` take a channel (RecordIO, images + annotations) or a Ground Truth
manifest; ``convert`` names its source format (json, recordio, lst, voc, manifest). A manifest's
images may be downloaded to a scratch folder: they stay readable until the block ends.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .channel import ChannelData, read_channel
from .manifest import ImageResolver, is_manifest, read_manifest

SOURCES = ("json", "recordio", "lst", "voc", "manifest")


@contextlib.contextmanager
def labelled_data(path: Path, annotations: Path | None = None, images: Path | None = None,
                  label_attribute: str | None = None, content_type: str | None = None) -> Iterator[ChannelData]:
    """A channel or a Ground Truth manifest (recognized by its content), as check-data reads it."""
    resolver = ImageResolver(path.parent, images)
    try:
        if is_manifest(path):
            yield read_manifest(path, resolver, label_attribute)
        else:
            yield read_channel(path, annotations, content_type=content_type)
    finally:
        resolver.close()


@contextlib.contextmanager
def conversion_source(source: str, path: Path, annotations: Path | None = None, images: Path | None = None,
                      label_attribute: str | None = None, image_root: Path | None = None, split: str | None = None,
                      classes: str | None = None) -> Iterator[ChannelData]:
    """The data of ``path`` read as ``source`` (one of SOURCES); classes: VOC's names in id order,
    comma-separated."""
    if source not in SOURCES:
        raise UserError(f"convert: source format {source!r} is not one of {', '.join(SOURCES)}")
    resolver = ImageResolver(path.parent, images)
    try:
        if source == "manifest":
            if not path.is_file():
                raise UserError(f"convert manifest: {path} is not a file (a Ground Truth output.manifest)")
            yield read_manifest(path, resolver, label_attribute)
        elif source == "voc":
            from .voc import read_voc

            names = [c.strip() for c in classes.split(",")] if classes else None
            yield read_voc(path, split, names)
        elif source == "lst":
            from .lst import read_lst

            yield read_lst(path, image_root or path.parent)
        elif source == "json":
            if not annotations:
                raise UserError("convert json needs --annotations DIR (the annotation channel)")
            yield read_channel(path, annotations, content_type="image/jpeg")
        else:
            yield read_channel(path, content_type="application/x-recordio")
    finally:
        resolver.close()


def recordio_output(output: Path, data_name: str) -> Path:
    """A ``.rec`` path as given, else ``<data name>.rec`` inside the folder given."""
    return output if output.suffix == ".rec" else output / f"{data_name or 'data'}.rec"


def json_outputs(output: Path, output_annotations: Path | None = None) -> tuple[Path, Path]:
    """The image folder and the annotation folder (default: ``<output>_annotation`` beside it)."""
    return output, output_annotations or output.parent / f"{output.name}_annotation"
