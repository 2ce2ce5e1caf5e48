#!/usr/bin/env python
"""Screenshot the Dask dashboard of a running crantseg job in headless Chromium.

Starts a LocalCluster, runs a snap job over a synthetic synapse table on the embedded ``tiny``
dataset with many small partitions (so it runs for a while), and, once the first partitions are
done and while the job is still running, opens the dashboard's /status page
(``crantseg_dask.cluster.dashboard_link``) in headless Chromium (Debian's ``chromium`` package:
``apt-get install -y chromium``) and saves a PNG. Then it waits for the job to finish and prints a
JSON summary: the link, the partitions done before and after the screenshot, the PNG's size.

    python scripts/dashboard_screenshot.py                      # -> docs/dashboard.png
    python scripts/dashboard_screenshot.py --out /tmp/d.png --rows 20000 --partition-size 100

The page is driven over Chromium's DevTools protocol (``--remote-debugging-port``): the dashboard's
Bokeh plots arrive over a websocket after the page has loaded, so a plain ``chromium --screenshot``
captures an empty page. The script waits until the page's progress plot lists the job's task group
(``crantseg-snap``), lets it redraw, then captures the window.

Exits non-zero when Chromium is missing, the screenshot is not written, the page never showed the
job's task group, or the job had finished before the page was captured (then raise --rows).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1400,900", "--remote-allow-origins=*"]


def find_chromium() -> str:
    """Path of a Chromium binary: $CHROMIUM, or chromium / chromium-browser / google-chrome on PATH."""
    for name in filter(None, (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome")):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: install Debian's package (apt-get install -y chromium) or set "
                     "CHROMIUM=/path/to/chromium")


# Read by the page: whether Bokeh rendered the dashboard, and the task-group names its plots show.
PROBE_JS = """(() => {
  const d = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!d) return {roots: 0, names: []};
  const models = d._all_models ? Array.from(d._all_models.values()) : Array.from(d.all_models || []);
  const names = new Set();
  for (const m of models) {
    const data = m && m.data;
    if (!data || typeof data.get !== "function" && !data.name) continue;
    for (const col of ["name", "names"]) {
      const v = typeof data.get === "function" ? data.get(col) : data[col];
      if (v) for (const x of Array.from(v)) names.add(String(x));
    }
  }
  return {roots: d.roots().length, names: Array.from(names)};
})()"""


async def _cdp_screenshot(ws_url: str, url: str, out: Path, want: str, settle: float, timeout: float) -> dict:
    """Drive one page over the DevTools protocol: navigate, wait until the dashboard shows ``want``
    among its task groups (or ``timeout``), let it redraw for ``settle`` s, capture a PNG."""
    import asyncio
    import base64

    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=256 * 2**20)
    counter = iter(range(1, 10**9))

    async def call(method, **params):
        i = next(counter)
        conn.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = await conn.read_message()
            if msg is None:
                raise SystemExit(f"chromium closed the DevTools connection during {method}")
            reply = json.loads(msg)
            if reply.get("id") == i:
                if "error" in reply:
                    raise SystemExit(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    await call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
    await call("Page.navigate", url=url)
    probe: dict = {"roots": 0, "names": []}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = await call("Runtime.evaluate", expression=PROBE_JS, returnByValue=True)
        probe = res.get("result", {}).get("value") or probe
        if probe["roots"] and any(want in n for n in probe["names"]):
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(settle)
    shot = await call("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))
    conn.close()
    return probe


def screenshot(url: str, out: Path, *, want: str = "crantseg", settle: float = 2.0,
               timeout: float = 30.0) -> dict:
    """Open ``url`` in headless Chromium, wait for the Bokeh dashboard to render (its plots arrive
    over a websocket after the page loads, so ``--screenshot`` alone captures an empty page), save a
    PNG of the window and return what the page showed: ``{"roots": n, "names": [task groups]}``."""
    import asyncio
    import urllib.request

    with tempfile.TemporaryDirectory(prefix="crantseg-chromium-") as profile:
        cmd = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               "about:blank"]
        # its own process group: its helpers (renderer, crashpad) go with it before the profile is removed
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            t0 = time.monotonic()
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() - t0 > 30:
                    raise SystemExit(f"chromium did not start (exit {proc.poll()}):\n{proc.stderr.read()[-3000:]}")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if not pages:
                raise SystemExit("chromium has no page to drive")
            return asyncio.run(_cdp_screenshot(pages[0]["webSocketDebuggerUrl"], url, out, want, settle, timeout))
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Chromium and every process it started: SIGTERM, then SIGKILL for what is left (a helper
    still writing into the profile once made removing it fail with 'Directory not empty')."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"), help="PNG to write")
    p.add_argument("--rows", type=int, default=20_000, help="synapses in the job (default 20,000)")
    p.add_argument("--partition-size", type=int, default=100, help="rows per task (default 100)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--wait-done", type=int, default=10, help="partitions done before the screenshot")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to let the page redraw before the shot")
    a = p.parse_args(argv)
    find_chromium()  # fail before starting anything

    from crantseg_dask.cluster import dashboard_link, make_client
    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.jobs import run_job
    from crantseg_dask.jobs.demo import synapse_table
    from crantseg_dask.persist import status

    out = Path(a.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    path = local_dataset_path("tiny")
    work = Path(tempfile.mkdtemp(prefix="crantseg-dashboard-"))
    synapse_table(path, a.rows).to_parquet(work / "synapses.parquet")
    zarr_path = work / "synapses.zarr"
    result: dict = {}

    with make_client(n_workers=a.workers) as client:
        link = dashboard_link(client)
        if not link:
            raise SystemExit("the scheduler has no dashboard (is bokeh installed?)")

        def job():
            try:
                result["summary"] = run_job("snap", work / "synapses.parquet", zarr_path, dataset="tiny",
                                            client=client, partition_size=a.partition_size,
                                            snap_zero=True, progress=False)
            except BaseException as e:  # reported below
                result["error"] = e

        thread = threading.Thread(target=job, name="crantseg-job", daemon=True)
        t0 = time.perf_counter()
        thread.start()
        done_before = 0
        while thread.is_alive() and time.perf_counter() - t0 < 120:
            if (zarr_path / "zarr.json").exists():
                try:
                    done_before = status(zarr_path)["partitions_done"]
                except Exception:  # the group is being created
                    done_before = 0
                if done_before >= a.wait_done:
                    break
            time.sleep(0.1)
        if not thread.is_alive():
            raise SystemExit(f"the job ended before the screenshot ({result.get('error')!r}); raise --rows")
        t_shot = time.perf_counter()
        page = screenshot(link, out, settle=a.settle)
        shot_seconds = time.perf_counter() - t_shot
        st = status(zarr_path)
        done_after, total = st["partitions_done"], st["partitions"]
        running = thread.is_alive()
        thread.join()
    if "error" in result:
        raise result["error"]
    summary = {"dashboard": link, "png": str(out), "png_bytes": out.stat().st_size,
               "partitions": total, "done_before_screenshot": done_before,
               "done_after_screenshot": done_after, "running_after_screenshot": running,
               "screenshot_seconds": round(shot_seconds, 1),
               "page_task_groups": sorted(n for n in page["names"] if "crantseg" in n),
               "job_seconds": round(result["summary"]["seconds"], 1)}
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    if not any("crantseg" in n for n in page["names"]):
        print(f"the dashboard showed no crantseg task group (saw {page}); see {out}", file=sys.stderr)
        return 3
    if not running and done_after >= total:
        print("the job finished during the screenshot: the page may not show it running; raise --rows",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
