"""Kill a Python subprocess at a chosen point: the crash tests of refresh (and any other step that
must survive a kill) run a script that prints a marker line when it reaches the point, then hangs."""
from __future__ import annotations

import os
import select
import subprocess
import sys


def kill_at(script: str, args: list[str], what: str, marker: bytes = b"HANG", timeout: float = 300) -> None:
    """Run ``python -c script *args``; once it prints ``marker`` on a line, kill it (SIGKILL) and
    wait for it. ``AssertionError`` naming ``what`` if it exits or stays silent for ``timeout`` s
    without printing the marker (it is killed all the same)."""
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        ready, _, _ = select.select([p.stdout], [], [], timeout)
        assert ready and p.stdout.readline().strip() == marker, f"the refresh never reached {what}"
    finally:
        p.kill()
        p.wait()
