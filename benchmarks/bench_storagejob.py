"""The snap-and-roots batch job with the layer over HTTP at 20 ms per GET against file:// (issue 11).

The table of ``bench_jobs`` (the demo's synthetic synapses, seed 1) at 10^6 rows (``--quick``:
10^5; ``CRANTSEG_BENCH_JOB_ROWS`` overrides) runs as ``run_job("snap", ..., snap_zero=True)`` on
a fresh LocalCluster of 2 workers twice (threads per worker as ``run_job``'s own cluster takes
them: 1 for file://, ``crantseg.storage.job-threads`` for a remote layer): through the ``local``
source (layer read from ``file://``) and through the ``cave`` source of a ``crantseg serve
--latency-ms 20`` subprocess (every chunk GET and every server request delayed 20 ms). The outputs are compared. Target: HTTP at 20 ms at least
0.7x the file:// rate.

    python benchmarks/run.py storagejob
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(quick: bool = False, partition_size: int = 50_000, latency_ms: float = 20) -> list[dict]:
    from bench_storage import Server

    from crantseg_dask.cluster import make_client
    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.jobs import run_job
    from crantseg_dask.jobs.runner import threads_per_worker
    from crantseg_dask.sources import open_source
    from crantseg_dask.sources.resolve import resolve_dataset
    from crantseg_dask.jobs.demo import synapse_table
    from crantseg_dask.persist import read_output

    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    n = int(os.environ.get("CRANTSEG_BENCH_JOB_ROWS", 100_000 if quick else 1_000_000))
    tmp = Path(tempfile.mkdtemp(prefix="crantseg-storagejob-"))
    server = Server(path, latency_ms)
    seconds = {}
    try:
        synapse_table(path, n, seed=1).to_parquet(tmp / "syn.parquet")
        for label, dataset in (("file", str(path)), ("http", server.spec())):
            # a fresh cluster each (both start with cold caches), with the threads per worker
            # run_job's own cluster takes for this layer (``storage.job-threads`` when remote)
            threads = threads_per_worker(open_source(resolve_dataset(dataset)))
            with make_client(n_workers=2, threads_per_worker=threads) as client:
                t = time.perf_counter()
                run_job("snap", tmp / "syn.parquet", tmp / f"{label}.zarr", dataset=dataset, timestamp="mat",
                        partition_size=partition_size, client=client, progress=False, snap_zero=True)
                seconds[label] = time.perf_counter() - t
        a, b = read_output(str(tmp / "file.zarr")), read_output(str(tmp / "http.zarr"))
        for col in ("snapped_x", "snapped_y", "snapped_z", "root_id"):
            assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), f"{col}: HTTP and file:// disagree"
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    case = f"{n:,} synapses, 2 workers (threads: HTTP {threads}, file:// 1), partitions of {partition_size:,}"
    f, h = seconds["file"], seconds["http"]
    return [{"benchmark": "snap + roots job", "case": f"{case}, HTTP {latency_ms:g} ms per GET",
             "ours": f"{n / h:,.0f} rows/s ({h:.1f} s)", "peer": "same job, layer on file://",
             "peer_value": f"{n / f:,.0f} rows/s ({f:.1f} s) (target: HTTP at least 0.7x)", "ratio": f / h}]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import print_rows

    print_rows(run(quick="--quick" in sys.argv))
