"""`ssd-detector serve`: real nginx and gunicorn on a free port, real HTTP over loopback (the stack's
own behaviour, slow clients and process ends: test_serve_stack.py)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, make_image
from serve_process import Server

CLI = [sys.executable, "-m", "ssd_detector.cli"]


@pytest.fixture(scope="module")
def model_dir(small_model: Path) -> Path:
    return small_model


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory):
    srv = Server(model_dir, tmp_path_factory.mktemp("serve-log"), env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image(np.random.default_rng(3), SynthSpec(train=1, validation=0, classes=3))[0]


def ok_after(server: Server, jpeg: bytes) -> None:
    status, _, body = server.invoke(jpeg)
    assert status == 200 and "prediction" in json.loads(body)


def error_of(status_body: tuple[int, dict, bytes], status: int) -> str:
    got, headers, body = status_body
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"}
    assert "Traceback" not in parsed["message"]
    return parsed["message"]


def test_ping_and_execution_parameters(server: Server):
    start = time.monotonic()
    assert server.request("GET", "/ping")[0] == 200
    assert time.monotonic() - start < 2
    status, headers, body = server.request("GET", "/execution-parameters")
    assert status == 200
    assert json.loads(body) == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 1}


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", "text/html, application/json;q=0.5",
                                    "application/json; charset=utf-8"])
def test_json_response(server: Server, image: np.ndarray, accept: str | None):
    headers = {"Accept": accept} if accept else {}
    status, got, body = server.invoke(encode(image, "jpeg"), **headers)
    assert status == 200 and got["content-type"] == "application/json"
    rows = np.array(json.loads(body)["prediction"]).reshape(-1, 6)
    assert len(rows) > 0, "an untrained network still scores every anchor"
    assert np.all(rows[:, 0] >= 0) and np.all(rows[:, 0] < 3)
    assert np.all(np.diff(rows[:, 1]) <= 0), "sorted by score"
    assert np.all((rows[:, 2:] >= 0) & (rows[:, 2:] <= 1))


def test_content_types_and_image_modes(server: Server, image: np.ndarray):
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    ok, png_grey = cv2.imencode(".png", grey)
    ok2, png_rgba = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok and ok2
    for body, content_type in ((encode(image, "png"), "image/png"), (encode(image, "jpeg"), "application/x-image"),
                               (png_grey.tobytes(), "image/png"), (png_rgba.tobytes(), "image/png; charset=binary"),
                               (encode(image, "jpeg"), "image/jpg"), (encode(image, "jpeg"), "application/octet-stream"),
                               (encode(image, "png"), "application/octet-stream")):
        status, _, out = server.invoke(body, content_type)
        assert status == 200, out
        assert "prediction" in json.loads(out)


def exif_rotated_jpeg(image: np.ndarray) -> bytes:
    """A JPEG whose EXIF orientation (6) says: rotate 90 degrees clockwise to display."""
    data = encode(image, "jpeg")
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) \
        + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_jsonlines_response(server: Server, image: np.ndarray):
    jpeg = encode(image, "jpeg")
    status, got, body = server.invoke(jpeg, Accept="application/jsonlines")
    assert status == 200 and got["content-type"] == "application/jsonlines"
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert json.loads(body) == json.loads(server.invoke(jpeg)[2])


def test_annotation_response_honours_exif(server: Server, image: np.ndarray):
    h, w = image.shape[:2]
    status, got, body = server.invoke(exif_rotated_jpeg(image), Accept="application/json;annotation=1")
    assert status == 200 and got["content-type"] == "application/json"
    parsed = json.loads(body)
    assert parsed["image_size"] == [{"width": h, "height": w, "depth": 3}], "EXIF rotation applied"
    assert parsed["annotations"]
    for a in parsed["annotations"]:
        assert set(a) == {"class_id", "score", "left", "top", "width", "height"}
        assert isinstance(a["class_id"], int) and isinstance(a["left"], int)
        assert 0 <= a["left"] and a["left"] + a["width"] <= h


def test_custom_attributes(server: Server, image: np.ndarray):
    jpeg = encode(image, "jpeg")
    everything = json.loads(server.invoke(jpeg)[2])["prediction"]
    status, _, body = server.invoke(jpeg, **{"X-Amzn-SageMaker-Custom-Attributes": "max_detections=3; other=x"})
    assert status == 200 and json.loads(body)["prediction"] == everything[:3]
    cut = sorted(r[1] for r in everything)[len(everything) // 2]
    status, _, body = server.invoke(jpeg, **{"X-Amzn-SageMaker-Custom-Attributes": f"threshold={cut}"})
    assert json.loads(body)["prediction"] == [r for r in everything if r[1] >= cut]
    for bad in ("threshold=abc", "threshold=1.5", "max_detections=0"):
        message = error_of(server.invoke(jpeg, **{"X-Amzn-SageMaker-Custom-Attributes": bad}), 400)
        assert bad.split("=")[1] in message
    ok_after(server, jpeg)


@pytest.mark.parametrize("accept,kind", [("image/png", "png"), ("image/jpeg", "jpeg")])
def test_drawn_image_response(server: Server, image: np.ndarray, accept: str, kind: str):
    status, got, body = server.invoke(encode(image, "png"), Accept=accept,
                                      **{"X-Amzn-SageMaker-Custom-Attributes": "threshold=0"})
    assert status == 200 and got["content-type"] == accept
    drawn = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == image.shape
    assert not np.array_equal(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB), image), "boxes are drawn"


def bomb_png(side: int = 10_000) -> bytes:
    """A side x side grey PNG of zeros: about 100 kB that would decode to 100 megapixels."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_errors_are_json_and_the_worker_keeps_serving(server: Server, image: np.ndarray):
    jpeg = encode(image, "jpeg")
    cases = [
        (server.invoke(b"not an image at all"), 400, "not a JPEG or PNG"),
        (server.invoke(jpeg[: len(jpeg) // 2]), 400, "truncated"),
        (server.invoke(bomb_png(), "image/png"), 400, "100000000 pixels"),
        (server.invoke(b""), 400, "empty"),
        (server.invoke(b"\0" * (1024 * 1024 + 1)), 413, "1048577 bytes"),
        (server.invoke(jpeg, "text/csv"), 415, "text/csv"),
        (server.invoke(b"\0" * 900_000, "text/csv"), 415, "text/csv"),
        (server.invoke(jpeg, ""), 415, "(none)"),
        (server.invoke(b"GIF89a" + b"\0" * 100, "application/octet-stream"), 415, "neither a JPEG nor a PNG"),
        (server.invoke(jpeg, Accept="text/csv"), 406, "text/csv"),
        (server.request("GET", "/nowhere"), 404, ""),
        (server.request("GET", "/invocations"), 405, ""),
    ]
    for response, status, words in cases:
        assert words in error_of(response, status)
        ok_after(server, jpeg)


def test_a_picture_too_wide_for_jpeg_is_a_406_not_a_500(server: Server):
    ok, wide = cv2.imencode(".png", np.zeros((10, 70_000, 3), np.uint8))
    assert ok
    message = error_of(server.invoke(wide.tobytes(), "image/png", Accept="image/jpeg"), 406)
    assert "70000x10" in message and "image/png" in message
    status, headers, _ = server.invoke(wide.tobytes(), "image/png", Accept="image/png")
    assert status == 200 and headers["content-type"] == "image/png"


def test_chunked_body_over_the_limit_is_413(server: Server, image: np.ndarray):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        chunks = (b"\0" * 65536 for _ in range(20))  # 1.25 MB, no Content-Length
        conn.request("POST", "/invocations", body=chunks, headers={"Content-Type": "image/jpeg"},
                     encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "payload_too_large"
    finally:
        conn.close()
    ok_after(server, encode(image, "jpeg"))


def raw_request(port: int, head: bytes, body: bytes, wait: float = 30) -> tuple[float, bytes]:
    """Sends head and body, then waits for the answer without sending more: (seconds, answer)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(head + body)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return time.monotonic() - start, answer


def test_gunicorn_alone_answers_a_stalled_body_with_a_408_within_seconds(model_dir: Path, tmp_path: Path,
                                                                        image: np.ndarray):
    """--no-proxy: gunicorn alone bounds what a stalled client holds (behind nginx, gunicorn never
    sees an incomplete body: test_serve_stack.py)."""
    server = Server(model_dir, tmp_path, workers=1, proxy=False)
    try:
        server.wait_ready()
        head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n")
        seconds, answer = raw_request(server.port, head, b"\xff\xd8" + b"\0" * 1000)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"no part of the body arrived for 5 s" in answer
        assert seconds < 10
        ok_after(server, encode(image, "jpeg"))
        assert "nginx" not in server.log.read_text()
    finally:
        assert server.stop() == 0


def test_a_refused_body_is_drained_only_so_far(server: Server, image: np.ndarray):
    """Declares 60 MB (over the 1 MB limit), sends 6 MB, then waits: the 413 comes within the drain's
    2 s, without the rest (a server draining everything would wait for the other 54 MB)."""
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 60000000\r\n\r\n")
    seconds, answer = raw_request(server.port, head, b"\0" * 6_000_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert seconds < 10
    ok_after(server, encode(image, "jpeg"))


def test_concurrent_clients(server: Server, image: np.ndarray):
    jpeg = encode(image, "jpeg")
    expected = server.invoke(jpeg)[2]

    def one(_: int) -> tuple[int, bytes]:
        status, _, body = server.invoke(jpeg)
        return status, body

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert [s for s, _ in results] == [200] * 200
    assert all(body == expected for _, body in results), "every worker gives the same answer"


def test_predictions_equal_the_predict_command(server: Server, image: np.ndarray, model_dir: Path, tmp_path: Path):
    path = tmp_path / "picture.png"
    path.write_bytes(encode(image, "png"))
    out = tmp_path / "predict.json"
    result = subprocess.run([*CLI, "predict", str(path), "--model-dir", str(model_dir), "--output", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    served = json.loads(server.invoke(path.read_bytes(), "image/png")[2])["prediction"]
    assert served == json.loads(out.read_text())["picture.png"]


def test_model_tar_gz_and_sigterm_finishes_requests_in_flight(model_dir: Path, tmp_path: Path, image: np.ndarray):
    packed = tmp_path / "model"
    packed.mkdir()
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        for f in model_dir.iterdir():
            tar.add(f, arcname=f.name)
    packed.chmod(0o555)  # like a read-only /opt/ml/model: extraction goes elsewhere
    srv = Server(packed, tmp_path, workers=1)
    try:
        srv.wait_ready()
        big = cv2.resize(image, (2400, 1800))
        body = encode(big, "png")
        answers: list[int] = []
        client = threading.Thread(target=lambda: answers.append(srv.invoke(body, "image/png", Accept="image/png")[0]))
        client.start()
        time.sleep(0.3)  # the request is being handled
        start = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        code = srv.process.wait(timeout=30)
        client.join(timeout=30)
        assert time.monotonic() - start < 30
        assert answers == [200], srv.log.read_text()
        assert code == 0
    finally:
        packed.chmod(0o755)
        srv.stop()


def test_a_model_slower_to_load_than_the_timeout_is_not_killed(tmp_path: Path):
    from ssd_detector.model.untrained import export_untrained

    big = export_untrained(tmp_path / "vgg", {"num_classes": "3", "base_network": "vgg-16", "image_shape": "300"})
    srv = Server(big, tmp_path, env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"}, workers=1)
    try:
        srv.wait_ready()
        time.sleep(3)  # beyond the timeout, idle
        assert srv.request("GET", "/ping")[0] == 200
        log = srv.log.read_text()
        assert log.count("Booting worker") == 1 and "WORKER TIMEOUT" not in log, log[-2000:]
    finally:
        assert srv.stop() == 0


def test_a_model_that_cannot_load_stops_the_server_with_the_reason(model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    params = broken / "model_algo_1-0000.params"
    params.write_bytes(params.read_bytes()[:1000])
    srv = Server(broken, tmp_path, workers=2)
    code = srv.process.wait(timeout=120)
    log = srv.log.read_text()
    assert code == 1, log[-2000:]
    assert "worker 1 cannot load the model in" in log and "Invalid NDArray file format" in log
    assert "serving stopped:" in log and "App failed to load." in log
    assert log.count("Booting worker") <= 2, "no respawning"


def test_bad_settings_fail_at_start(model_dir: Path, tmp_path: Path):
    for env, words in (({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS='many'"),
                       ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "500"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB=500"),
                       ({"SAGEMAKER_BIND_TO_PORT": "x"}, "SAGEMAKER_BIND_TO_PORT='x'"),
                       ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}, "text/csv")):
        result = subprocess.run([*CLI, "serve", "--model-dir", str(model_dir)], capture_output=True, text=True,
                                timeout=120, env={**os.environ, **env})
        assert result.returncode == 1, result.stderr
        assert words in result.stderr
    result = subprocess.run([*CLI, "serve", "--model-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "no model at" in result.stderr
