"""Memory as a multi-model endpoint must count it: the container's limit (cgroup v2 or v1, else the
machine's), what it uses now, a process's resident memory, and giving memory back after an unload."""
from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge number (the largest page-aligned 64-bit value).
NO_LIMIT_ABOVE = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def machine_bytes() -> int:
    """Physical memory (MemTotal of /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def container_limit_bytes(root: Path = CGROUP) -> int:
    """This container's memory limit: cgroup v2's memory.max, else v1's memory.limit_in_bytes, else
    (no limit set) the machine's memory; never above the machine's."""
    machine = machine_bytes()
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        value = _read_int(path)  # None for v2's "max" (no limit)
        if value is not None and value < NO_LIMIT_ABOVE:
            return min(value, machine)
    return machine


def container_used_bytes(root: Path = CGROUP) -> int | None:
    """What the container's processes use now (memory.current, v1 memory.usage_in_bytes), or None."""
    for path in (root / "memory.current", root / "memory" / "memory.usage_in_bytes"):
        value = _read_int(path)
        if value is not None:
            return value
    return None


def resident_bytes(pid: int | None = None) -> int:
    """A process's resident memory (VmRSS), this one's by default."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def release_memory() -> None:
    """After a model is dropped: collect its Python objects' cycles, then hand the C heap's free
    pages back to the system (glibc keeps freed memory for reuse otherwise; MXNet's arrays are freed
    with free(), so an unloaded model's weights would stay in the worker's resident memory)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)
