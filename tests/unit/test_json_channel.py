"""Images + JSON annotations: every bad-data case is reported with where and what."""
import json
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.channel import read_channel, read_json_channel, summarize, validate
from ssd_detector.data.images import encode


def make_channel(root: Path, items: dict[str, dict], images: dict[str, bytes]) -> tuple[Path, Path]:
    image_dir, ann_dir = root / "train", root / "train_annotation"
    image_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for rel, data in images.items():
        (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (image_dir / rel).write_bytes(data)
    for name, doc in items.items():
        (ann_dir / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return image_dir, ann_dir


def picture(width: int = 100, height: int = 80, kind: str = "jpeg", channels: int = 3) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return encode(image, kind)


def ann(file: str, objects: list, width: int = 100, height: int = 80, **extra) -> dict:
    doc = {"file": file, "image_size": [{"width": width, "height": height, "depth": 3}],
           "annotations": [dict(zip(("class_id", "left", "top", "width", "height"), o)) for o in objects]}
    doc.update(extra)
    return doc


def test_good_channel_normalizes_pixels_and_keeps_class_names(tmp_path: Path):
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("sub/a.jpg", [(0, 10, 20, 30, 40), (1, 50, 0, 50, 80)],
                      categories=[{"class_id": 0, "name": "dog"}, {"class_id": 1, "name": "cat"}]),
        "b.json": ann("b.png", [(1, 0, 0, 100, 80)]),
    }, {"sub/a.jpg": picture(), "b.png": picture(kind="png")})
    data = read_json_channel(image_dir, ann_dir)
    assert data.issues == []
    assert validate(data, 2) == []
    a = next(s for s in data.samples if s.where == "sub/a.jpg")
    np.testing.assert_allclose(a.boxes, [[0.1, 0.25, 0.4, 0.75], [0.5, 0.0, 1.0, 1.0]])
    assert data.class_names == {0: "dog", 1: "cat"}
    report = summarize(data, 350)
    assert report["images"] == 2 and report["objects"] == 3 and report["classes"] == {"0": 1, "1": 2}
    assert report["max_objects_per_image"] == 2 and report["min_label_width"] == 12


