"""One supervisor for nginx and gunicorn: it starts gunicorn on a unix socket, starts nginx on the
port once a worker has its model, and owns SIGTERM and both processes' ends.

- SIGTERM (or SIGINT): nginx quits gracefully first (it stops accepting and finishes the requests
  it holds, which gunicorn answers), then gunicorn stops gracefully; all within SageMaker's 30 s
  before its SIGKILL. Exit 0.
- nginx or gunicorn ends on its own: the other is stopped, and serve exits 1 naming which one
  ended and how.
- Each runs in a process group of its own, which is killed at the end, so no worker of either is
  left behind; every child is reaped here, so as a container's PID 1 this leaves no zombie.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import stat
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from .nginx import SHUTDOWN_SECONDS, Layout, command, write_config
from .settings import ServeSettings

LOG = logging.getLogger(__name__)
STOP_SECONDS = 28  # SageMaker sends SIGKILL 30 s after SIGTERM
POLL_SECONDS = 0.1
# After one of the two died, the other gets this long to stop before it is killed.
AFTER_DEATH_SECONDS = 10


class Child:
    """A started process (in a process group of its own) and, once reaped, its wait status."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(command, start_new_session=True)
        self.pid = self.process.pid
        self.status: int | None = None

    @property
    def alive(self) -> bool:
        return self.status is None

    def reaped(self, status: int) -> None:
        self.status = status
        self.process.returncode = os.waitstatus_to_exitcode(status)  # keep Popen's view consistent

    def send(self, signum: int) -> None:
        if self.alive:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL to whatever is left of this child's process group (its workers)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def ending(self) -> str:
        """How it ended, for the log: 'exited with code 1', 'was killed by signal 9 (SIGKILL)'."""
        if self.status is None:
            return "is running"
        if os.WIFSIGNALED(self.status):
            number = os.WTERMSIG(self.status)
            return f"was killed by signal {number} ({signal.Signals(number).name})"
        return f"exited with code {os.WEXITSTATUS(self.status)}"


def append_to_files() -> None:
    """nginx writes its access log by opening /dev/stdout anew, at the end of the file when stdout is
    one; the Python processes write at their shared offset, over nginx's lines, unless the file was
    opened to append (`>>`). It is made so."""
    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        except OSError:
            pass


class Supervisor:
    def __init__(self, settings: ServeSettings, nginx_binary: str, scratch: Path) -> None:
        # nginx's workers (nobody, when serve runs as root) reach gunicorn's socket through here.
        scratch.chmod(0o711)
        self.layout = Layout(root=scratch / "nginx", socket=scratch / "gunicorn.sock")
        self.settings = settings
        self.nginx_binary = nginx_binary
        self.ready_file = scratch / "worker-ready"
        self.children: list[Child] = []
        self.stop_requested: str | None = None

    # --- signals and reaping -----------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name

    def _reap(self) -> None:
        """Reaps every child that ended (ours, and as PID 1 any orphan handed to us)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid:
                    child.reaped(status)

    def _wait(self, child: Child, until: float) -> bool:
        """Waits until child ended or the monotonic time until; True when it ended."""
        while child.alive and time.monotonic() < until:
            time.sleep(POLL_SECONDS)
            self._reap()
        return not child.alive

    def _dead(self) -> Child | None:
        self._reap()
        return next((child for child in self.children if not child.alive), None)

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            return self._run()
        finally:
            for child in self.children:
                child.kill_group()
            self._reap()

    def _run(self) -> int:
        append_to_files()
        worker_settings = dataclasses.replace(self.settings, socket=self.layout.socket, ready_file=self.ready_file)
        gunicorn = Child("gunicorn", [sys.executable, "-m", "ssd_detector.serving.server", worker_settings.to_json()])
        self.children.append(gunicorn)
        LOG.info("gunicorn (pid %d) starts on %s; nginx follows once a worker has loaded the model",
                 gunicorn.pid, self.layout.socket)
        while not self.ready_file.exists():
            if self._dead() is not None:
                return self._died(gunicorn)
            if self.stop_requested:
                return self._stop()
            time.sleep(POLL_SECONDS)

        config = write_config(self.settings, self.layout)
        nginx = Child("nginx", command(self.nginx_binary, config, self.layout.root))
        self.children.append(nginx)
        LOG.info("nginx (pid %d) listens on %s:%d in front of gunicorn (config %s)", nginx.pid,
                 self.settings.host, self.settings.port, config)
        while True:
            dead = self._dead()
            if dead is not None:
                return self._died(dead)
            if self.stop_requested:
                return self._stop()
            time.sleep(POLL_SECONDS)

    def _stop(self) -> int:
        """Graceful: nginx finishes what it holds, then gunicorn; killed if they overrun."""
        start = time.monotonic()
        LOG.info("%s: stopping gracefully (nginx, then gunicorn)", self.stop_requested)
        for child in sorted(self.children, key=lambda c: c.name != "nginx"):
            limit = start + (min(SHUTDOWN_SECONDS + 2, STOP_SECONDS) if child.name == "nginx" else STOP_SECONDS)
            child.send(signal.SIGQUIT if child.name == "nginx" else signal.SIGTERM)
            if not self._wait(child, limit):
                LOG.warning("%s (pid %d) did not stop within %.0f s: killed", child.name, child.pid,
                            limit - start)
            child.kill_group()
        self._reap()
        LOG.info("serving stopped after %s in %.1f s", self.stop_requested, time.monotonic() - start)
        return 0

    def _died(self, dead: Child) -> int:
        others = [child for child in self.children if child is not dead]
        LOG.error("serving stopped: %s (pid %d) %s%s", dead.name, dead.pid, dead.ending(),
                  "; stopping " + ", ".join(c.name for c in others) if others else "")
        dead.kill_group()
        until = time.monotonic() + AFTER_DEATH_SECONDS
        for child in others:
            child.send(signal.SIGTERM)  # fast for nginx, graceful for gunicorn (bounded below)
            self._wait(child, until)
            child.kill_group()
        self._reap()
        return 1

