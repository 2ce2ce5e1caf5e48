"""The batch job: snap a synapse table to its neurons and map the snapped points to roots, on a
LocalCluster of two worker processes, against the eager calls (snap_table, then
locs_to_segments) on the same rows through the same cluster.

Reports rows/s, the job's overhead over the eager calls (target: under 25%), and the peak
resident memory of each worker (target: under 2 GiB). Then a sparse snap job (2 x 10^5 synapse
rows spread over the volume; --quick: 2 x 10^4) against the same job on the code before random
access (commit ``BASELINE``), each in a fresh process with its own 2-worker cluster, outputs
compared. ``python benchmarks/bench_jobs.py dense [ROWS]`` runs the job's own table (default 10^6
rows) the same way against ``BASELINE``: the dense job's rate against the code before random access;
``warm [ROWS]`` times the job and the eager calls a second time on the same warm workers.
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
from crantseg_dask.sources.resolve import local_dataset_path
from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.demo import synapse_table


#: the commit before random access (issue 12): "today's" code for the sparse snap job
BASELINE = "b8445a0"
_SPARSE = """
import sys, time
import crantseg_dask
print("code:", crantseg_dask.__file__)
from crantseg_dask.cluster import make_client
from crantseg_dask.jobs import run_job
with make_client(n_workers=2) as client:
    t = time.perf_counter()
    run_job("snap", sys.argv[1], sys.argv[2], dataset=sys.argv[3], timestamp="mat", partition_size=50_000,
            client=client, progress=False, snap_zero=True)
    print(time.perf_counter() - t)
"""


def _sparse_snap_seconds(pythonpath: str, table: Path, out: Path, dataset: Path) -> float:
    """Wall time of the snap job in a fresh process (and its 2 workers) running ``pythonpath``'s code."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=pythonpath)
    # cwd: ``python -c`` puts the working directory first on sys.path, ahead of PYTHONPATH; run
    # from the repository it imported the repository's code for the baseline too (both "ours")
    done = subprocess.run([sys.executable, "-c", _SPARSE, str(table), str(out), str(dataset)], env=env,
                          capture_output=True, text=True, check=True, cwd=str(out.parent))
    lines = done.stdout.strip().splitlines()
    code = Path(lines[0].split("code:", 1)[1].strip()).resolve()
    if not code.is_relative_to(Path(pythonpath).resolve()):
        raise RuntimeError(f"the job imported {code}, not the code under {pythonpath}")
    return float(lines[-1])


def sparse_snap_rows(path, n: int, tmp: Path) -> list[dict]:
    """A sparse snap job (``n`` synapse rows spread over the volume) against the same job on the
    code of ``BASELINE`` (exported with ``git archive``), each in its own process and cluster."""
    return baseline_snap_rows(path, n, tmp, seed=2, what="sparse snap job",
                              case=f"{n:,} synapse rows spread over the volume, 2 workers")


def dense_snap_rows(path, n: int, tmp: Path) -> list[dict]:
    """The snap-and-roots job on the demo's synapse table (seed 1, as ``run``'s job) at ``n`` rows,
    against the same job on the code of ``BASELINE``: the issue's "dense job" comparison at a size
    the baseline finishes in minutes (10^7 rows take it hours)."""
    return baseline_snap_rows(path, n, tmp, seed=1, what="snap + roots job vs before random access",
                              case=f"{n:,} synapses (the job's table), 2 workers, partitions of 50,000")


