"""A TCP port free on the loopback interface, for servers and rendezvous the tests start: the
scripts' helper (scripts/ is on the tests' path, pyproject.toml), so there is one."""
from __future__ import annotations

from script_helpers import free_port  # re-exported for the tests

__all__ = ["free_port"]
