"""Ground Truth augmented manifests: the bounding-box label, and manifest files read as a channel.

A manifest is JSON Lines, one image per line: ``source-ref`` (the image, ``s3://`` or a path),
the label attribute (named after the labeling job) in Ground Truth's bounding-box format

    {"image_size": [{"width": W, "height": H, "depth": 3}],
     "annotations": [{"class_id": 0, "left": 111, "top": 134, "width": 61, "height": 128}]}

(pixels), and ``<attribute>-metadata`` with the class map. In Pipe mode SageMaker streams the
image and the label value as RecordIO records (``data.stream``); in File mode the manifest is
converted (``convert manifest``) or checked (``check-data``) through ``read_manifest``.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from ..errors import UserError, shown
from .channel import JSON_OBJECT_WIDTH, ChannelData
from .images import ImageError, image_size_of_file
from .labels import check_image_size, pixel_objects
from .sample import ImageRef, Issue, Sample

LOG = logging.getLogger(__name__)

SOURCE_REF = "source-ref"
METADATA_SUFFIX = "-metadata"
VIDEO_TYPES = ("groundtruth/video-object-detection", "groundtruth/video-object-tracking")
MANIFEST_SUFFIXES = (".manifest", ".jsonl", ".jsonlines")


def _wrapped(value: Any) -> dict | None:
    """The label inside ``{"<attribute name>": label}``, else None."""
    if isinstance(value, dict) and "annotations" not in value and len(value) == 1:
        inner = next(iter(value.values()))
        if isinstance(inner, dict) and "annotations" in inner:
            return inner
    return None


def is_label(value: dict) -> bool:
    """Whether a JSON object is a bounding-box label, plain or wrapped."""
    return "annotations" in value or _wrapped(value) is not None


def class_map_names(meta: Any) -> dict[int, str]:
    """The class names of a label's metadata (``{"class-map": {"0": "dog"}}``); {} when it has none."""
    class_map = meta.get("class-map") if isinstance(meta, dict) else None
    if not isinstance(class_map, dict):
        return {}
    return {int(k): v for k, v in class_map.items() if str(k).isdigit() and isinstance(v, str)}


def unwrap_label(value: Any) -> dict:
    """The bounding-box label, also when given wrapped as ``{"<attribute name>": label}``."""
    inner = _wrapped(value)
    if inner is not None:
        return inner
    if not isinstance(value, dict):
        raise ValueError(f"the label must be a JSON object with 'annotations', not {shown(value, 60)}")
    if "annotations" not in value:
        if any(isinstance(v, str) and k.endswith("-ref") for k, v in value.items()) or "frames" in value:
            raise ValueError(video_message(f"label {shown(value, 80)}"))
        raise ValueError(f"the label has no 'annotations' (keys: {', '.join(sorted(map(str, value))[:8])}); "
                         "expected Ground Truth's bounding-box format {\"image_size\": [...], \"annotations\": [...]}")
    return value