def baseline_snap_rows(path, n: int, tmp: Path, seed: int, what: str, case: str) -> list[dict]:
    """The snap job on ``synapse_table(path, n, seed)``, ours against ``BASELINE``'s code; outputs compared."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    base = tmp / "baseline"
    if not base.exists():
        archive = subprocess.run(["git", "-C", str(repo), "archive", BASELINE, "crantseg_dask"], capture_output=True)
        if archive.returncode:
            return [{"benchmark": what, "case": case, "ours": "skipped",
                     "peer": f"baseline {BASELINE} not in this repository", "peer_value": "", "ratio": ""}]
        base.mkdir()
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    name = f"snap{seed}_{n}"
    synapse_table(path, n, seed=seed).to_parquet(tmp / f"{name}.parquet")
    t_ours = _sparse_snap_seconds(str(repo), tmp / f"{name}.parquet", tmp / f"{name}_ours.zarr", path)
    t_base = _sparse_snap_seconds(str(base), tmp / f"{name}.parquet", tmp / f"{name}_base.zarr", path)
    from crantseg_dask.persist import read_output

    ours, theirs = read_output(str(tmp / f"{name}_ours.zarr")), read_output(str(tmp / f"{name}_base.zarr"))
    for col in ("snapped_x", "snapped_y", "snapped_z", "root_id"):
        assert np.array_equal(ours[col].to_numpy(), theirs[col].to_numpy()), f"{col}: ours and the baseline disagree"
    return [{"benchmark": what, "case": case,
             "ours": f"{n / t_ours:,.0f} rows/s ({t_ours:.1f} s)", "peer": f"same job, code of {BASELINE}",
             "peer_value": f"{n / t_base:,.0f} rows/s ({t_base:.1f} s)", "ratio": t_base / t_ours}]


def warm_rows(path, n: int, tmp: Path, partition_size: int = 50_000) -> list[dict]:
    """The job and the eager calls on one cluster, each run twice, the second (warm workers: numba
    imported and the compiled search loaded, the dataset open) timed: what ``run`` compares once,
    cold for the job, at sizes where the workers' warm-up is a large share."""
    from crantseg_dask import locs_to_segments
    from crantseg_dask.ops.snapping import snap_table

    table = synapse_table(path, n, seed=1)
    table.to_parquet(tmp / "warm.parquet")
    times = {"job": [], "eager": []}
    with make_client(n_workers=2) as client, dask.config.set({"crantseg.partition-size": partition_size}):
        for i in range(2):
            t = time.perf_counter()
            run_job("snap", tmp / "warm.parquet", tmp / f"warm{i}.zarr", dataset=str(path), timestamp="mat",
                    partition_size=partition_size, client=client, progress=False, snap_zero=True)
            times["job"].append(time.perf_counter() - t)
        for _ in range(2):
            t = time.perf_counter()
            snapped = snap_table(table, id_column="target_id", snap_zero=True, progress=False, dataset=str(path))
            locs_to_segments(snapped[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), timestamp="mat",
                             progress=False, dataset=str(path))
            times["eager"].append(time.perf_counter() - t)
    job, eager = times["job"], times["eager"]
    return [{"benchmark": "snap + roots job, warm workers", "case": f"{n:,} synapses, 2 workers, partitions of "
             f"{partition_size:,}", "ours": f"{n / job[1]:,.0f} rows/s ({job[1]:.1f} s; first run {job[0]:.1f} s)",
             "peer": "eager snap_table + locs_to_segments, second run",
             "peer_value": f"{n / eager[1]:,.0f} rows/s ({eager[1]:.1f} s; first run {eager[0]:.1f} s)",
             "ratio": eager[1] / job[1]}]


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
        try:
            rows += sparse_snap_rows(path, 20_000 if quick else 200_000, tmp)
        except Exception as e:  # noqa: BLE001 - report the failure, keep the main job's rows
            detail = getattr(e, "stderr", None) or str(e)
            rows.append({"benchmark": "sparse snap job", "case": "", "ours": "failed", "peer": BASELINE,
                         "peer_value": f"{type(e).__name__}: {str(detail).strip().splitlines()[-1][:120]}",
                         "ratio": ""})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    # one job against BASELINE's code: python benchmarks/bench_jobs.py sparse [ROWS] (default 200,000)
    # or python benchmarks/bench_jobs.py dense [ROWS] (default 1,000,000)
    import sys

    if sys.argv[1:2] not in (["sparse"], ["dense"], ["warm"]):
        sys.exit("usage: python benchmarks/bench_jobs.py {sparse,dense,warm} [ROWS]   (the whole benchmark: run.py jobs)")
    mode = sys.argv[1]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import print_rows

    tmp = Path(tempfile.mkdtemp(prefix="crantseg-bench-"))
    try:
        n = int(sys.argv[2]) if len(sys.argv) > 2 else {"dense": 1_000_000, "sparse": 200_000, "warm": 200_000}[mode]
        fn = {"dense": dense_snap_rows, "sparse": sparse_snap_rows, "warm": warm_rows}[mode]
        # CRANTSEG_BENCH_DATASET: a dataset directory (e.g. ``crantseg make-dataset --preset demo --sparse``)
        where = os.environ.get("CRANTSEG_BENCH_DATASET")
        path = Path(where) if where else local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
        print_rows(fn(path, n, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
