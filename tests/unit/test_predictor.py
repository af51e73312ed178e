"""Predictor: an exported model's detections in the built-in's row format, from a folder or an
archive, and clear errors for anything that is not a model."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.errors import UserError
from ssd_detector.inference import Predictor
from ssd_detector.model import artifact
from ssd_detector.model.untrained import export_untrained

SIZE = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_untrained(tmp_path_factory.mktemp("predictor") / "model",
                            {"num_classes": "3", "base_network": "mobilenet-0.25", "image_shape": str(SIZE)})


@pytest.fixture(scope="module")
def predictor(model: Path) -> Predictor:
    return Predictor(model)


def image(seed: int, height: int = 50, width: int = 70) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_reads_the_image_size_and_class_names(predictor: Predictor):
    assert predictor.image_size == SIZE
    assert predictor.class_names == {0: "0", 1: "1", 2: "2"}
    pixels = predictor.preprocess(image(0))
    assert pixels.shape == (3, SIZE, SIZE) and pixels.dtype == np.uint8


def test_rows_are_the_built_in_format(predictor: Predictor):
    rows = predictor.predict(image(1))
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == 6 and len(rows) > 0
    assert set(np.unique(rows[:, 0])) <= {0.0, 1.0, 2.0}, "class ids, no suppressed (-1) rows"
    assert np.all(np.diff(rows[:, 1]) <= 0), "sorted by score"
    assert rows[:, 2:].min() >= 0.0 and rows[:, 2:].max() <= 1.0, "corners within the image"
    assert np.all(rows[:, 4] >= rows[:, 2]) and np.all(rows[:, 5] >= rows[:, 3])


def test_threshold_and_max_detections(predictor: Predictor):
    rows = predictor.predict(image(2))
    cut = float(np.median(rows[:, 1]))
    kept = predictor.predict(image(2), threshold=cut)
    assert len(kept) == int((rows[:, 1] >= cut).sum()) and kept[:, 1].min() >= cut
    assert np.array_equal(predictor.predict(image(2), max_detections=3), rows[:3])
    assert len(predictor.predict(image(2), threshold=1.01)) == 0


def test_a_batch_answers_as_its_images_one_by_one(predictor: Predictor):
    images = [image(3), image(4, 90, 40)]
    batch = predictor.predict_batch(images)
    for one, rows in zip(images, batch):
        np.testing.assert_allclose(rows, predictor.predict(one), atol=1e-5)
    assert predictor.predict_batch([]) == []


def test_load_takes_an_archive_and_the_constructor_does_not(model: Path, predictor: Predictor, tmp_path: Path):
    archive = tmp_path / artifact.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for path in model.iterdir():
            tar.add(path, arcname=path.name)
    loaded = Predictor.load(archive, extract_to=tmp_path / "unpacked")
    assert loaded.model_dir == tmp_path / "unpacked"
    assert np.array_equal(loaded.predict(image(5)), predictor.predict(image(5)))
    assert Predictor.load(tmp_path, extract_to=tmp_path / "again").model_dir == tmp_path / "again"  # folder with it
    with pytest.raises(UserError, match="is not an unpacked model"):
        Predictor(tmp_path)


def test_what_is_not_a_model_is_named(model: Path, tmp_path: Path):
    with pytest.raises(UserError, match=f"no model at {tmp_path}"):
        Predictor.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in model.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / artifact.PARAMS_FILE).unlink()
    with pytest.raises(UserError, match=f"lacks {artifact.PARAMS_FILE}"):
        Predictor(broken)
    (broken / artifact.PARAMS_FILE).write_bytes((model / artifact.PARAMS_FILE).read_bytes())
    (broken / artifact.HYPERPARAMS_FILE).write_text(json.dumps({"num_classes": "3"}))
    with pytest.raises(UserError, match="no usable image_shape"):
        Predictor(broken)


def test_each_batch_size_runs_its_own_graph_with_shared_parameters(predictor: Predictor):
    import mxnet as mx

    from ssd_detector.inference import MAX_BATCH_SHAPES

    rng = np.random.default_rng(0)
    size = predictor.image_size
    for batch in (1, 3, 1, 8, 2, 5, 3):
        images = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
        expected = predictor.net(mx.nd.array(images, dtype="uint8")).asnumpy()
        np.testing.assert_array_equal(predictor.forward(images), expected)
    assert list(predictor._by_batch) == [8, 2, 5, 3][-MAX_BATCH_SHAPES:]  # the most recent sizes
    shared = predictor.net.collect_params()
    for block in predictor._by_batch.values():
        for name, param in block.collect_params().items():
            assert param is shared[name]