@pytest.mark.parametrize("doc,images,where,what", [
    (ann("a.jpg", [(0, 10, 10, 20, 20)]), {"a.jpg": b"garbage bytes"}, "a.json", "not a JPEG or PNG"),
    (ann("missing.jpg", [(0, 10, 10, 20, 20)]), {}, "a.json", "'missing.jpg', which is not in the image channel"),
    (ann("a.jpg", [(0, 90, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "lies outside the 100x80 image"),
    (ann("a.jpg", [(0, -5, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "lies outside"),
    (ann("a.jpg", [(0, 10, 10, 0, 20)]), {"a.jpg": picture()}, "a.json", "zero area"),
    (ann("/abs/a.jpg", [(0, 10, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "absolute path"),
    (ann("../a.jpg", [(0, 10, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "climbs out of the channel"),
    (ann("a.jpg", [(0.5, 10, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "not a whole number"),
    (ann("a.jpg", [(-1, 10, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "negative"),
    (ann("a.jpg", [("x", 10, 10, 20, 20)]), {"a.jpg": picture()}, "a.json", "class_id='x' is not a number"),
    (ann("a.jpg", [(0, 10, 10, 20, 20)], width=200), {"a.jpg": picture()}, "a.json",
     "image_size says 200x80 but the image is 100x80 (image 'a.jpg')"),
    ("{not json", {"a.jpg": picture()}, "a.json", "not a readable JSON file"),
    ({"annotations": []}, {"a.jpg": picture()}, "a.json", "'file' must be the image path"),
    (ann("a.jpg", [(0, 10, 10, 20, 20)]), {"a.jpg": picture(), "extra.jpg": picture()}, "extra.jpg",
     "image has no annotation"),
    (ann("a.jpg", [(0, 10, 10, 20, 20)]), {"sub/a.jpg": picture()}, "a.json", "found 'sub/a.jpg'"),
])
def test_bad_data_is_reported(tmp_path: Path, doc, images, where, what):
    image_dir, ann_dir = make_channel(tmp_path, {"a.json": doc}, images)
    data = read_json_channel(image_dir, ann_dir)
    validate(data, 1)
    assert any(i.where == where and what in i.what for i in data.issues), data.issues


def test_truncated_jpeg_and_png_are_caught(tmp_path: Path):
    jpeg, png = picture(), picture(kind="png")
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("a.jpg", [(0, 10, 10, 20, 20)]), "b.json": ann("b.png", [(0, 10, 10, 20, 20)]),
    }, {"a.jpg": jpeg[: len(jpeg) * 2 // 3], "b.png": png[: len(png) * 2 // 3]})
    data = read_json_channel(image_dir, ann_dir)
    issues = validate(data, 1)
    assert sorted((i.where, "truncated" in i.what) for i in issues) == [("a.jpg", True), ("b.png", True)]


def test_class_out_of_range_and_non_contiguous(tmp_path: Path):
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("a.jpg", [(0, 10, 10, 20, 20), (2, 10, 10, 20, 20)]),
        "b.json": ann("b.jpg", [(5, 10, 10, 20, 20)]),
    }, {"a.jpg": picture(), "b.jpg": picture()})
    data = read_json_channel(image_dir, ann_dir)
    issues = validate(data, 3)
    whats = [i.what for i in issues]
    assert any("class id 5 is out of range for num_classes=3" in w for w in whats)
    assert any("contiguous" in w and "no object has class id 1" in w for w in whats)


def test_two_annotations_for_one_image(tmp_path: Path):
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("a.jpg", [(0, 10, 10, 20, 20)]), "b.json": ann("a.jpg", [(0, 10, 10, 20, 20)]),
    }, {"a.jpg": picture()})
    data = read_json_channel(image_dir, ann_dir)
    assert any("already describes" in i.what for i in data.issues)


def test_grey_and_rgba_png_become_rgb(tmp_path: Path):
    import cv2
    grey = cv2.imencode(".png", np.full((80, 100), 100, np.uint8))[1].tobytes()
    rgba = cv2.imencode(".png", np.full((80, 100, 4), 100, np.uint8))[1].tobytes()
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("a.png", [(0, 10, 10, 20, 20)]), "b.json": ann("b.png", [(0, 10, 10, 20, 20)]),
    }, {"a.png": grey, "b.png": rgba})
    data = read_json_channel(image_dir, ann_dir)
    assert validate(data, 1) == []


def test_synthetic_json_and_recordio_read_the_same(synth_set: Path):
    js = read_channel(synth_set / "json" / "train", synth_set / "json" / "train_annotation")
    rec = read_channel(synth_set / "recordio" / "train")
    assert js.issues == [] and rec.issues == []
    assert len(js.samples) == len(rec.samples) == 16
    for a, b in zip(js.samples, rec.samples):
        assert a.class_ids.tolist() == b.class_ids.tolist()
        # JSON stores whole pixels; RecordIO keeps the exact normalized corners.
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1 / 120)


@pytest.mark.parametrize("text,what", [
    ('{"file": "a.jpg", "annotations": [{"class_id": 0, "left": NaN, "top": 1, "width": 5, "height": 5}]}',
     "left=nan is not a finite number"),
    ('{"file": "a.jpg", "annotations": [{"class_id": 0, "left": 1, "top": 1, "width": Infinity, "height": 5}]}',
     "width=inf is not a finite number"),
    ('{"file": "a.jpg", "annotations": [{"class_id": Infinity, "left": 1, "top": 1, "width": 5, "height": 5}]}',
     "class_id=inf is not a finite number"),
    ('{"file": "a.jpg", "annotations": [{"class_id": 1e300, "left": 1, "top": 1, "width": 5, "height": 5}]}',
     "beyond the largest supported class id 9999"),
    ('{"file": "a.jpg", "annotations": [{"class_id": 4294967296, "left": 1, "top": 1, "width": 5, "height": 5}]}',
     "class_id 4294967296 is beyond the largest supported class id 9999"),
    ('{"file": "a.jpg", "annotations": [{"class_id": ' + "9" * 5000 + ', "left": 1, "top": 1, "width": 5, "height": 5}]}',
     "not a usable JSON file"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ('{"file": "a.jpg", "annotations": [], "categories": [{"class_id": [0], "name": "dog"}]}',
     "category class_id=[0] is not a number"),
    ('{"file": "a.jpg", "annotations": [], "categories": {"class_id": 0}}', "'categories' must be a list"),
])
def test_hostile_json_values_are_listed_problems(tmp_path: Path, text: str, what: str):
    image_dir, ann_dir = make_channel(tmp_path, {"a.json": text}, {"a.jpg": picture()})
    data = read_json_channel(image_dir, ann_dir)
    assert any(what in issue.what and issue.where == "a.json" for issue in data.issues), data.issues
    assert not data.samples


def test_category_ids_as_strings_and_numbers_are_one_kind(tmp_path: Path):
    image_dir, ann_dir = make_channel(tmp_path, {
        "a.json": ann("a.jpg", [(0, 10, 10, 20, 20)], categories=[{"class_id": "0", "name": "dog"}]),
        "b.json": ann("b.jpg", [(1, 10, 10, 20, 20)], categories=[{"class_id": 1, "name": "cat"}]),
    }, {"a.jpg": picture(), "b.jpg": picture()})
    data = read_json_channel(image_dir, ann_dir)
    assert data.issues == []
    assert data.class_names == {0: "dog", 1: "cat"}
    assert sorted(data.class_names.items()) == [(0, "dog"), (1, "cat")], "sortable: the model save sorts them"
