"""What several scripts (and the tests) share; standard library only, since sagemaker_launch.py
runs in the SDK's environment and local_run.py where only Docker is installed. A script run as
`python scripts/NAME.py` finds this module beside it (its folder is the first entry of sys.path);
the tests find it through pytest's `pythonpath` setting (pyproject.toml)."""
from __future__ import annotations

import socket


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    """Repeated --WHAT NAME=VALUE options -> {NAME: VALUE}; a ValueError names a malformed one."""
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise ValueError(f"--{what} {value!r}: expected NAME=VALUE")
        pairs[key] = rest
    return pairs


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
