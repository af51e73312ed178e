"""Conversions: JSON <-> RecordIO, .lst -> RecordIO (against MXNet's im2rec), Pascal VOC -> either."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from ssd_detector.data import convert
from ssd_detector.data.channel import read_channel, read_recordio_channel, validate
from ssd_detector.data.images import encode
from ssd_detector.data.lst import read_lst
from ssd_detector.data.synthetic import SynthSpec, generate
from ssd_detector.data.voc import read_voc


def test_json_to_recordio_to_json(tmp_path: Path, synth_set: Path):
    source = read_channel(synth_set / "json" / "train", synth_set / "json" / "train_annotation")
    rec = tmp_path / "train.rec"
    assert convert.to_recordio(source, rec) == 16
    back = read_recordio_channel(rec)
    assert back.issues == [] and validate(back, 3) == []
    for a, b in zip(source.samples, back.samples):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
        assert a.image.read() == b.image.read()
    # MXNet's own C++ detection iterator reads the converted file.
    import mxnet as mx
    it = mx.io.ImageDetRecordIter(path_imgrec=str(rec), data_shape=(3, 120, 160), batch_size=4, label_pad_width=64,
                                  shuffle=False)
    labels = next(iter(it)).label[0].asnumpy()  # (4, 68): [3, H, W, raw length, raw label..., -1 padding]
    for row, sample in zip(labels, source.samples):
        objects = row[4 + 2:4 + int(row[3])].reshape(-1, 5)  # (N, 5) after the 2-value header
        assert objects[:, 0].tolist() == sample.class_ids.tolist()
        np.testing.assert_allclose(objects[:, 1:], sample.boxes, atol=1e-6)
    convert.to_json(back, tmp_path / "out", tmp_path / "out_annotation")
    again = read_channel(tmp_path / "out", tmp_path / "out_annotation")
    assert again.issues == [] and validate(again, 3) == []
    for a, b in zip(source.samples, again.samples):
        assert a.class_ids.tolist() == b.class_ids.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1 / 120)


def _lst_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        (root / f"img{i}.jpg").write_bytes(encode(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)))
        objects = [f"{i % 2}\t0.1\t0.2\t0.5\t0.6", "1\t0.3\t0.3\t0.9\t0.8"][: i + 1 if i < 2 else 2]
        lines.append("\t".join([str(i), "2", "5", *objects, f"img{i}.jpg"]))
    lst = tmp_path / "data.lst"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def test_lst_to_recordio_matches_mxnet_im2rec(tmp_path: Path):
    lst = _lst_fixture(tmp_path)
    ours = read_lst(lst, tmp_path / "images")
    assert ours.issues == []
    convert.to_recordio(ours, tmp_path / "ours.rec")
    # MXNet's own tool, packing the detection labels.
    subprocess.run([sys.executable, "-m", "mxnet.tools.im2rec", "--pack-label", "--pass-through", "--no-shuffle",
                    str(tmp_path / "data"), str(tmp_path / "images")], check=True, capture_output=True)
    theirs = read_recordio_channel(tmp_path / "data.rec")
    mine = read_recordio_channel(tmp_path / "ours.rec")
    assert theirs.issues == [] and mine.issues == []
    assert len(theirs.samples) == len(mine.samples) == 3
    for a, b in zip(theirs.samples, mine.samples):
        assert a.class_ids.tolist() == b.class_ids.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
        assert a.image.read() == b.image.read()


def test_bad_lst_lines(tmp_path: Path):
    lst = tmp_path / "bad.lst"
    (tmp_path / "a.jpg").write_bytes(encode(np.zeros((10, 10, 3), np.uint8)))
    lst.write_text("0\t2\t5\t0\t0.1\t0.1\t0.5\ta.jpg\n1\t2\t5\t0\t0.1\t0.1\t0.5\t0.5\tmissing.jpg\n2\ta.jpg\n")
    data = read_lst(lst, tmp_path)
    whats = {i.where: i.what for i in data.issues}
    assert "not a multiple of the object width" in whats["bad.lst:1"]
    assert "'missing.jpg' not found" in whats["bad.lst:2"]
    assert "columns" in whats["bad.lst:3"]


def _voc_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    images = [[("dog", 11, 21, 50, 60, 0)], [("cat", 1, 1, 100, 80, 1), ("dog", 30, 10, 60, 40, 0)]]
    for i, objects in enumerate(images):
        (root / "JPEGImages" / f"{i:06d}.jpg").write_bytes(encode(np.zeros((80, 100, 3), np.uint8)))
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
                       f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                       for n, x0, y0, x1, y1, d in objects)
        (root / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation><filename>{i:06d}.jpg</filename><size><width>100</width><height>80</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000000\n000001\n")
    return root


def test_voc_to_recordio_keeps_difficult_and_to_json(tmp_path: Path):
    root = _voc_fixture(tmp_path)
    data = read_voc(root, "trainval")
    assert data.issues == []
    assert data.class_names[11] == "dog" and data.class_names[7] == "cat"  # the 20 VOC classes, in order
    first = data.samples[0]
    np.testing.assert_allclose(first.boxes, [[0.1, 0.25, 0.49, 0.7375]], atol=1e-6)  # 1-based -> 0-based
    convert.to_recordio(data, tmp_path / "voc.rec", object_width=6)
    rec = read_recordio_channel(tmp_path / "voc.rec")
    assert rec.samples[1].difficult.tolist() == [True, False]
    convert.to_json(data, tmp_path / "train", tmp_path / "train_annotation")
    js = read_channel(tmp_path / "train", tmp_path / "train_annotation")
    assert js.issues == [] and js.class_names[11] == "dog"
    assert [s.class_ids.tolist() for s in js.samples] == [[11], [7, 11]]


def test_voc_with_own_classes(tmp_path: Path):
    root = _voc_fixture(tmp_path)
    data = read_voc(root, None, ["dog"])
    assert any("'cat' is not one of the classes" in i.what for i in data.issues)


def test_synthetic_is_deterministic_by_seed(tmp_path: Path):
    spec = SynthSpec(train=4, validation=2, classes=4, width=96, height=64, seed=3, format="both")
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", SynthSpec(**{**spec.__dict__, "seed": 4}))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    rec = "recordio/train/train.rec"
    assert (tmp_path / "a" / rec).read_bytes() != (tmp_path / "c" / rec).read_bytes()
    assert (tmp_path / "a/json/validation_annotation").is_dir()
