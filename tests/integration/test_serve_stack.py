"""serve's stack for real: nginx in front of gunicorn on a unix socket, one supervisor. Slow and
stalled clients against a normal one, graceful SIGTERM, and either process dying."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd_detector.data.images import encode
from ssd_detector.data.synthetic import SynthSpec, make_image
from serve_process import Server, children_of, command_of, descendants, running
from slow_clients import HEAD, answered_beside_slow_clients

ANSWER_WITHIN = 5.0


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(make_image(np.random.default_rng(3), SynthSpec(train=1, validation=0, classes=3))[0], "jpeg")


def timed(call) -> tuple[float, int]:
    start = time.monotonic()
    status = call()[0]
    return time.monotonic() - start, status


def test_slow_and_stalled_clients_do_not_hold_the_workers(small_model: Path, tmp_path: Path, jpeg: bytes):
    """64 clients sending their heads a byte a second and 8 whose bodies stall, on 2 workers: a
    normal client's /ping and /invocations are each answered within 5 s, again and again."""
    server = Server(small_model, tmp_path, workers=2)
    try:
        server.wait_ready()
        rounds = answered_beside_slow_clients(server.port, lambda: server.invoke(jpeg)[0])
    finally:
        assert server.stop() == 0
    for pinged, ping_s, invoked, invoke_s in rounds:
        assert (pinged, invoked) == (200, 200)
        assert ping_s < ANSWER_WITHIN and invoke_s < ANSWER_WITHIN, rounds
    assert '"POST /invocations HTTP/1.1" 408' in server.log.read_text(), "nginx logs the clients it timed out"


def test_a_stalled_body_is_closed_by_nginx_and_never_reaches_a_worker(small_model: Path, tmp_path: Path,
                                                                     jpeg: bytes):
    """nginx never answers a client it timed out: after client_body_timeout it closes the connection
    (logged as 408). Meanwhile the one worker answers others."""
    server = Server(small_model, tmp_path, workers=1)
    try:
        server.wait_ready()
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(HEAD + b"\xff\xd8" + b"\0" * 1000)
            took, status = timed(lambda: server.invoke(jpeg))
            assert status == 200 and took < ANSWER_WITHIN
            answer = conn.recv(1024)
        closed_after = time.monotonic() - start
        assert answer == b"" and 9 < closed_after < 20, (answer, closed_after)
    finally:
        assert server.stop() == 0
    assert '"POST /invocations HTTP/1.1" 408' in server.log.read_text()


def test_sigterm_finishes_requests_in_flight_and_leaves_no_process(small_model: Path, tmp_path: Path,
                                                                   jpeg: bytes):
    server = Server(small_model, tmp_path, workers=2)
    server.wait_ready()
    processes = descendants(server.process.pid)
    assert any("nginx" in command_of(pid) for pid in processes), [command_of(pid) for pid in processes]
    picture = make_image(np.random.default_rng(4), SynthSpec(train=1, validation=0, classes=3))[0]
    big = encode(cv2.resize(picture, (2400, 1800)), "png")  # long enough to be in flight at the signal
    answers: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        status = server.invoke(big, "image/png", Accept="image/png")[0]
        with lock:
            answers.append(status)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    time.sleep(0.2)  # requests are in nginx or in the workers
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    for thread in clients:
        thread.join(timeout=30)
    assert time.monotonic() - start < 30
    assert code == 0, server.log.read_text()[-3000:]
    assert answers == [200] * 6, server.log.read_text()[-3000:]
    assert not [pid for pid in processes if running(pid)], "no worker of nginx or gunicorn is left"


