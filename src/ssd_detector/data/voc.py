"""Pascal VOC (``Annotations/*.xml`` + ``JPEGImages/``) read into samples."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from .channel import ChannelData
from .images import ImageError, image_size_of_file
from .sample import ImageRef, Issue, Sample, empty_objects

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def _text(node: ET.Element, path: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"missing <{path}>")
    return found.text.strip()


def _names_in(xml_files: Sequence[Path]) -> list[str]:
    names: set[str] = set()
    for xml in xml_files:
        try:
            names.update(o.findtext("name", "").strip() for o in ET.parse(xml).getroot().iter("object"))
        except ET.ParseError:
            continue
    names.discard("")
    return list(VOC_CLASSES) if names <= set(VOC_CLASSES) else sorted(names)


def read_voc(root: Path | str, split: str | None = None, classes: Sequence[str] | None = None) -> ChannelData:
    """A VOC folder; ``split`` names ``ImageSets/Main/<split>.txt`` (all annotations when None).

    Class ids follow ``classes``, else the 20 VOC classes when every name is one of them, else
    the names found, sorted. VOC's 1-based pixel corners become 0-based normalized corners.
    """
    root = Path(root)
    data = ChannelData(name=root.name, format="voc")
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if split:
        list_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.exists():
            data.issues.append(Issue(str(list_file), f"split list for {split!r} does not exist"))
            return data
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        xml_files = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        data.issues.append(Issue(str(ann_dir), "no VOC annotation (.xml) found"))
        return data
    names = list(classes) if classes else _names_in(xml_files)
    index = {name: i for i, name in enumerate(names)}
    data.class_names = dict(enumerate(names))
    for xml in xml_files:
        where = xml.name
        try:
            tree = ET.parse(xml).getroot()
            filename = _text(tree, "filename")
            width, height = int(float(_text(tree, "size/width"))), int(float(_text(tree, "size/height")))
        except (OSError, ET.ParseError, ValueError) as exc:
            data.issues.append(Issue(where, f"not a usable VOC annotation: {exc}"))
            continue
        image_path = img_dir / filename
        try:
            actual = image_size_of_file(image_path)
        except (OSError, ImageError) as exc:
            data.issues.append(Issue(where, f"image {filename}: {exc}"))
            continue
        if actual != (width, height):
            data.issues.append(Issue(where, f"<size> says {width}x{height} but {filename} is {actual[0]}x{actual[1]}"))
            continue
        boxes, class_ids, difficult = [], [], []
        for obj in tree.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in index:
                data.issues.append(Issue(where, f"object class {name!r} is not one of the classes {names}"))
                continue
            try:
                x0, y0 = float(_text(obj, "bndbox/xmin")) - 1, float(_text(obj, "bndbox/ymin")) - 1
                x1, y1 = float(_text(obj, "bndbox/xmax")) - 1, float(_text(obj, "bndbox/ymax")) - 1
            except ValueError as exc:
                data.issues.append(Issue(where, f"object {name!r}: {exc}"))
                continue
            if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                data.issues.append(Issue(where, f"object {name!r}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty "
                                                f"or outside the {width}x{height} image"))
                continue
            boxes.append([x0 / width, y0 / height, x1 / width, y1 / height])
            class_ids.append(index[name])
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
        if boxes:
            sample = Sample(ImageRef(str(image_path)), np.array(boxes, np.float32), np.array(class_ids, np.int32),
                            np.array(difficult, bool), filename, width=width, height=height)
        else:
            sample = Sample(ImageRef(str(image_path)), *empty_objects(), filename, width=width, height=height)
        data.samples.append(sample)
        data.label_widths.append(2 + 6 * sample.num_objects)
    return data
