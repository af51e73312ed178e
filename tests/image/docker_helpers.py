"""Driving a real Docker engine and a served container from the image tests."""
from __future__ import annotations

import http.client
import subprocess
import time
import uuid
from typing import Callable


def docker(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr[-2000:]}")
    return result


def name(prefix: str) -> str:
    return f"ssd-test-{prefix}-{uuid.uuid4().hex[:8]}"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_ping(port: int, explain: Callable[[], str], timeout: float = 120) -> None:
    """Until /ping answers 200; explain() says why not when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if request(port, "GET", "/ping")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, explain()
        time.sleep(0.5)
