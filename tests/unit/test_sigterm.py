"""The tools' SIGTERM handler: a stop that arrives during an import waits for the import."""
import os
import subprocess
import sys
from pathlib import Path

# A module that is sent SIGTERM while it is being imported, and records that its import ended.
MODULE = """
import os, signal
os.kill(os.getpid(), signal.SIGTERM)
for _ in range(200000):  # Python runs the handler between these bytecodes, inside the import
    pass
COMPLETE = True
"""

SCRIPT = """
import sys, time
from ssd_detector.cli.signals import stop_on_sigterm
from ssd_detector.errors import Stopped
stop_on_sigterm("SIGTERM during test")
try:
    import stopped_while_imported
except BaseException as exc:
    print("import failed:", type(exc).__name__, exc)
    sys.exit(3)
try:
    time.sleep(10)
except Stopped as exc:
    print("stopped after the import:", stopped_while_imported.COMPLETE, exc)
    sys.exit(0)
print("not stopped")
sys.exit(4)
"""


def test_sigterm_during_an_import_stops_after_it(tmp_path: Path):
    (tmp_path / "stopped_while_imported.py").write_text(MODULE)
    # The module is found through PYTHONPATH, imported after the handler is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped after the import: True SIGTERM during test" in result.stdout
