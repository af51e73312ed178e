#!/usr/bin/env python
"""SageMaker's side of Pipe mode, played on this machine. Standard library only (boto3 for s3://),
as scripts/local_run.py, which uses it, runs where only Docker is installed; its RecordIO framing
is checked against the package's reader (ssd_detector.data.recordio) by the tests.

For a channel, ``PipeFeeder`` creates the FIFO ``<folder>/<channel>_0``, writes the channel's
bytes into it once the training container opens it, closes it, and goes on with ``<channel>_1``,
... for as many passes as the algorithm reads. What a pass holds:

- a RecordIO channel: its ``.rec`` files, concatenated;
- an augmented manifest (``RecordWrapperType`` RecordIO): per line, one RecordIO record per
  attribute of ``AttributeNames`` in that order; a ``*-ref`` attribute's record holds the bytes
  of the object it names (a local path, or s3:// through boto3), any other its JSON value.

``ShardedByS3Key`` gives host i of n every n-th file (RecordIO) or line (manifest), from i.

  pipe_feed.py FOLDER CHANNEL (--recordio DIR | --manifest FILE --attribute-names a,b) [--passes N]
writes N passes (default: until interrupted) into FOLDER, for trying a reader by hand.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

LOG = logging.getLogger("pipe_feed")
MAGIC = 0xCED7230A
CHUNK = 1 << 20
POLL_SECONDS = 0.2


def recordio_frame(payload: bytes) -> bytes:
    """One RecordIO record as SageMaker's wrapper writes it: magic, length, payload, padding.
    (Payloads that hold the magic at a 4-byte boundary would need splitting; JSON and image
    bytes handed to a wrapper are framed whole, as the platform does.)"""
    return struct.pack("<II", MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def shard(items: list, host_index: int, host_count: int, distribution: str) -> list:
    return items[host_index::host_count] if distribution == "ShardedByS3Key" else items


def recordio_pass(folder: Path, host_index: int = 0, host_count: int = 1,
                  distribution: str = "FullyReplicated") -> Callable[[], Iterator[bytes]]:
    """The passes of a RecordIO channel: its .rec files' bytes, in name order."""
    files = sorted(p for p in Path(folder).rglob("*.rec") if p.is_file())
    if not files:
        raise SystemExit(f"{folder}: no .rec file")
    files = shard(files, host_index, host_count, distribution)

    def one_pass() -> Iterator[bytes]:
        for path in files:
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
    return one_pass


class ObjectReader:
    """The bytes a ``*-ref`` attribute names: a path (absolute or relative to the manifest) or s3://."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._s3 = None

    def __call__(self, ref: str) -> bytes:
        if ref.startswith("s3://"):
            if self._s3 is None:
                import boto3
                self._s3 = boto3.client("s3")
            bucket, _, key = ref[len("s3://"):].partition("/")
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        path = Path(ref)
        return (path if path.is_absolute() else self.base / path).read_bytes()


def manifest_pass(manifest: Path, attribute_names: list[str], host_index: int = 0, host_count: int = 1,
                  distribution: str = "FullyReplicated") -> Callable[[], Iterator[bytes]]:
    """The passes of an augmented manifest channel wrapped as RecordIO."""
    lines = [json.loads(text) for text in Path(manifest).read_text().splitlines() if text.strip()]
    for number, line in enumerate(lines, start=1):
        missing = [a for a in attribute_names if a not in line]
        if missing:
            raise SystemExit(f"{manifest}:{number}: no attribute {', '.join(missing)} (AttributeNames "
                             f"{attribute_names})")
    lines = shard(lines, host_index, host_count, distribution)
    read_object = ObjectReader(Path(manifest).parent)

    def one_pass() -> Iterator[bytes]:
        for line in lines:
            for name in attribute_names:
                value = line[name]
                payload = read_object(value) if name.endswith("-ref") else json.dumps(value).encode()
                yield recordio_frame(payload)
    return one_pass


class PipeFeeder:
    """Writes passes of a channel into FIFOs ``<folder>/<channel>_<n>`` on a thread, until
    ``stop()`` or ``passes`` passes. A reader that closes early ends that pass."""

    def __init__(self, folder: Path, channel: str, one_pass: Callable[[], Iterable[bytes]],
                 passes: int | None = None) -> None:
        self.folder = Path(folder)
        self.channel = channel
        self.one_pass = one_pass
        self.passes = passes
        self.completed = 0  # passes read to their end
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{channel}", daemon=True)

    def start(self) -> "PipeFeeder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        number = 0
        try:
            while not self._stop.is_set() and (self.passes is None or number < self.passes):
                path = self.folder / f"{self.channel}_{number}"
                path.unlink(missing_ok=True)  # left by an earlier run
                os.mkfifo(path)
                try:
                    fd = self._open(path)
                    if fd is None:
                        return
                    if self._write(fd):
                        self.completed += 1
                finally:
                    path.unlink(missing_ok=True)
                number += 1
        except BaseException as exc:  # kept for the owner to report
            LOG.error("feeding %s failed: %s", self.channel, exc)
            self.error = exc

    def _open(self, path: Path) -> int | None:
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.set_blocking(fd, True)
                return fd
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody has opened it for reading yet
                    raise
            if self._stop.wait(POLL_SECONDS):
                return None

    def _write(self, fd: int) -> bool:
        try:
            for chunk in self.one_pass():
                if self._stop.is_set():
                    return False
                _write_all(fd, chunk)
            return True
        except BrokenPipeError:
            return False
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("channel")
    parser.add_argument("--recordio", type=Path, help="folder of .rec files")
    parser.add_argument("--manifest", type=Path, help="augmented manifest (JSON Lines)")
    parser.add_argument("--attribute-names", default="source-ref", help="comma-separated, image first")
    parser.add_argument("--passes", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if bool(args.recordio) == bool(args.manifest):
        raise SystemExit("give one of --recordio and --manifest")
    one_pass = recordio_pass(args.recordio) if args.recordio else \
        manifest_pass(args.manifest, args.attribute_names.split(","))
    feeder = PipeFeeder(args.folder, args.channel, one_pass, args.passes).start()
    try:
        feeder._thread.join()
    except KeyboardInterrupt:
        feeder.stop()
    return 1 if feeder.error else 0


if __name__ == "__main__":
    sys.exit(main())
