"""Reading a SageMaker channel (RecordIO, or images with JSON annotations) into samples and issues.

Reading never stops at the first bad item: every problem becomes an ``Issue`` naming the file
or record, so a user sees them all at once. ``validate`` adds the checks that need the job's
``num_classes`` and decodes every image.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import UserError, shown
from ..progress import Progress
from . import recordio
from .images import IMAGE_CONTENT_TYPES, ImageError, decode_rgb, image_size_of_file
from .labels import LabelError, check_boxes, check_class_ids, check_image_size, class_id_value, clip_boxes, \
    pixel_objects, unpack_detection_label
from .sample import ImageRef, Issue, Sample

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RECORDIO_CONTENT_TYPES = ("application/x-recordio",)
# JSON values, 5 per object, plus a 2-value header: the label width the built-in needs.
JSON_OBJECT_WIDTH = 5


@dataclass
class ChannelData:
    """What a channel holds, with every problem found while reading it."""

    name: str
    format: str  # "recordio" or "json"
    samples: list[Sample] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)
    label_widths: list[int] = field(default_factory=list)  # raw label width of each sample

    @property
    def min_label_width(self) -> int:
        return max(self.label_widths, default=2 + JSON_OBJECT_WIDTH)

    def widest_sample(self) -> Sample | None:
        if not self.samples:
            return None
        return self.samples[int(np.argmax(self.label_widths))]


def files_under(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under path (recursively, as SageMaker copies an S3 prefix) with the given suffixes."""
    found: list[Path] = []
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in sorted(names)
                     if n.lower().endswith(suffixes) and not n.startswith("."))
    return found


def read_recordio_channel(path: Path | str, name: str = "") -> ChannelData:
    """A ``.rec`` file, or every ``.rec`` file under a folder."""
    path = Path(path)
    data = ChannelData(name=name or path.name, format="recordio")
    files = [path] if path.is_file() else files_under(path, (".rec",))
    if not files:
        data.issues.append(Issue(str(path), "no .rec file found (RecordIO channels hold one or more .rec files)"))
        return data
    for rec_path in files:
        _read_rec_file(rec_path, data)
    return data


def _read_rec_file(rec_path: Path, data: ChannelData) -> None:
    with open(rec_path, "rb") as stream:
        try:
            for record in recordio.iter_records(stream, rec_path.name):
                where = f"{rec_path.name}#{record.index}"

                def ref(image_start: int, record: recordio.Record = record) -> ImageRef:
                    if record.payload_offset >= 0:
                        return ImageRef(str(rec_path), record.payload_offset + image_start,
                                        len(record.payload) - image_start)
                    return ImageRef(str(rec_path), data=record.payload[image_start:])

                sample, problems, width = image_record_sample(record.payload, where, ref)
                data.issues.extend(Issue(where, p) for p in problems)
                if sample is not None:
                    data.samples.append(sample)
                    data.label_widths.append(width)
        except recordio.RecordIOFormatError as exc:
            data.issues.append(Issue(rec_path.name, str(exc)))


def image_record_sample(payload: bytes, where: str,
                        ref: Callable[[int], ImageRef]) -> tuple[Sample | None, list[str], int]:
    """One RecordIO image record -> (the sample, or None when its label is unusable; problems;
    the raw label width). ref(image_start) says where the sample's image bytes are."""
    try:
        parsed = recordio.unpack_image_record(payload)
    except ValueError as exc:
        return None, [str(exc)], 0
    if not parsed.packed:
        return None, [(f"record carries a single label value {parsed.label[0]:g}; detection records need the "
                       "packed label [header_width, object_width, class_id, xmin, ymin, xmax, ymax, ...] "
                       "(im2rec --pack-label)")], 0
    try:
        boxes, class_ids, difficult, width = unpack_detection_label(parsed.label)
    except LabelError as exc:
        return None, [str(exc)], 0
    problems = check_boxes(boxes)
    return Sample(ref(parsed.image_start), clip_boxes(boxes), class_ids, difficult, where), problems, width


def _image_relpath(file_field: Any) -> PurePosixPath:
    if not isinstance(file_field, str) or not file_field.strip():
        raise ValueError(f"'file' must be the image path relative to the channel root, not {file_field!r}")
    rel = PurePosixPath(file_field.replace("\\", "/"))
    if rel.is_absolute() or file_field.startswith(("/", "\\")) or (len(file_field) > 1 and file_field[1] == ":"):
        raise ValueError(f"'file' {file_field!r} is an absolute path; it must be relative to the channel root")
    if ".." in rel.parts:
        raise ValueError(f"'file' {file_field!r} climbs out of the channel with '..'")
    return rel


