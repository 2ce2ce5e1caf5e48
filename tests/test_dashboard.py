"""The Dask dashboard of a running job, checked by a real browser (headless Chromium).

Runs scripts/dashboard_screenshot.py: a snap job on a LocalCluster over the tiny dataset, and while
it runs, the dashboard's /status page in Chromium until its progress plot lists the job's task
group; then a PNG of the page. In CI (``CI`` set) a missing Chromium fails the test: .ci/run
installs Debian's ``chromium``; elsewhere the test is skipped with the install command.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "dashboard_screenshot.py"


def _chromium() -> str | None:
    return next(filter(None, (shutil.which(n) for n in
                              filter(None, (os.environ.get("CHROMIUM"), "chromium", "chromium-browser")))), None)


@pytest.mark.timeout(300)
def test_dashboard_screenshot_shows_a_running_job(tmp_path):
    if _chromium() is None:
        message = "no Chromium: apt-get install -y chromium (Debian) to check the dashboard in a browser"
        if os.environ.get("CI"):
            pytest.fail(message + " -- .ci/run should have installed it", pytrace=False)
        pytest.skip(message)
    png = tmp_path / "dashboard.png"
    # TMPDIR: the script's work directory (crantseg-dashboard-*) and Chromium's files. A short path
    # (in /tmp, removed after the run): Chromium aborts when its singleton socket's path is over
    # ~100 bytes, as under pytest-xdist's nested session temp dirs.
    work = tempfile.mkdtemp(prefix="cdash-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(png)], capture_output=True, text=True,
                             timeout=280, cwd=ROOT, env={**os.environ, "TMPDIR": work})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert struct.unpack(">II", head[16:24]) == (1400, 900)
    assert summary["png_bytes"] > 20_000, summary  # an empty page (no plots) is ~14 kB
    assert "crantseg-snap" in summary["page_task_groups"], summary
    assert 0 < summary["done_before_screenshot"] < summary["partitions"], summary
    assert summary["running_after_screenshot"], summary
    print(json.dumps(summary))
