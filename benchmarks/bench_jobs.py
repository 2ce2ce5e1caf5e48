"""The batch job: snap a synapse table to its neurons and map the snapped points to roots, on a
LocalCluster of two worker processes, against the eager calls (snap_table, then
locs_to_segments) on the same rows through the same cluster.

Reports rows/s, the job's overhead over the eager calls (target: under 25%), and the peak
resident memory of each worker (target: under 2 GiB).
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import dask
import numpy as np

from crantseg_dask.cluster import make_client
from crantseg_dask.config import local_dataset_path
from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.demo import synapse_table


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(quick: bool = False, partition_size: int = 50_000) -> list[dict]:
    from crantseg_dask import locs_to_segments
    from crantseg_dask.ops.snapping import snap_table

    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    n = 200_000 if quick else 10_000_000
    table = synapse_table(path, n, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="crantseg-bench-"))
    rows = []
    try:
        table.to_parquet(tmp / "syn.parquet")
        with make_client(n_workers=2) as client, dask.config.set({"crantseg.partition-size": partition_size}):
            t = time.perf_counter()
            summary = run_job("snap", tmp / "syn.parquet", tmp / "out.zarr", dataset=str(path), timestamp="mat",
                              partition_size=partition_size, client=client, progress=False, snap_zero=True)
            t_job = time.perf_counter() - t
            job_peak = max(client.run(_peak_rss_mib).values())
            client.restart()
            t = time.perf_counter()
            snapped = snap_table(table, id_column="target_id", snap_zero=True, progress=False, dataset=str(path))
            roots = locs_to_segments(snapped[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), timestamp="mat",
                                     progress=False, dataset=str(path))
            t_eager = time.perf_counter() - t
            eager_peak = max(client.run(_peak_rss_mib).values())
        from crantseg_dask.persist import read_output

        out = read_output(str(tmp / "out.zarr"))
        assert np.array_equal(out["root_id"].to_numpy().astype(np.int64), roots), "job and eager calls disagree"
        case = f"{n:,} synapses, 2 workers, partitions of {partition_size:,}"
        rows.append({"benchmark": "snap + roots job", "case": case,
                     "ours": f"{n / t_job:,.0f} rows/s ({t_job:.1f} s, {summary['partitions']} partitions)",
                     "peer": "eager snap_table + locs_to_segments (same cluster)",
                     "peer_value": f"{n / t_eager:,.0f} rows/s ({t_eager:.1f} s)",
                     "ratio": t_eager / t_job})
        rows.append({"benchmark": "snap + roots job", "case": case, "ours": f"job overhead {t_job / t_eager - 1:+.0%}",
                     "peer": "target", "peer_value": "under +25%", "ratio": ""})
        rows.append({"benchmark": "snap + roots job", "case": case,
                     "ours": f"peak worker RSS {job_peak:,.0f} MiB", "peer": "eager peak worker RSS",
                     "peer_value": f"{eager_peak:,.0f} MiB (target: job under 2048 MiB)", "ratio": eager_peak / job_peak})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