def parse_label(value: Any, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A Ground Truth bounding-box label for a width x height image -> (boxes (N, 4) normalized
    corners, class ids (N,), problems). Raises ValueError when it is not a label at all."""
    label = unwrap_label(value)
    problem = check_image_size(label.get("image_size"), width, height)
    if problem:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), [problem]
    return pixel_objects(label["annotations"], width, height)


def video_message(what: str) -> str:
    return (f"{what} is a video-frame object detection label (groundtruth/video-object-detection), which "
            "this algorithm does not take: it needs one image per manifest line with a bounding-box label. "
            "Export the frames as images and write one line per frame")


def _label_attribute(line: dict, chosen: str | None, where: str) -> str:
    for key, meta in line.items():
        if key.endswith(METADATA_SUFFIX) and isinstance(meta, dict) and meta.get("type") in VIDEO_TYPES:
            raise UserError(video_message(f"{where}: attribute {key[:-len(METADATA_SUFFIX)]!r}"))
    if chosen is not None:
        if chosen not in line:
            raise UserError(f"{where}: no label attribute {chosen!r} (attributes: {', '.join(sorted(line))})")
        return chosen
    candidates = [k for k, v in line.items() if k != SOURCE_REF and not k.endswith(METADATA_SUFFIX)
                  and isinstance(v, dict)]
    boxes = [k for k in candidates if "annotations" in line[k]]
    if len(boxes) == 1:
        return boxes[0]
    if not boxes:
        raise UserError(f"{where}: no bounding-box label attribute (one holding 'annotations'); attributes: "
                        f"{', '.join(sorted(line))}")
    raise UserError(f"{where}: several label attributes ({', '.join(sorted(boxes))}); choose one with "
                    "--label-attribute")


class ImageResolver:
    """Finds a ``source-ref``: a local path (absolute, or under the image root or the manifest's
    folder), or an ``s3://`` object under the image root (by key, bucket/key or file name), else
    downloaded with boto3 into a temporary folder."""

    def __init__(self, manifest_dir: Path, image_root: Path | None) -> None:
        self.manifest_dir = manifest_dir
        self.image_root = image_root
        self._downloads: tempfile.TemporaryDirectory | None = None
        self._s3: Any = None

    def __call__(self, ref: str) -> Path:
        if ref.startswith("s3://"):
            bucket, _, key = ref[len("s3://"):].partition("/")
            if self.image_root is not None:
                for candidate in (self.image_root / key, self.image_root / bucket / key,
                                  self.image_root / PurePosixPath(key).name):
                    if candidate.is_file():
                        return candidate
            return self._download(bucket, key, ref)
        path = Path(ref)
        for candidate in ([path] if path.is_absolute() else
                          [p / path for p in (self.image_root, self.manifest_dir) if p is not None]):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"image {ref!r} not found" + (f" under {self.image_root}" if self.image_root else ""))

    def _download(self, bucket: str, key: str, ref: str) -> Path:
        if self._s3 is None:
            try:
                import boto3
                self._s3 = boto3.client("s3")
            except Exception as exc:  # no boto3, no credentials, no region
                raise FileNotFoundError(f"{ref} is not under --images and S3 is not reachable: {exc}") from None
            self._downloads = tempfile.TemporaryDirectory(prefix="ssd-manifest-")
        assert self._downloads is not None
        target = Path(self._downloads.name) / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._s3.download_file(bucket, key, str(target))
        except Exception as exc:  # botocore's errors name the object
            raise FileNotFoundError(f"cannot download {ref}: {exc}") from None
        return target

    def close(self) -> None:
        if self._downloads is not None:
            self._downloads.cleanup()


def read_manifest(path: Path | str, resolve: Callable[[str], Path], label_attribute: str | None = None,
                  name: str = "") -> ChannelData:
    """Every line of an augmented manifest as a sample; problems become issues naming the line.
    Images that ``resolve`` downloaded from S3 live until it is closed."""
    path = Path(path)
    data = ChannelData(name=name or path.stem, format="manifest")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        data.issues.append(Issue(str(path), f"cannot read the manifest: {exc}"))
        return data
    attribute = label_attribute
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            line = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            data.issues.append(Issue(where, f"not a JSON object: {exc}"))
            continue
        if not isinstance(line, dict):
            data.issues.append(Issue(where, f"a manifest line must be a JSON object, not {type(line).__name__}"))
            continue
        attribute = _label_attribute(line, attribute, where)
        _read_line(line, attribute, where, resolve, data)
    if not data.samples and not data.issues:
        data.issues.append(Issue(str(path), "the manifest has no lines"))
    return data


def _read_line(line: dict, attribute: str, where: str, resolve: Callable[[str], Path], data: ChannelData) -> None:
    ref = line.get(SOURCE_REF)
    if not isinstance(ref, str) or not ref:
        data.issues.append(Issue(where, f"'{SOURCE_REF}' must name the image, not {shown(ref, 60)}"))
        return
    if attribute not in line:
        data.issues.append(Issue(where, f"no label attribute {attribute!r}"))
        return
    try:
        image = resolve(ref)
        width, height = image_size_of_file(image)
    except (OSError, ImageError) as exc:
        data.issues.append(Issue(where, f"image {ref}: {exc}"))
        return
    try:
        boxes, class_ids, problems = parse_label(line[attribute], width, height)
    except ValueError as exc:
        data.issues.append(Issue(where, str(exc)))
        return
    if problems:
        data.issues.extend(Issue(where, p) for p in problems)
        return
    for cid, name in class_map_names(line.get(attribute + METADATA_SUFFIX)).items():
        data.class_names.setdefault(cid, name)
    data.samples.append(Sample(ImageRef(str(image)), boxes, class_ids, np.zeros(len(class_ids), bool),
                               f"{where} ({ref})", width=width, height=height))
    data.label_widths.append(2 + JSON_OBJECT_WIDTH * len(class_ids))


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES
