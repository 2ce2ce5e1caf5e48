"""Point lookups against remote-style storage: file:// vs HTTP at 0/20/50 ms per GET, unsharded and sharded.

``locs_to_supervoxels`` through the ``cave`` source of a ``crantseg serve`` subprocess (the layer
served over HTTP with ``--latency-ms``), on synapse-like points (near random supervoxels of the
dataset), compared with the ``local`` source on file:// in the same run, sharded with unsharded
at the same latency, and with cloud-volume's ``scattered_points`` on the same HTTP URL (a
sample: it is a per-point loop). GETs and peak reads in flight are counted by our fetch layer
(``sources/_fetch.stats``) in this process; "server CPU/GET" is the local server's CPU per GET:
a real bucket's is not on this machine, the local server's shares its 2 cores with the client.

"engines" rows fetch (and decode) the chunks the 10^4-point query touches, on the 20 ms server,
with each well-kept option: cloud-files ``get`` of the list of chunk files (its threaded batch
get), cloud-volume's ``ShardReader`` kept alive (index caches warm after the first call), and
tensorstore's ``neuroglancer_precomputed`` driver (all chunk boxes read at once, async). Why
the fetch layer is still ours: cloud-files' HTTP interface sends no bearer token (only Basic
credentials), has no request timeout (a stalled GET hangs the task), reads 403 as "missing"
and runs a thread per read;
``ShardReader`` fetches index then data per call without our transient-only retry rules;
tensorstore needs its own auth headers and retry settings and decodes whole chunks only
(the random-access decoder reads a few voxels from the encoded bytes instead). Ours (one libcurl
multi handle per process, ``sources/_curl.py``) keeps one place for the token rule, the timeouts
and the transient-only retries, and yields raw encoded bytes to either decoder. The table shows what each one costs on the same URL.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LATENCIES = (0, 20, 50)


def _sharded_copy(preset: str) -> Path:
    """The preset written sharded (generated once beside the unsharded one, or the copy at
    ``CRANTSEG_BENCH_SHARDED``, e.g. one made by ``crantseg make-dataset --preset demo --sharded``)."""
    from crantseg_dask.config import data_dir
    from crantseg_dask.dataset.generate import make_dataset
    from crantseg_dask.dataset.layout import GENERATOR_VERSION, PRESETS, is_dataset_dir

    p = PRESETS[preset]
    path = Path(os.environ.get("CRANTSEG_BENCH_SHARDED") or
                data_dir() / f"{preset}-seed{p.seed}-g{GENERATOR_VERSION}-sharded")
    if not is_dataset_dir(path):
        make_dataset(p, path, overwrite=True, sharded=True)
    return path


class Server:
    """``crantseg serve`` in a subprocess (so its work does not share this process's GIL)."""

    def __init__(self, path: Path, latency_ms: float = 0.0, storage_latency_ms: float | None = None):
        cmd = [sys.executable, "-m", "crantseg_dask.server.main", "--dataset", str(path),
               "--latency-ms", str(latency_ms)]
        if storage_latency_ms is not None:  # chunk GETs with a latency of their own
            cmd += ["--storage-latency-ms", str(storage_latency_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        info = {}
        for line in self.proc.stdout:
            key, _, val = line.strip().partition(":")
            info[key] = val.strip()
            if key == "token":
                break
        self.address, self.datastack, self.token = info["address"], info["datastack"], info["token"]

    @property
    def data_dir(self) -> str:
        return f"{self.address}/storage/segmentation"

    def spec(self):
        from crantseg_dask.sources.resolve import cave_dataset

        return cave_dataset(self.address, self.datastack, token=self.token)

    def cpu(self) -> float:
        """CPU seconds the server process has used."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _ours(locs, dataset) -> tuple[np.ndarray, float, dict]:
    from crantseg_dask import locs_to_supervoxels
    from crantseg_dask.sources import _fetch

    _fetch.reset_stats()
    t = time.perf_counter()
    got = locs_to_supervoxels(locs, dataset=dataset, progress=False)
    return got, time.perf_counter() - t, dict(_fetch.stats)


def _scattered(data_dir: str, token: str, locs: np.ndarray) -> tuple[np.ndarray, float]:
    import cloudfiles.secrets
    from cloudvolume import CloudVolume

    # cloud-volume's sharded path passes no secrets: cloud-files then uses its process-wide ones
    cloudfiles.secrets.HTTP_CREDENTIALS = {"user": "token", "password": token}
    vol = CloudVolume(data_dir, mip=0, fill_missing=False, bounded=False, progress=False,
                      secrets={"user": "token", "password": token})
    vox = (locs / np.asarray(vol.scale["resolution"])).astype(int)
    lo, hi = np.asarray(vol.bounds.minpt), np.asarray(vol.bounds.maxpt)
    inside = np.all((vox >= lo) & (vox < hi), axis=1)
    t = time.perf_counter()
    got = vol.scattered_points(vox[inside])
    dt = time.perf_counter() - t
    out = np.zeros(len(vox), dtype=np.uint64)
    out[inside] = [got[tuple(v)] for v in vox[inside]]
    return out, dt


def _touched_chunks(source, locs) -> list[tuple]:
    res = np.asarray(source.meta.resolution[0])
    vox = np.floor(locs / res).astype(np.int64)
    lo, hi = source.meta.bounds(0)
    vox = vox[np.all((vox >= lo) & (vox < hi), axis=1)]
    return [tuple(c) for c in np.unique((vox - lo) // np.array(source.meta.chunk_size[0]), axis=0).tolist()]


def _engines(server: Server, locs, sharded: bool) -> list[dict]:
    """Fetch (+decode) the chunks the query touches with each option; rate in chunks/s."""
    from crantseg_dask.sources import open_source

    src = open_source(server.spec())
    chunks = _touched_chunks(src, locs)
    reader = src._reader
    label = "sharded" if sharded else "unsharded"
    t = time.perf_counter()
    n = sum(1 for _ in reader.read_many(chunks, 0))
    ours = n / (time.perf_counter() - t)
    rows = []

    def row(peer, rate, note=""):
        rows.append({"benchmark": "engines (fetch+decode touched chunks, 20 ms)",
                     "case": f"{label}, {len(chunks)} chunks{note}", "ours": f"{ours:,.0f} chunks/s",
                     "peer": peer, "peer_value": f"{rate:,.0f} chunks/s", "ratio": ours / rate})

    secrets = {"user": "token", "password": server.token}
    import cloudfiles.secrets

    cloudfiles.secrets.HTTP_CREDENTIALS = secrets  # cloud-volume's shard reader passes no secrets of its own
    if not sharded:
        from cloudfiles import CloudFiles

        cf = CloudFiles(server.data_dir, secrets=secrets, progress=False)
        names = [reader.filename(c, 0) for c in chunks]
        t = time.perf_counter()
        got = cf.get(names)
        row("cloud-files get(list), fetch only", len(got) / (time.perf_counter() - t))
    else:
        from cloudvolume import CloudVolume

        cv = CloudVolume(server.data_dir, mip=0, progress=False, secrets=secrets)
        sr = cv.image.shard_reader()
        from cloudvolume.datasource.precomputed.common import compressed_morton_code

        grid = -(-np.array(src.meta.size[0]) // np.array(src.meta.chunk_size[0]))
        codes = [int(c) for c in compressed_morton_code(np.array(chunks), grid.tolist())]
        key = src.meta.keys[0]
        sr.get_data(codes[:4], path=key)  # warm: the reader kept alive, as a worker would keep it
        t = time.perf_counter()
        got = sr.get_data(codes, path=key)
        row("cloud-volume ShardReader kept alive, fetch only", len(got) / (time.perf_counter() - t))
    try:
        import tensorstore as ts

        store = ts.open({"driver": "neuroglancer_precomputed",
                         "kvstore": {"driver": "http", "base_url": server.data_dir,
                                     "headers": [f"Authorization: Bearer {server.token}"]}}, read=True).result()
        lo = np.array(src.meta.voxel_offset[0])
        cs = np.array(src.meta.chunk_size[0])
        hi_all = lo + np.array(src.meta.size[0])
        t = time.perf_counter()
        futs = []
        for c in chunks:
            a = lo + np.array(c) * cs
            b = np.minimum(a + cs, hi_all)
            futs.append(store[a[0]:b[0], a[1]:b[1], a[2]:b[2], 0].read())
        for f in futs:
            f.result()
        row("tensorstore neuroglancer_precomputed, fetch+decode", len(chunks) / (time.perf_counter() - t))
    except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
        rows.append({"benchmark": "engines", "case": label, "ours": f"{ours:,.0f} chunks/s",
                     "peer": "tensorstore", "peer_value": f"failed: {type(e).__name__}: {str(e)[:80]}", "ratio": ""})
    return rows


def run(quick: bool = False) -> list[dict]:
    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.jobs.demo import synapse_table

    preset = "tiny" if quick else "demo"
    sizes = [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000]
    sample = 200 if quick else 1_000
    paths = {"unsharded": local_dataset_path(preset), "sharded": _sharded_copy(preset)}
    table = synapse_table(paths["unsharded"], max(sizes), seed=0)[["x", "y", "z"]].to_numpy()
    rows = []
    rate = {}
    for label, path in paths.items():
        _ours(table[:20], str(path))  # first-use costs are not per point
        servers = {lat: Server(path, lat) for lat in LATENCIES}
        try:
            for n in sizes:
                locs = table[:n]
                want, dt, st = _ours(locs, str(path))
                rate[(label, "file", n)] = n / dt
                rows.append({"benchmark": "locs_to_supervoxels", "case": f"{label} n={n:,} file://",
                             "ours": f"{n / dt:,.0f} pts/s ({dt:.2f} s, {st['gets']} reads)", "peer": "", "peer_value": "",
                             "ratio": ""})
                for lat, server in servers.items():
                    _ours(table[:20], server.spec()) if n == sizes[0] else None
                    c0 = server.cpu()
                    got, dt, st = _ours(locs, server.spec())
                    server_ms = 1000 * (server.cpu() - c0) / max(1, st["gets"])
                    assert np.array_equal(got, want), f"HTTP {lat} ms disagrees with file://"
                    r = n / dt
                    rate[(label, lat, n)] = r
                    ours = (f"{r:,.0f} pts/s ({dt:.2f} s, {st['gets']} GETs, peak {st['peak_in_flight']} in flight, "
                            f"server {server_ms:.2f} ms CPU/GET)")
                    rows.append({"benchmark": "locs_to_supervoxels", "case": f"{label} n={n:,} HTTP {lat} ms",
                                 "ours": ours, "peer": f"ours on file:// ({label})",
                                 "peer_value": f"{rate[(label, 'file', n)]:,.0f} pts/s",
                                 "ratio": r / rate[(label, "file", n)]})
                    if label == "sharded":
                        u = rate[("unsharded", lat, n)]
                        rows.append({"benchmark": "locs_to_supervoxels", "case": f"sharded vs unsharded n={n:,} HTTP {lat} ms",
                                     "ours": f"{r:,.0f} pts/s", "peer": "ours, unsharded", "peer_value": f"{u:,.0f} pts/s",
                                     "ratio": r / u})
                    if n == sizes[0] and lat in (20, 50):
                        m = min(sample, n)
                        sp, sdt = _scattered(server.data_dir, server.token, locs[:m])
                        assert np.array_equal(sp, want[:m]), "scattered_points disagrees"
                        rows.append({"benchmark": "locs_to_supervoxels", "case": f"{label} n={n:,} HTTP {lat} ms",
                                     "ours": f"{r:,.0f} pts/s", "peer": f"cloud-volume scattered_points ({m} pts)",
                                     "peer_value": f"{m / sdt:,.0f} pts/s", "ratio": r / (m / sdt)})
            rows += _engines(servers[20], table[:sizes[0] if quick else 10_000], label == "sharded")
        finally:
            for s in servers.values():
                s.stop()
    return rows


def million(latency_ms: float = 50, repeat: int = 2) -> list[dict]:
    """Only the issue's 50 ms figure: 10^6 synapse-like points on file:// and over HTTP, unsharded
    and sharded, ``repeat`` times each in turn (after a first call of each that pays first-use costs),
    with the local server's CPU per GET (it shares the client's cores; a bucket's does not).

        python benchmarks/bench_storage.py million
    """
    from crantseg_dask.jobs.demo import synapse_table
    from crantseg_dask.sources.resolve import local_dataset_path

    paths = {"unsharded": local_dataset_path("demo"), "sharded": _sharded_copy("demo")}
    table = synapse_table(paths["unsharded"], 1_000_000, seed=0)[["x", "y", "z"]].to_numpy()
    rows = []
    for label, path in paths.items():
        server = Server(path, latency_ms)
        try:
            _ours(table, str(path)), _ours(table[:20], server.spec())
            for _ in range(repeat):
                want, dt_f, _st = _ours(table, str(path))
                c0 = server.cpu()
                got, dt_h, st = _ours(table, server.spec())
                cpu = server.cpu() - c0
                assert np.array_equal(got, want), f"HTTP {latency_ms} ms disagrees with file://"
                rows.append({"benchmark": "locs_to_supervoxels", "case": f"{label} n=1,000,000 HTTP {latency_ms:g} ms",
                             "ours": f"{1e6 / dt_h:,.0f} pts/s ({dt_h:.2f} s, {st['gets']} GETs, server "
                                     f"{cpu:.2f} s CPU, {1000 * cpu / max(1, st['gets']):.2f} ms/GET)",
                             "peer": f"ours on file:// ({label})", "peer_value": f"{1e6 / dt_f:,.0f} pts/s ({dt_f:.2f} s)",
                             "ratio": dt_f / dt_h})
        finally:
            server.stop()
    return rows


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from run import print_rows

    print_rows(million() if sys.argv[1:2] == ["million"] else run(quick="--quick" in sys.argv))
