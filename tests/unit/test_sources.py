"""Which reader takes a path a tool is given, and where converted data is written (data.sources)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssd_detector.data.sources import conversion_source, json_outputs, labelled_data, recordio_output
from ssd_detector.errors import UserError


def test_recordio_output_is_the_rec_file_given_or_named_after_the_data_in_the_folder_given():
    assert recordio_output(Path("out/train.rec"), "train") == Path("out/train.rec")
    assert recordio_output(Path("out"), "validation") == Path("out/validation.rec")
    assert recordio_output(Path("out"), "") == Path("out/data.rec")


def test_json_outputs_put_the_annotations_beside_the_images_unless_told():
    assert json_outputs(Path("out/train")) == (Path("out/train"), Path("out/train_annotation"))
    assert json_outputs(Path("out/train"), Path("ann")) == (Path("out/train"), Path("ann"))


def test_a_channel_and_a_manifest_are_told_apart_by_their_content(synth_set: Path):
    with labelled_data(synth_set / "recordio/train") as data:
        assert data.format == "recordio" and len(data.samples) == 16
    with labelled_data(synth_set / "json/train", synth_set / "json/train_annotation") as data:
        assert len(data.samples) == 16
    with labelled_data(synth_set / "manifest/train.manifest", images=synth_set / "manifest") as data:
        assert data.format == "manifest" and len(data.samples) == 16


def test_conversion_sources_read_as_named_and_refuse_what_they_cannot(synth_set: Path, tmp_path: Path):
    with conversion_source("recordio", synth_set / "recordio/train") as data:
        assert len(data.samples) == 16
    with pytest.raises(UserError, match="source format 'xml' is not one of json, recordio"):
        with conversion_source("xml", synth_set):
            pass
    with pytest.raises(UserError, match="convert json needs --annotations"):
        with conversion_source("json", synth_set / "json/train"):
            pass
    with pytest.raises(UserError, match="is not a file"):
        with conversion_source("manifest", tmp_path):
            pass
