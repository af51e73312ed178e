"""The synthetic sets: both families, their labels, and their reproducibility."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd_detector.data.channel import read_channel
from ssd_detector.data.synth_photo import find_photos, load_photos, make_photo_image
from ssd_detector.data.synthetic import SIZE_RANGES, SynthSpec, generate


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three stand-in 'photographs' (textured noise), one grey, as a user's --backgrounds folder."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        coarse = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
        image = cv2.resize(coarse, (400, 300), interpolation=cv2.INTER_CUBIC)
        if i == 2:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / f"photo{i}.{'png' if i else 'jpg'}"), image)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_photo_images_label_every_object_inside_the_image(photos_dir: Path):
    photos = load_photos(find_photos(photos_dir))
    assert len(photos) == 3 and all(p.shape[2] == 3 for p in photos)
    sizes, truncated = [], 0
    for seed in range(60):
        image, boxes, classes = make_photo_image(np.random.default_rng(seed), photos, 320, 240, 5, 6,
                                                  SIZE_RANGES["photo"])
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert boxes.shape == (len(classes), 4) and 1 <= len(classes) <= 6
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
        assert set(classes.tolist()) <= set(range(5))
        sizes += list(np.sqrt((boxes[:, 2] - boxes[:, 0]) * 320 * (boxes[:, 3] - boxes[:, 1]) * 240))
        truncated += int(np.sum((boxes[:, :2] == 0) | (boxes[:, 2:] == 1)))
    assert min(sizes) < 20 and max(sizes) > 120, "tiny to large objects"
    assert truncated > 0, "some objects are cut by the border"


def test_photo_family_is_reproducible_and_written_with_class_names(tmp_path: Path, photos_dir: Path):
    spec = SynthSpec(train=6, validation=2, classes=4, seed=3, style="photo", backgrounds=str(photos_dir))
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    a, b = sorted((tmp_path / "a/train").iterdir()), sorted((tmp_path / "b/train").iterdir())
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    doc = json.loads((tmp_path / "a/train_annotation/train_000000.json").read_text())
    assert doc["categories"] == [{"class_id": i, "name": n} for i, n in enumerate(["circle", "square", "triangle",
                                                                                   "cross"])]
    channel = read_channel(tmp_path / "a/train", tmp_path / "a/train_annotation")
    assert len(channel.samples) == 6 and not channel.issues
    other = SynthSpec(train=6, validation=0, classes=4, seed=4, style="photo", backgrounds=str(photos_dir))
    generate(tmp_path / "c", other)
    assert (tmp_path / "c/train/train_000000.jpg").read_bytes() != a[0].read_bytes()


def test_bad_photo_options_are_named(tmp_path: Path, photos_dir: Path):
    with pytest.raises(ValueError, match="--style 'sketch'"):
        SynthSpec(train=1, validation=0, classes=2, style="sketch").check()
    with pytest.raises(ValueError, match="--backgrounds .* is for --style photo"):
        SynthSpec(train=1, validation=0, classes=2, backgrounds=str(photos_dir)).check()
    with pytest.raises(ValueError, match="not a folder"):
        find_photos(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no photographs"):
        find_photos(empty)
    (empty / "tiny.png").write_bytes(cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))[1].tobytes())
    with pytest.raises(ValueError, match="tiny.png: not a readable image of at least 64x64"):
        load_photos(find_photos(empty))


def test_cli_photo_style_reports_a_bad_backgrounds_folder(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "ssd_detector.cli", "synth", str(tmp_path / "out"), "--train", "2",
                             "--classes", "2", "--style", "photo", "--backgrounds", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--backgrounds" in result.stderr and "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_cli_photo_style(tmp_path: Path, photos_dir: Path):
    result = subprocess.run([sys.executable, "-m", "ssd_detector.cli", "synth", str(tmp_path / "out"), "--train", "3",
                             "--validation", "1", "--classes", "3", "--style", "photo", "--backgrounds",
                             str(photos_dir), "--format", "recordio"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(read_channel(tmp_path / "out/train").samples) == 3


def test_object_sizes_follow_min_and_max_size():
    from ssd_detector.data.synthetic import make_image

    spec = SynthSpec(train=1, validation=0, classes=3, min_size=0.15, max_size=0.6, max_objects=4)
    sides = []
    for seed in range(40):
        _, boxes, _ = make_image(np.random.default_rng(seed), spec)
        assert 1 <= len(boxes) <= 4
        sides += list(np.sqrt((boxes[:, 2] - boxes[:, 0]) * 320 * (boxes[:, 3] - boxes[:, 1]) * 240))
    assert 0.15 * 240 - 2 <= min(sides) and max(sides) <= 0.6 * 240 + 2
    with pytest.raises(ValueError, match="--min-size 0.7 and --max-size 0.6"):
        SynthSpec(train=1, validation=0, classes=3, min_size=0.7, max_size=0.6).check()
