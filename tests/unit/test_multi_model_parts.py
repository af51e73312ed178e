"""The multi-model API on small fakes: names and URLs a caller sends, the shared registry, pages,
memory limits (cgroup files), and the Flask app with a fake model loader."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd_detector.model import artifact
from ssd_detector.serving import memory
from ssd_detector.serving.errors import BadRequest
from ssd_detector.serving.multi_model import ModelStore, _page, create_multi_model_app
from ssd_detector.serving.registry import Entry, Registry, check_name, check_url
from ssd_detector.serving.settings import ServeSettings


@pytest.mark.parametrize("name", ["model.tar.gz", "a", "customer-17_v2", "名前", "x" * 1024])
def test_names_a_caller_may_use(name: str):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "back\\slash", "tab\there", "nul\0", "x" * 1025,
                                  "é" * 513, None, 7])
def test_names_that_could_be_paths_or_break_logs_are_400(name):
    with pytest.raises(BadRequest):
        check_name(name)


def test_urls_must_stay_under_the_models_folder_after_links(tmp_path: Path):
    root = tmp_path / "models"
    (root / "a" / "model").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert check_url(str(root / "a" / "model"), root) == (root / "a" / "model").resolve()
    for url in (str(outside), str(root / "link"), str(root / "a" / ".." / ".." / "elsewhere"), "", 3,
                str(root / "missing")):
        with pytest.raises(BadRequest):
            check_url(url, root)


def entry(name: str, generation: str = "g") -> Entry:
    return Entry(name=name, url=f"/opt/ml/models/{name}/model", model_dir="/x", generation=generation,
                 bytes_per_worker=1, extracted=False)


def test_the_registry_is_shared_through_files(tmp_path: Path):
    one, two = Registry(tmp_path / "r"), Registry(tmp_path / "r")  # as two workers see it
    start = one.version()
    with one.locked():
        one.add(entry("b"))
        one.add(entry("a"))
    assert [e.name for e in two.entries()] == ["a", "b"] and two.get("a") == entry("a")
    with two.locked():
        assert two.remove("a") == entry("a") and two.remove("a") is None
    assert one.get("a") is None and one.version() == start + 3


def test_pages_follow_the_token():
    entries = [entry(n) for n in ("a", "b", "c", "d", "e")]
    first, token = _page(entries, None, 2)
    second, token2 = _page(entries, token, 2)
    third, token3 = _page(entries, token2, 2)
    assert [[e.name for e in p] for p in (first, second, third)] == [["a", "b"], ["c", "d"], ["e"]]
    assert token3 is None
    with pytest.raises(BadRequest):
        _page(entries, "%%%", 2)


def test_the_container_limit_comes_from_cgroup_v2_then_v1_else_the_machine(tmp_path: Path):
    machine = memory.machine_bytes()
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    (v2 / "memory.current").write_text("1000\n")
    assert memory.container_limit_bytes(v2) == min(1 << 30, machine) and memory.container_used_bytes(v2) == 1000
    (v2 / "memory.max").write_text("max\n")
    assert memory.container_limit_bytes(v2) == machine
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(9223372036854771712))  # v1's "no limit"
    assert memory.container_limit_bytes(tmp_path / "v1") == machine
    (v1 / "memory.limit_in_bytes").write_text(str(512 << 20))
    assert memory.container_limit_bytes(tmp_path / "v1") == min(512 << 20, machine)


class FakeModel:
    """Answers one detection whose class id is the model's number (its folder's name)."""

    def __init__(self, folder: Path) -> None:
        self.number = int(folder.parent.name.split("-")[-1]) if folder.parent.name[-1].isdigit() else 0
        self.class_names = {0: "thing"}

    def predict(self, image_rgb: np.ndarray, threshold: float = 0.0, max_detections: int | None = None) -> np.ndarray:
        return np.array([[self.number, 0.9, 0.1, 0.1, 0.5, 0.5]], np.float32)


def fake_model_folder(root: Path, name: str, params_bytes: int = 1000) -> Path:
    folder = root / name / "model"
    folder.mkdir(parents=True)
    (folder / artifact.SYMBOL_FILE).write_text("{}")
    (folder / artifact.PARAMS_FILE).write_bytes(b"\0" * params_bytes)
    return folder


@pytest.fixture
def client(tmp_path: Path):
    root = tmp_path / "models"
    settings = ServeSettings(model_dir=tmp_path, multi_model=True, models_root=root, workers=2,
                             models_memory_bytes=10_000 * 2 * 3 + 1, registry=tmp_path / "scratch" / "registry")
    store = ModelStore(settings, FakeModel)
    store.base_bytes = 0
    return create_multi_model_app(store, settings).test_client(), root, store


def test_load_list_invoke_and_unload(client, monkeypatch: pytest.MonkeyPatch):
    app, root, store = client
    monkeypatch.setattr("ssd_detector.serving.multi_model.resident_bytes", lambda: 0)  # cost: the params' size
    for number in (1, 2, 3):
        url = str(fake_model_folder(root, f"m-{number}", 10_000))
        assert app.post("/models", json={"model_name": f"m-{number}", "url": url}).status_code == 200
    again = app.post("/models", json={"model_name": "m-1", "url": str(root / "m-1" / "model")})
    assert again.status_code == 409 and again.json["error"] == "conflict"
    fourth = app.post("/models", json={"model_name": "m-4", "url": str(fake_model_folder(root, "m-4", 10_000))})
    assert fourth.status_code == 507 and "SSD_MODELS_MEMORY_MB" in fourth.json["message"]
    listed = app.get("/models?max_results=2").json
    assert [m["modelName"] for m in listed["models"]] == ["m-1", "m-2"]
    rest = app.get(f"/models?next_page_token={listed['nextPageToken']}").json
    assert rest == {"models": [{"modelName": "m-3", "modelUrl": str(root / "m-3" / "model")}]}
    assert app.get("/models/m-2").json == {"modelName": "m-2", "modelUrl": str(root / "m-2" / "model")}
    png = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes()
    answer = app.post("/models/m-2/invoke", data=png, content_type="image/png",
                      headers={"X-Amzn-SageMaker-Target-Model": "m-2.tar.gz"})
    assert answer.status_code == 200 and answer.json["prediction"][0][0] == 2
    assert app.delete("/models/m-2").status_code == 200
    for response in (app.post("/models/m-2/invoke", data=png, content_type="image/png"), app.get("/models/m-2"),
                     app.delete("/models/m-2")):
        assert response.status_code == 404 and "'m-2' is not loaded" in response.json["message"]
    assert app.post("/invocations", data=png, content_type="image/png").status_code == 404


def test_bad_loads_are_400_naming_the_problem(client):
    app, root, _ = client
    empty = root / "empty" / "model"
    empty.mkdir(parents=True)
    cases = [
        ({"model_name": "a/b", "url": str(empty)}, "path separator"),
        ({"model_name": "e", "url": "/etc"}, "not under the models' folder"),
        ({"model_name": "e", "url": str(empty)}, f"expected {artifact.SYMBOL_FILE}"),
        ({"model_name": "e"}, "url must be a path"),
        ("not json", "must be JSON"),
    ]
    for body, words in cases:
        response = (app.post("/models", data=body, content_type="application/json") if isinstance(body, str)
                    else app.post("/models", json=body))
        assert response.status_code == 400 and words in response.json["message"], (body, response.json)
    assert app.get("/models").json == {"models": []}
    unpacked = root.parent / "scratch" / "unpacked"
    assert not unpacked.exists() or not os.listdir(unpacked), "nothing left of refused loads"


def test_a_second_worker_loads_on_first_use_and_drops_what_was_unloaded(client):
    app, root, store = client
    other = ModelStore(store.settings, FakeModel)  # another worker, same registry
    url = str(fake_model_folder(root, "m-5"))
    assert app.post("/models", json={"model_name": "m-5", "url": url}).status_code == 200
    assert other.model("m-5").number == 5 and "m-5" in other.copies
    assert app.delete("/models/m-5").status_code == 200
    other.sync()
    assert other.copies == {} and store.registry.entries() == []
