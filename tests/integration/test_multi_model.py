"""serve in multi-model mode for real: nginx, gunicorn with 2 workers, SageMaker's /models API.
Three different models (classes, input sizes, one as a model.tar.gz) loaded, listed, invoked through
both workers and checked against the Predictor; 409, 404, 400, 507; loads and unloads while 8
clients invoke."""
from __future__ import annotations

import json
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, make_image
from benchmarks.serve import worker_rss_mb  # scripts/ is on the tests' path
from serve_process import Server

MODELS = {"three-128": (3, 128), "two-96": (2, 96), "four-160": (4, 160)}


@pytest.fixture(scope="module")
def opt_ml(tmp_path_factory) -> Path:
    """SAGEMAKER_BASE_DIR with models/NAME/model for each of MODELS; four-160 holds a model.tar.gz."""
    from ssd_detector.model.untrained import export_untrained

    base = tmp_path_factory.mktemp("mme") / "opt_ml"
    for name, (classes, size) in MODELS.items():
        folder = export_untrained(base / "models" / name / "model", {
            "num_classes": str(classes), "base_network": "mobilenet-0.25", "image_shape": str(size)})
        if name == "four-160":
            with tarfile.open(folder.parent / "model.tar.gz", "w:gz") as tar:
                for f in folder.iterdir():
                    tar.add(f, arcname=f.name)
            packed = folder.parent / "packed"
            packed.mkdir()
            (folder.parent / "model.tar.gz").rename(packed / "model.tar.gz")
    return base


def url(base: Path, name: str) -> str:
    return str(base / "models" / name / ("packed" if name == "four-160" else "model"))


@pytest.fixture(scope="module")
def picture() -> bytes:
    return encode(make_image(np.random.default_rng(5), SynthSpec(train=1, validation=0, classes=3))[0], "jpeg")


@pytest.fixture(scope="module")
def expected(opt_ml: Path, picture: bytes) -> dict[str, list]:
    """Each model's answer from the Predictor, as /invocations would give it."""
    from ssd_detector.data.images import decode_rgb
    from ssd_detector.inference import Predictor

    answers = {}
    for name in MODELS:
        rows = Predictor.load(url(opt_ml, name), extract_to=opt_ml.parent / f"expected-{name}").predict(
            decode_rgb(picture))
        answers[name] = rows.tolist()
    return answers


