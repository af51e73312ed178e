"""`ssd-detector serve` started for real by the tests: nginx in front of gunicorn (or gunicorn alone,
proxy=False) on a free loopback port; and the processes a server is made of."""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ports import free_port

CLI = [sys.executable, "-m", "ssd_detector.cli"]


class Server:
    def __init__(self, model: Path, tmp: Path, env: dict[str, str] | None = None, workers: int = 2,
                 proxy: bool = True) -> None:
        self.port = free_port()
        self.log = tmp / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [*CLI, "serve", "--model-dir", str(model), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), *([] if proxy else ["--no-proxy"])],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.request("GET", "/ping", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("server not ready: " + self.log.read_text())

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def invoke(self, body: bytes, content_type: str = "image/jpeg", **headers: str) -> tuple[int, dict, bytes]:
        return self.request("POST", "/invocations", body, {"Content-Type": content_type, **headers})

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid, now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # /proc/N/stat: "N (comm) S PPID ..."; comm may hold spaces, so split after its ')'.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, theirs, ...), now."""
    found, queue = [], [pid]
    while queue:
        for child in children_of(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Whether pid is a live process (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
