"""Which network interface Horovod's Gloo (and NCCL) should use on this host.

``resourceconfig.json`` names one (``network_interface_name``), but not every runner names one the
container has: SDK v3's local mode writes ``ethwe`` into containers that only have ``eth0``. Gloo
given a missing interface fails late and obscurely, so a missing name is replaced by the interface
that routes to the rendezvous host, with a warning naming both.
"""
from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from pathlib import Path

from ..errors import JobFailed
from ..failure import EXIT_USER_ERROR

LOG = logging.getLogger(__name__)

SIOCGIFADDR = 0x8915  # <linux/sockios.h>: an interface's primary IPv4 address
PROC_ROUTE = Path("/proc/net/route")


def interface_names() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def interface_address(name: str) -> str | None:
    """The primary IPv4 address of interface name, or None when it has none."""
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])  # struct ifreq: 16-byte name, then sockaddr_in


def source_address(peer: str) -> str:
    """The local address the kernel picks to reach peer (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((peer, 9))
        return probe.getsockname()[0]


def route_interface(peer: str, route_table: Path = PROC_ROUTE) -> str | None:
    """The interface of the longest matching route to peer in the kernel's IPv4 table."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    target = int(ipaddress.IPv4Address(peer))
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ..., addresses little-endian hex.
        destination = socket.ntohl(int(fields[1], 16))
        mask = socket.ntohl(int(fields[7], 16))
        if target & mask == destination & mask:
            prefix = bin(mask).count("1")
            if best is None or prefix > best[0]:
                best = (prefix, fields[0])
    return best[1] if best else None


def choose_interface(requested: str, peer: str) -> str:
    """requested when this host has it, else the interface that reaches peer (an IPv4 address)."""
    names = interface_names()
    if requested in names:
        return requested
    source = source_address(peer)
    found = next((name for name in names if interface_address(name) == source), None)
    found = found or route_interface(peer)
    if found is None or found not in names:
        raise JobFailed(
            f"resourceconfig.json names network interface {requested!r}, which this host does not have "
            f"(it has {', '.join(names)}), and no interface could be found that reaches the rendezvous "
            f"host at {peer}", EXIT_USER_ERROR)
    LOG.warning("resourceconfig.json names network interface %r, which this host does not have (it has %s); "
                "using %r, which reaches the rendezvous host at %s", requested, ", ".join(names), found, peer)
    return found