@pytest.mark.parametrize("victim", ["gunicorn", "nginx"])
def test_a_dead_gunicorn_or_nginx_stops_serve_naming_it(small_model: Path, tmp_path: Path, victim: str):
    server = Server(small_model, tmp_path, workers=2)
    server.wait_ready()
    processes = descendants(server.process.pid)
    marker = "nginx" if victim == "nginx" else "ssd_detector.serving.server"
    masters = [pid for pid in children_of(server.process.pid) if marker in command_of(pid)]
    assert len(masters) == 1, [command_of(pid) for pid in processes]
    os.kill(masters[0], signal.SIGKILL)
    code = server.process.wait(timeout=30)
    log = server.log.read_text()
    assert code == 1, log[-3000:]
    assert f"serving stopped: {victim} (pid {masters[0]}) was killed by signal 9 (SIGKILL)" in log, log[-3000:]
    deadline = time.monotonic() + 5
    while [pid for pid in processes if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [command_of(pid) for pid in processes if running(pid)]


def test_nginx_answers_its_own_errors_as_json(tmp_path: Path):
    """nginx on the generated config, in front of a socket nobody listens on (502), then of one that
    accepts and never answers (504), with a 1 MB limit (413) and an unknown path (404)."""
    import http.client
    import json
    import shutil
    import subprocess
    import tempfile

    from ports import free_port
    from ssd_detector.serving import nginx
    from ssd_detector.serving.settings import ServeSettings

    port = free_port()
    # nginx's workers run as nobody under root: its folders must be reachable (pytest's are not).
    tmp_path = Path(tempfile.mkdtemp(prefix="ssd-nginx-"))
    tmp_path.chmod(0o711)
    settings = ServeSettings.from_env(tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"},
                                      cpu_count=2, host="127.0.0.1", port=port)
    layout = nginx.Layout(root=tmp_path / "nginx", socket=tmp_path / "upstream.sock")
    config = nginx.write_config(settings, layout)
    process = subprocess.Popen([nginx.find_nginx(), "-c", str(config), "-p", str(layout.root), "-e", "stderr"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def ask(method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            assert response.getheader("Content-Type") == "application/json"
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        status, body = ask("GET", "/ping")
        assert (status, body["error"]) == (502, "bad_gateway")
        assert ask("GET", "/nowhere") == (404, {"error": "not_found", "message": "this server answers /ping, "
                                                                                  "/invocations, /execution-parameters"})
        status, body = ask("POST", "/invocations", b"\0" * (1024 * 1024 + 1), {"Content-Type": "image/jpeg"})
        assert status == 413 and "the body is 1048577 bytes, over the limit of 1048576 bytes" in body["message"]
        chunks = (b"\0" * 65536 for _ in range(20))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/invocations", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["message"].startswith("the body is over the limit of 1048576 bytes")
        conn.close()
        with socket.socket(socket.AF_UNIX) as silent:  # accepts (the kernel's backlog) and never answers
            silent.bind(str(layout.socket))
            layout.socket.chmod(0o777)  # as gunicorn's (umask 0)
            silent.listen(8)
            start = time.monotonic()
            status, body = ask("GET", "/ping")
            assert (status, body["error"]) == (504, "gateway_timeout") and time.monotonic() - start < 5
            assert "within 1 s (SAGEMAKER_MODEL_SERVER_TIMEOUT)" in body["message"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_without_nginx_serve_says_so_once_and_gunicorn_serves_alone(small_model: Path, tmp_path: Path,
                                                                    jpeg: bytes):
    """A machine without nginx (find_nginx finds none): one line says so, gunicorn alone serves the
    port, and answers a stalled body itself (JSON 408)."""
    import subprocess
    import sys

    from ports import free_port

    port = free_port()
    code = ("import sys; import ssd_detector.serving.server as server; server.find_nginx = lambda: None; "
            "from ssd_detector.cli import main; sys.exit(main(sys.argv[1:]))")
    log = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-c", code, "serve", "--model-dir", str(small_model), "--host",
                                "127.0.0.1", "--port", str(port), "--workers", "1"],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                    conn.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if conn.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(HEAD + b"\xff\xd8" + b"\0" * 1000)
            answer = conn.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408") and b"application/json" in answer, answer
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    text = log.read_text()
    assert text.count("nginx is not installed") == 1 and "gunicorn alone serves on 127.0.0.1" in text, text[-2000:]
    assert "Listening at: http://127.0.0.1" in text
