"""SageMaker Pipe mode: a channel arrives as one FIFO per pass, ``<channel>_<epoch>``.

SageMaker creates ``train_0``, writes the channel's bytes into it and closes it; ``train_1``
appears after ``train_0`` was read to its end (or closed), and so on, for as many passes as the
algorithm opens. Everything here reads without blocking (poll with a short timeout), so a
writer that never comes, a stream that stalls and a SIGTERM meanwhile all end within seconds
or a bounded wait, with a message that names the FIFO.

``PipeFanout`` lets the several workers of one host share one stream: it reads each of the
host's FIFOs once and writes the same bytes into one private FIFO per worker.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import DataError, Stopped
from ..sagemaker_env import env_int

LOG = logging.getLogger(__name__)

PIPE_TIMEOUT_VAR = "SSD_PIPE_TIMEOUT"  # seconds a FIFO may keep us waiting: to appear, to open, for bytes
DEFAULT_PIPE_TIMEOUT = 900
POLL_MS = 250
CHUNK = 1 << 20


def pipe_timeout(environ: Mapping[str, str] | None = None) -> int:
    return env_int(os.environ if environ is None else environ, PIPE_TIMEOUT_VAR, DEFAULT_PIPE_TIMEOUT, 1, 7 * 86400)


def fifo_path(folder: Path, channel: str, epoch: int) -> Path:
    return folder / f"{channel}_{epoch}"


class PipeStalled(DataError):
    """A FIFO did not appear, was never opened by its writer, or stopped delivering bytes."""


def _never() -> bool:
    return False


class PipeStream:
    """The bytes of one FIFO (or, for tests and local runs, a regular file), read to the end.

    ``read(n)`` returns n bytes, fewer only at the end of the stream. ``should_stop`` is asked
    every POLL_MS while waiting; when it answers True, ``Stopped`` is raised.
    """

    def __init__(self, path: Path, shown_as: str, timeout: float, should_stop: Callable[[], bool] = _never) -> None:
        self.path = path
        self.shown_as = shown_as  # the FIFO as the user knows it, e.g. /opt/ml/input/data/train_0
        self.timeout = timeout
        self.should_stop = should_stop
        self.bytes_read = 0
        self._fd = -1
        self._fifo = True
        self._hangup = False
        self._buffer = bytearray()
        self._eof = False
        self._poll: select.poll | None = None

    def _wait(self, deadline: float, what: str) -> None:
        if self.should_stop():
            raise Stopped(f"SIGTERM while waiting for {what} of {self.shown_as}")
        if time.monotonic() > deadline:
            raise PipeStalled(
                f"Pipe mode: {what} of {self.shown_as} did not come within {self.timeout:g} s "
                f"({PIPE_TIMEOUT_VAR}); SageMaker (or the local writer) did not deliver this channel's data")

    def open(self) -> "PipeStream":
        deadline = time.monotonic() + self.timeout
        while not self.path.exists():
            self._wait(deadline, "the FIFO")
            time.sleep(POLL_MS / 1000)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._fifo = stat.S_ISFIFO(os.fstat(self._fd).st_mode)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        return self

    def _fill(self) -> bool:
        """Reads what is there into the buffer, waiting up to the timeout; False at the end."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                data = os.read(self._fd, CHUNK)
            except BlockingIOError:  # a writer is there, with nothing written yet
                data = None
            if data:
                self._buffer += data
                self.bytes_read += len(data)
                return True
            # b"" means no writer: the end once one has come and gone (POLLHUP), else not yet opened.
            if data == b"" and (self._hangup or not self._fifo):
                return False
            assert self._poll is not None
            for _, events in self._poll.poll(POLL_MS):
                if events & select.POLLHUP:
                    self._hangup = True
            if not self._hangup:
                self._wait(deadline, "data" if self.bytes_read or data is None else "a writer")

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._eof:
            if not self._fill():
                self._eof = True
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "PipeStream":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PipeFanout:
    """Copies a host's FIFOs ``<channel>_<epoch>`` into one FIFO per worker, under
    ``worker_dirs[i]``, so every worker of the host reads the whole stream. Runs one thread per
    channel until ``stop``; a worker that closes its FIFO early is left out of that pass."""

    def __init__(self, source_dir: Path, worker_dirs: Sequence[Path], channels: Sequence[str], timeout: float) -> None:
        self.source_dir = source_dir
        self.worker_dirs = list(worker_dirs)
        self.channels = list(channels)
        self.timeout = timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def start(self) -> "PipeFanout":
        for folder in self.worker_dirs:
            folder.mkdir(parents=True, exist_ok=True)
        for channel in self.channels:
            thread = threading.Thread(target=self._run, args=(channel,), name=f"pipe-fanout-{channel}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _run(self, channel: str) -> None:
        try:
            epoch = 0
            while not self._stop.is_set():
                self._pass(channel, epoch)
                epoch += 1
        except Stopped:
            return
        except BaseException as exc:  # kept for the launcher; the workers time out meanwhile
            LOG.error("Pipe mode: sharing %s_%d between the workers failed: %s", channel, epoch, exc)
            self.error = exc

    def _pass(self, channel: str, epoch: int) -> None:
        targets = []
        for folder in self.worker_dirs:
            path = fifo_path(folder, channel, epoch)
            os.mkfifo(path)
            targets.append(path)
        # Only when a worker asks for this pass is the host's FIFO opened: SageMaker makes the
        # next one after this one is read.
        outputs = [self._open_writer(path) for path in targets]
        host_fifo = fifo_path(self.source_dir, channel, epoch)
        source = PipeStream(host_fifo, str(host_fifo), self.timeout, self._stop.is_set)
        try:
            with source:
                while True:
                    chunk = source.read(CHUNK)
                    if not chunk:
                        break
                    outputs = [fd for fd in outputs if self._write_all(fd, chunk)]
        finally:
            for fd in outputs:
                os.close(fd)
            for path in targets:
                path.unlink(missing_ok=True)

    def _open_writer(self, path: Path) -> int:
        """Opens a worker's FIFO once the worker has opened it for reading."""
        while True:
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            if self._stop.wait(POLL_MS / 1000):
                raise Stopped("fan-out stopped")

    def _write_all(self, fd: int, data: bytes) -> bool:
        """False when the worker has closed its end."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            try:
                written = os.write(fd, view)
                view = view[written:]
            except BlockingIOError:
                poller.poll(POLL_MS)
                if self._stop.is_set():
                    raise Stopped("fan-out stopped") from None
            except BrokenPipeError:
                os.close(fd)
                return False
        return True
