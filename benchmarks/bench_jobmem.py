"""Peak memory per worker of the 10^7-row batch job (snap + roots) on a LocalCluster of 2 workers.

The demo's synthetic synapse table (``jobs.demo.synapse_table``, seed 1, as in ``bench_jobs``) at
10^7 rows (``--quick``: 10^6) is written to parquet and run as ``run_job("snap", ...)`` with
``snap_zero=True`` (snap, then roots) on ``make_client(n_workers=2)`` (one thread per worker, the
default partition size of 50,000 rows). Each worker's peak resident memory is read twice:

* ``ru_maxrss`` of the worker process at the end (the kernel's exact high-water mark), and
* the largest RSS seen by sampling the worker processes with ``psutil`` every 0.2 s from this
  process while the job runs (a check on the first, and what a dashboard would show).

Target: every worker under 2 GiB (issue 18).

    python benchmarks/run.py jobmem          # 10^7 rows
    python benchmarks/bench_jobmem.py --quick  # 10^6 rows
"""
from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

LIMIT_MIB = 2048


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pid() -> int:
    return os.getpid()


class Sampler(threading.Thread):
    """Largest RSS of each of ``pids`` (MiB), sampled every ``every`` seconds until ``stop()``."""

    def __init__(self, pids: dict[str, int], every: float = 0.2):
        super().__init__(daemon=True)
        self.procs = {w: psutil.Process(p) for w, p in pids.items()}
        self.peak = {w: 0.0 for w in pids}
        self.every = every
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for w, p in self.procs.items():
                try:
                    self.peak[w] = max(self.peak[w], p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            self._done.wait(self.every)

    def stop(self) -> dict[str, float]:
        self._done.set()
        self.join()
        return self.peak


def run(quick: bool = False, partition_size: int = 50_000) -> list[dict]:
    import dask

    from crantseg_dask.cluster import make_client
    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.jobs import run_job
    from crantseg_dask.jobs.demo import synapse_table

    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    n = 1_000_000 if quick else 10_000_000
    tmp = Path(tempfile.mkdtemp(prefix="crantseg-jobmem-"))
    try:
        synapse_table(path, n, seed=1).to_parquet(tmp / "syn.parquet")
        with make_client(n_workers=2) as client, dask.config.set({"crantseg.partition-size": partition_size}):
            pids = client.run(_pid)
            start = client.run(_peak_rss_mib)
            sampler = Sampler(pids)
            sampler.start()
            t = time.perf_counter()
            summary = run_job("snap", tmp / "syn.parquet", tmp / "out.zarr", dataset=str(path), timestamp="mat",
                              partition_size=partition_size, client=client, progress=False, snap_zero=True)
            dt = time.perf_counter() - t
            sampled = sampler.stop()
            peaks = client.run(_peak_rss_mib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    case = f"{n:,} synapses, 2 workers x 1 thread, partitions of {partition_size:,} ({summary['partitions']})"
    rows = [{"benchmark": "snap + roots job", "case": case, "ours": f"{n / dt:,.0f} rows/s ({dt:.1f} s)",
             "peer": "", "peer_value": "", "ratio": ""}]
    for i, w in enumerate(sorted(peaks)):
        rows.append({"benchmark": "job peak worker RSS", "case": f"{case}, worker {i + 1}",
                     "ours": f"{peaks[w]:,.0f} MiB (ru_maxrss; {start[w]:,.0f} MiB at start; "
                             f"{sampled[w]:,.0f} MiB sampled)",
                     "peer": "target", "peer_value": f"under {LIMIT_MIB:,} MiB", "ratio": LIMIT_MIB / peaks[w]})
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import print_rows

    print_rows(run(quick="--quick" in sys.argv))