def read_json_channel(image_dir: Path | str, annotation_dir: Path | str, name: str = "") -> ChannelData:
    """Images under image_dir, one JSON annotation per image under annotation_dir."""
    image_dir, annotation_dir = Path(image_dir), Path(annotation_dir)
    data = ChannelData(name=name or image_dir.name, format="json")
    if not image_dir.is_dir():
        data.issues.append(Issue(str(image_dir), "image channel folder does not exist"))
        return data
    if not annotation_dir.is_dir():
        data.issues.append(Issue(str(annotation_dir), "annotation channel folder does not exist"))
        return data
    images = {p.relative_to(image_dir).as_posix(): p for p in files_under(image_dir, IMAGE_SUFFIXES)}
    by_basename: dict[str, list[str]] = {}
    for rel in images:
        by_basename.setdefault(PurePosixPath(rel).name, []).append(rel)
    annotations = files_under(annotation_dir, (".json",))
    if not annotations:
        data.issues.append(Issue(str(annotation_dir), "no .json annotation file found"))
    claimed: dict[str, str] = {}
    for ann_path in annotations:
        where = ann_path.relative_to(annotation_dir).as_posix()
        try:
            doc = json.loads(ann_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            data.issues.append(Issue(where, f"not a readable JSON file: {exc}"))
            continue
        except ValueError as exc:  # e.g. an integer over Python's digit limit
            data.issues.append(Issue(where, f"not a usable JSON file: {exc}"))
            continue
        except RecursionError:
            data.issues.append(Issue(where, "not a usable JSON file: nested too deeply"))
            continue
        try:
            sample = _parse_annotation(doc, where, image_dir, images, by_basename, claimed, data)
        except ValueError as exc:
            data.issues.append(Issue(where, str(exc)))
            continue
        if sample is not None:
            data.samples.append(sample)
            data.label_widths.append(2 + JSON_OBJECT_WIDTH * sample.num_objects)
    for rel in sorted(set(images) - set(claimed)):
        data.issues.append(Issue(rel, "image has no annotation: no JSON file in the annotation channel names it"))
    return data


def _parse_annotation(doc: Any, where: str, image_dir: Path, images: dict[str, Path],
                      by_basename: dict[str, list[str]], claimed: dict[str, str],
                      data: ChannelData) -> Sample | None:
    if not isinstance(doc, dict):
        raise ValueError(f"annotation must be a JSON object, not {type(doc).__name__}")
    rel = _image_relpath(doc.get("file")).as_posix()
    if rel not in images:
        candidates = by_basename.get(PurePosixPath(rel).name, [])
        hint = f" (found {candidates[0]!r}; 'file' is relative to the channel root)" if candidates else ""
        raise ValueError(f"names image {rel!r}, which is not in the image channel{hint}")
    if rel in claimed:
        raise ValueError(f"names image {rel!r}, which annotation {claimed[rel]!r} already describes")
    claimed[rel] = where
    path = images[rel]
    try:
        width, height = image_size_of_file(path)
    except ImageError as exc:
        raise ValueError(f"image {rel!r}: {exc}") from None
    problem = check_image_size(doc.get("image_size"), width, height)
    if problem:
        raise ValueError(f"{problem} (image {rel!r})")
    categories = doc.get("categories") or []
    if not isinstance(categories, list):
        raise ValueError(f"'categories' must be a list, not {type(categories).__name__}")
    for cat in categories:
        if not isinstance(cat, dict) or "class_id" not in cat or "name" not in cat:
            raise ValueError(f"categories entry {shown(cat, 40)} needs 'class_id' and 'name'")
        if not isinstance(cat["name"], (str, int, float)) or isinstance(cat["name"], bool):
            raise ValueError(f"categories entry {shown(cat, 40)}: 'name' must be a string")
        cid, cname = class_id_value(cat["class_id"], "category"), str(cat["name"])
        if data.class_names.setdefault(cid, cname) != cname:
            raise ValueError(f"category {cid} is named {cname!r} here but {data.class_names[cid]!r} elsewhere")
    objects = doc.get("annotations", [])
    if not isinstance(objects, list):
        raise ValueError(f"'annotations' must be a list, not {type(objects).__name__}")
    box_arr, ids, problems = pixel_objects(objects, width, height)
    if problems:
        data.issues.extend(Issue(where, problem) for problem in problems)
        return None
    difficult = np.zeros(len(ids), bool)
    return Sample(ImageRef(str(path)), box_arr, ids, difficult, rel, width=width, height=height)


def detect_format(channel_dir: Path, content_type: str | None, annotation_dir: Path | None) -> str:
    """'recordio' or 'json', from the channel's content type, else from what the folder holds."""
    if content_type:
        base = content_type.split(";")[0].strip().lower()
        if base in RECORDIO_CONTENT_TYPES:
            return "recordio"
        if base in IMAGE_CONTENT_TYPES:
            return "json"
        raise ValueError(f"content type {content_type!r} is not supported; use application/x-recordio, or "
                         f"{', '.join(IMAGE_CONTENT_TYPES[:3])} with annotation channels")
    if channel_dir.is_file() or files_under(channel_dir, (".rec",)):
        return "recordio"
    if annotation_dir is not None and annotation_dir.is_dir():
        return "json"
    raise ValueError(f"{channel_dir} holds neither .rec files nor images with an annotation channel")


def read_channel(path: Path | str, annotations: Path | str | None = None, content_type: str | None = None,
                 name: str = "") -> ChannelData:
    path = Path(path)
    ann = Path(annotations) if annotations is not None else None
    if not path.exists():
        return ChannelData(name=name or path.name, format="unknown",
                           issues=[Issue(str(path), "does not exist")])
    try:
        fmt = detect_format(path, content_type, ann)
    except ValueError as exc:
        return ChannelData(name=name or path.name, format="unknown", issues=[Issue(str(path), str(exc))])
    if fmt == "recordio":
        return read_recordio_channel(path, name)
    assert ann is not None
    return read_json_channel(path, ann, name)


def validate(data: ChannelData, num_classes: int | None, decode: bool = True, require_all_classes: bool = True,
             workers: int = 0, progress: Progress | None = None) -> list[Issue]:
    """Checks that need the job: class ids against num_classes (inferred when None), every class
    present (in training data), and every image decodable. Returns the new issues (also appended)."""
    issues: list[Issue] = []
    seen: set[int] = set()
    for sample in data.samples:
        seen.update(int(c) for c in sample.class_ids)
    limit = num_classes if num_classes is not None else (max(seen) + 1 if seen else 0)
    for sample in data.samples:
        for problem in check_class_ids(sample.class_ids, limit):
            issues.append(Issue(sample.where, problem))
    missing = sorted(set(range(limit)) - seen)
    if missing and data.samples:
        listed = ", ".join(str(m) for m in missing[:20]) + (" ..." if len(missing) > 20 else "")
        message = (f"class ids must be contiguous from 0 to {limit - 1}: no object has class id {listed}")
        if require_all_classes:
            issues.append(Issue(data.name or "channel", message))
        else:
            LOG.warning("%s: %s", data.name, message)
    if decode:
        issues.extend(_decode_all(data.samples, workers, progress))
    data.issues.extend(issues)
    return issues


def _decode_one(sample: Sample) -> Issue | None:
    try:
        decode_rgb(sample.image.read())
    except ImageError as exc:
        return Issue(sample.where, str(exc))
    except OSError as exc:
        return Issue(sample.where, f"cannot read image: {exc}")
    return None


def _decode_all(samples: Iterable[Sample], workers: int, progress: Progress | None = None) -> list[Issue]:
    # cv2 releases the GIL while decoding, so threads decode in parallel.
    workers = workers or min(8, os.cpu_count() or 1)
    issues = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for issue in pool.map(_decode_one, samples, chunksize=16):
            if issue is not None:
                issues.append(issue)
            if progress is not None:
                progress.advance()
    return issues


def listed_issues(issues: Sequence[Issue], limit: int, count: int | None = None) -> str:
    """The first limit problems as check-data words them (where: what), and how many more of
    count (default: all of issues) there are."""
    count = len(issues) if count is None else count
    text = "; ".join(f"{i.where}: {i.what}" for i in issues[:limit])
    more = count - min(len(issues), limit)
    return text + (f"; and {more} more" if more > 0 else "")


def raise_if_issues(data: ChannelData, what: str, limit: int = 5) -> None:
    """A UserError listing data's first problems as check-data reports them."""
    if data.issues:
        raise UserError(f"{what}: {len(data.issues)} problem(s): {listed_issues(data.issues, limit)}. "
                        "`ssd-detector check-data` lists every one.")


def summarize(data: ChannelData, label_width: int | None = None) -> dict[str, Any]:
    """The ``check-data`` report."""
    per_class: dict[int, int] = {}
    objects = 0
    difficult = 0
    for sample in data.samples:
        objects += sample.num_objects
        difficult += int(sample.difficult.sum())
        for cls in sample.class_ids:
            per_class[int(cls)] = per_class.get(int(cls), 0) + 1
    widest = data.widest_sample()
    issues = list(data.issues)
    if label_width is not None and data.samples and data.min_label_width > label_width:
        issues.append(Issue(widest.where if widest else data.name, label_width_message(data, label_width)))
    return {
        "channel": data.name,
        "format": data.format,
        "images": len(data.samples),
        "objects": objects,
        "difficult_objects": difficult,
        "classes": {str(k): per_class[k] for k in sorted(per_class)},
        "class_names": {str(k): v for k, v in sorted(data.class_names.items(), key=lambda kv: str(kv[0]))},
        "max_objects_per_image": max((s.num_objects for s in data.samples), default=0),
        "min_label_width": data.min_label_width,
        "errors": [issue.as_dict() for issue in issues],
    }


def label_width_message(data: ChannelData, label_width: int) -> str:
    widest = data.widest_sample()
    assert widest is not None
    return (f"label_width={label_width} is too small: image {widest.where} has {widest.num_objects} objects, "
            f"which needs a label width of at least {data.min_label_width}; set label_width to "
            f"{data.min_label_width} or more")
