"""ID operations through the local CAVE server (real caveclient / cloud-volume over HTTP).

* supervoxels_to_roots for 10^6 supervoxels (Zipf-distributed, 5% zeros) vs crantpy's way
  (sequential 10k batches through cloud-volume's get_roots, no deduplication) and vs one
  caveclient get_roots call with every non-zero ID;
* update_ids over 10^5 roots (10% stale) vs crantpy's way (is_latest_roots, then one
  suggest_latest_roots call per stale row, measured on 100 rows and extrapolated).

The server adds a fixed latency per request (20 ms by default), standing in for a remote server.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import numpy as np

from crantseg_dask.sources.resolve import cave_dataset, local_dataset_path
from crantseg_dask.dataset.truth import Truth
from crantseg_dask.ops.mapping import supervoxels_to_roots
from crantseg_dask.ops.updates import update_cache, update_ids
from crantseg_dask.server.app import serve_in_thread
from crantseg_dask.server.state import Faults
from crantseg_dask.sources import open_source


def run(quick: bool = False, latency_ms: float = 20.0) -> list[dict]:
    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    truth = Truth(path)
    srv = serve_in_thread(path, faults=Faults(latency_ms=latency_ms))
    rows = []
    try:
        spec = cave_dataset(srv.address, srv.datastack, name="bench", token=srv.token)
        src = open_source(spec)
        rng = np.random.default_rng(0)
        svs = truth.supervoxels
        n = 100_000 if quick else 1_000_000
        ids = svs[rng.permutation(len(svs))][np.minimum(rng.zipf(1.3, n) - 1, len(svs) - 1)]
        ids[rng.random(n) < 0.05] = 0
        ts = datetime.now(timezone.utc).replace(microsecond=0)
        supervoxels_to_roots(ids[:1000], timestamp=ts, dataset=spec, progress=False)  # warm up

        t = time.perf_counter()
        ours = supervoxels_to_roots(ids, timestamp=ts, dataset=spec, progress=False)
        t_ours = time.perf_counter() - t
        cv = src.cloudvolume(0)
        t = time.perf_counter()
        crant = np.zeros(n, np.int64)
        for i in range(0, n, 10_000):
            b = ids[i: i + 10_000]
            nz = b != 0
            r = np.zeros(len(b), np.int64)
            r[nz] = cv.get_roots(b[nz], stop_layer=8, timestamp=int(ts.timestamp()))
            crant[i: i + 10_000] = r
        t_crant = time.perf_counter() - t
        t = time.perf_counter()
        one = np.asarray(src.cg.get_roots(ids[ids != 0], timestamp=ts))
        t_one = time.perf_counter() - t
        assert (crant == ours).all() and (one.astype(np.int64) == ours[ids != 0]).all()
        case = f"{n:,} supervoxels, {latency_ms:.0f} ms/request"
        for peer, s in (("crantpy (sequential 10k batches)", t_crant), ("one caveclient get_roots", t_one)):
            rows.append({"benchmark": "supervoxels_to_roots", "case": case, "ours": f"{t_ours:.2f} s",
                         "peer": peer, "peer_value": f"{s:.2f} s", "ratio": s / t_ours})

        now = truth.operation_times()[-1]
        cur = np.array([r for r in truth.all_roots if truth.is_latest(r, now)], np.uint64)
        old = np.array([r for r in truth.all_roots if not truth.is_latest(r, now)], np.uint64)
        m = 10_000 if quick else 100_000
        table = np.where(rng.random(m) < 0.1, old[rng.integers(0, len(old), m)], cur[rng.integers(0, len(cur), m)])
        update_cache.clear()
        t = time.perf_counter()
        update_ids(table, timestamp=ts, dataset=spec, progress=False)
        t_up = time.perf_counter() - t
        stale = table[~np.isin(table, cur)]
        k = min(100, len(stale))
        t0 = time.perf_counter()
        src.cg.is_latest_roots(table, timestamp=ts)
        t_isl = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in stale[:k]:
            src.cg.suggest_latest_roots(int(r), timestamp=ts, stop_layer=2, return_all=True,
                                        return_fraction_overlap=True)
        per = (time.perf_counter() - t0) / k
        t_crant_up = t_isl + per * len(stale)
        rows.append({"benchmark": "update_ids", "case": f"{m:,} roots, {len(stale):,} stale", "ours": f"{t_up:.2f} s",
                     "peer": f"crantpy (suggest_latest_roots per stale row; {k} measured at {per * 1000:.0f} ms)",
                     "peer_value": f"{t_crant_up:.1f} s", "ratio": t_crant_up / t_up})
    finally:
        srv.stop()
    return rows