def start(opt_ml: Path, tmp_path: Path, **env: str) -> Server:
    server = Server(opt_ml / "model", tmp_path, workers=2,
                    env={"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(opt_ml), **env})
    server.wait_ready()
    return server


def load(server: Server, name: str, where: str) -> tuple[int, dict]:
    status, _, body = server.request("POST", "/models", json.dumps({"model_name": name, "url": where}).encode(),
                                     {"Content-Type": "application/json"})
    return status, json.loads(body)


def invoke(server: Server, name: str, picture: bytes) -> tuple[int, dict]:
    status, _, body = server.request("POST", f"/models/{name}/invoke", picture,
                                     {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"})
    return status, json.loads(body)


def same(rows: list, reference: list) -> bool:
    return len(rows) == len(reference) and bool(np.allclose(np.array(rows), np.array(reference), atol=1e-5))


def test_three_models_answer_through_both_workers(opt_ml: Path, tmp_path: Path, picture: bytes, expected: dict):
    server = start(opt_ml, tmp_path)
    try:
        assert server.request("GET", "/models")[2] == b'{"models": []}'
        for name in MODELS:
            assert load(server, name, url(opt_ml, name))[0] == 200
        status, body = load(server, "two-96", url(opt_ml, "two-96"))
        assert status == 409 and "already loaded" in body["message"]
        # The worker that did not take a load answers too, from its own copy: 8 clients, the models
        # interleaved, until each model's second copy has been loaded (which worker nginx's requests
        # reach is up to the kernel's accept queue).
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                answers = list(pool.map(lambda n: (n, invoke(server, n, picture)), list(MODELS) * 12))
                for name, (status, body) in answers:
                    assert status == 200 and same(body["prediction"], expected[name]), name
                log = server.log.read_text()
                if all(f"loaded its copy of model {name!r}" in log for name in MODELS):
                    break
        for name in MODELS:
            assert f"loaded its copy of model {name!r}" in log, log[-3000:]
        page = json.loads(server.request("GET", "/models?max_results=2")[2])
        assert [m["modelName"] for m in page["models"]] == ["four-160", "three-128"]
        rest = json.loads(server.request("GET", f"/models?nextPageToken={page['nextPageToken']}")[2])
        assert rest == {"models": [{"modelName": "two-96", "modelUrl": url(opt_ml, "two-96")}]}
        assert json.loads(server.request("GET", "/models/four-160")[2])["modelUrl"] == url(opt_ml, "four-160")
        for method, path in (("GET", "/models/nobody"), ("DELETE", "/models/nobody"), ("POST", "/models/nobody/invoke")):
            status, headers, body = server.request(method, path, picture if method == "POST" else None,
                                                   {"Content-Type": "image/jpeg"})
            assert status == 404 and json.loads(body)["error"] == "not_found", (method, path)
        outside = tmp_path / "outside"
        outside.mkdir()
        (opt_ml / "models" / "escape").symlink_to(outside)
        for name, where, words in (("../x", url(opt_ml, "two-96"), "path separator"),
                                   ("x", str(opt_ml / "models" / "escape"), "not under the models' folder"),
                                   ("x", str(opt_ml / "models"), "no model at")):
            status, body = load(server, name, where)
            assert status == 400 and words in body["message"], body
    finally:
        assert server.stop() == 0


def test_int8_and_built_in_models_on_a_multi_model_endpoint(opt_ml: Path, tmp_path: Path, picture: bytes):
    """Every format serve takes: an INT8 copy of three-128 and a model of the built-in algorithm
    (resnet-50 at 128, its own training graph), each answered as the Predictor answers."""
    from ssd_detector.data.images import decode_rgb
    from ssd_detector.inference import Predictor
    from ssd_detector.model.builtin_example import write_builtin_model
    from ssd_detector.model.quantize import QuantizeOptions, quantize

    base = tmp_path / "opt_ml"
    (base / "models").mkdir(parents=True)
    calibration = np.random.default_rng(0).integers(0, 255, (8, 3, 128, 128), dtype=np.uint8)
    quantize(opt_ml / "models" / "three-128" / "model", calibration, base / "models" / "int8" / "model",
             QuantizeOptions(num_calibration=8))
    write_builtin_model(base / "models" / "builtin" / "model", "resnet-50", 3, 128)
    server = Server(base / "model", tmp_path, workers=2,
                    env={"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(base)})
    try:
        server.wait_ready()
        for name in ("int8", "builtin"):
            folder = base / "models" / name / "model"
            assert load(server, name, str(folder))[0] == 200
            reference = Predictor(folder).predict(decode_rgb(picture)).tolist()
            for _ in range(4):
                status, body = invoke(server, name, picture)
                assert status == 200 and same(body["prediction"], reference), name
    finally:
        assert server.stop() == 0


def test_a_load_over_the_memory_limit_is_507(opt_ml: Path, tmp_path: Path):
    server = start(opt_ml, tmp_path, SSD_MODELS_MEMORY_MB="1")
    try:
        status, body = load(server, "three-128", url(opt_ml, "three-128"))
        assert status == 507 and "SSD_MODELS_MEMORY_MB" in body["message"], body
        assert json.loads(server.request("GET", "/models")[2]) == {"models": []}
    finally:
        assert server.stop() == 0


def workers_rss_mb(server: Server) -> float:
    """The resident memory of serve's gunicorn workers, together."""
    return sum(worker_rss_mb(server.process.pid))


def test_loads_and_unloads_while_clients_invoke(opt_ml: Path, tmp_path: Path, picture: bytes, expected: dict):
    """8 clients invoke three-128, two-96 and four-160 for 60 s while another client loads and
    unloads four-160 again and again: no 5xx, every 200 from the right model (four-160 may be
    404 while it is unloaded), and the workers' memory back near its start once all are unloaded."""
    server = start(opt_ml, tmp_path)
    try:
        # The start: every model loaded, answered by both workers, and unloaded once, so what stays
        # for good after a worker's first predictions (oneDNN's kernels for each layer shape, MXNet's
        # thread pools) is in it; what grows after that would be a leak.
        for name in MODELS:
            assert load(server, name, url(opt_ml, name))[0] == 200
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: invoke(server, n, picture), list(MODELS) * 16))
        for name in MODELS:
            assert server.request("DELETE", f"/models/{name}")[0] == 200
        time.sleep(2)  # the watchers drop their copies
        start_mb = workers_rss_mb(server)
        for name in ("three-128", "two-96"):
            assert load(server, name, url(opt_ml, name))[0] == 200
        deadline = time.monotonic() + 60
        problems: list[str] = []
        counts = {"loads": 0, "unloads": 0, "200": 0, "404": 0}
        lock = threading.Lock()

        def client(index: int) -> None:
            names = list(MODELS)
            i = index
            while time.monotonic() < deadline:
                name = names[i % 3]
                i += 1
                status, body = invoke(server, name, picture)
                with lock:
                    if status == 200 and same(body["prediction"], expected[name]):
                        counts["200"] += 1
                    elif status == 404 and name == "four-160":
                        counts["404"] += 1
                    else:
                        problems.append(f"{name}: {status} {str(body)[:200]}")

        def churn() -> None:
            while time.monotonic() < deadline:
                status, body = load(server, "four-160", url(opt_ml, "four-160"))
                ok = status == 200
                status2, _, body2 = server.request("DELETE", "/models/four-160")
                with lock:
                    counts["loads"] += ok
                    counts["unloads"] += status2 == 200
                    if not ok or status2 != 200:
                        problems.append(f"churn: {status} {body} / {status2} {body2[:200]!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)] + [threading.Thread(target=churn)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not problems, problems[:10]
        peak_mb = workers_rss_mb(server)
        assert counts["loads"] >= 3 and counts["200"] > 100, counts
        for name in ("three-128", "two-96"):
            assert server.request("DELETE", f"/models/{name}")[0] == 200
        time.sleep(2)  # the watchers drop their copies
        end_mb = workers_rss_mb(server)
        print(f"workers' memory: {start_mb:.0f} MB at the start, {peak_mb:.0f} MB with the models, "
              f"{end_mb:.0f} MB after unloading all; {counts}")
        assert end_mb < start_mb * 1.1, (start_mb, peak_mb, end_mb, counts)
    finally:
        assert server.stop() == 0
