"""The models a multi-model server has loaded, shared by all its gunicorn workers as files.

One JSON entry per model in a folder, each written whole (``os.replace``); loads and unloads hold
an exclusive file lock, so two never interleave. A worker's own copies of the models follow these
entries (``multi_model.ModelStore``): an entry that is gone, or that a later load of the same name
replaced (another ``generation``), is dropped from every worker.

The names and URLs a caller sends are checked here before any file is touched.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from .errors import BadRequest

NAME_MAX_BYTES = 1024


@dataclass(frozen=True)
class Entry:
    name: str
    url: str  # as the caller gave it
    model_dir: str  # the artifact files: the url's folder, or where its model.tar.gz was unpacked
    generation: str  # one per load: a worker's copy from an earlier load of the same name is stale
    bytes_per_worker: int  # what one worker's copy costs, measured by the worker that loaded it
    extracted: bool  # model_dir is ours (unpacked from an archive) and goes with the entry


def check_name(name: object) -> str:
    """A model name as SageMaker sends it; 400 for anything that could be a path or break a log line."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"model_name must be a non-empty string, not {name!r}"[:300])
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise BadRequest(f"model_name is over {NAME_MAX_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest(f"model_name {name[:100]!r} holds control characters")
    if "/" in name or "\\" in name or ".." in name:
        raise BadRequest(f"model_name {name[:200]!r} holds a path separator or '..'")
    return name


def check_url(url: object, root: Path) -> Path:
    """The url's folder, resolved (links followed); 400 unless it lies under root."""
    if not isinstance(url, str) or not url or "\0" in url:
        raise BadRequest(f"url must be a path under {root}, not {url!r}"[:300])
    resolved = Path(os.path.realpath(url))
    if not resolved.is_relative_to(Path(os.path.realpath(root))):
        raise BadRequest(f"url {url[:300]!r} is not under the models' folder {root} (links followed)")
    if not resolved.is_dir():
        raise BadRequest(f"url {url[:300]!r} is not a folder")
    return resolved


class Registry:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held by a load or an unload, across every worker."""
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, name: str) -> Path:
        # A name may hold any character but '/': the file is named by its hash.
        return self.folder / (hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest() + ".json")

    def get(self, name: str) -> Entry | None:
        try:
            return Entry(**json.loads(self._path(name).read_text()))
        except FileNotFoundError:
            return None

    def entries(self) -> list[Entry]:
        found = []
        for path in self.folder.glob("*.json"):
            try:
                found.append(Entry(**json.loads(path.read_text())))
            except FileNotFoundError:  # unloaded meanwhile
                continue
        return sorted(found, key=lambda e: e.name)

    def add(self, entry: Entry) -> None:
        """Under locked()."""
        path = self._path(entry.name)
        staged = path.with_suffix(".tmp")
        staged.write_text(json.dumps(asdict(entry)))
        os.replace(staged, path)
        self._bump()

    def remove(self, name: str) -> Entry | None:
        """Under locked()."""
        entry = self.get(name)
        if entry is not None:
            self._path(name).unlink(missing_ok=True)
            self._bump()
        return entry

    def version(self) -> int:
        """A counter that every add and remove moves on (file times are too coarse to tell two apart)."""
        try:
            return int((self.folder / "version").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _bump(self) -> None:
        staged = self.folder / "version.tmp"
        staged.write_text(str(self.version() + 1))
        os.replace(staged, self.folder / "version")
