"""A TCP port free on the loopback interface, for servers and rendezvous the tests start: the
scripts' helper, so there is one."""
from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parents[1] / "scripts")
if SCRIPTS not in sys.path:
    sys.path.append(SCRIPTS)

from script_helpers import free_port  # re-exported for the tests
