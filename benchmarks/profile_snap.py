"""Profile ``snap_kernel`` in-process on one partition of the demo synapse table.

Two cases, each ``--rows`` rows (default 50,000, the demo job's partition size), snap_zero=True and
search radius 160 nm as in ``crantseg demo``:

* ``many``: the first planned partition of ``crantseg demo``'s synapse table (rows sorted by
  storage chunk as the job plans them; thousands of distinct targets);
* ``one``: rows scattered around the largest neuron, all with that neuron as target;
* ``sparse``: the first planned partition of ``bench_jobs``' sparse table (2 x 10^5 rows spread
  over the volume, seed 2).

Each case runs the kernel once to warm the leaves cache and the page cache, then once more under
cProfile (and once without it, for the rate). Prints rows/s (wall and process CPU) and the top costs.

Usage::

    CRANTSEG_DATA_DIR=/work/wt-data/shared-demo python benchmarks/profile_snap.py [--rows N] [--top K]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np
import pandas as pd


def _cases(rows: int):
    from crantseg_dask._chunking import chunk_keys, nm_to_voxels, plan_partitions
    from crantseg_dask.jobs.demo import synapse_table
    from crantseg_dask.sources import open_source
    from crantseg_dask.sources.resolve import local_dataset_path, resolve_dataset

    path = local_dataset_path("demo", progress=True)
    spec = resolve_dataset(str(path))
    meta = open_source(spec).meta
    table = synapse_table(path, 1_000_000)  # the demo's table: the partition the job would make
    locs = table[["x", "y", "z"]].to_numpy()
    b = meta.bounds(0)
    vox = np.clip(nm_to_voxels(locs, meta.resolution[0]), b[0], b[1] - 1)
    plan = plan_partitions(chunk_keys(vox, b, meta.chunk_size[0]), rows)
    first = plan.order[: plan.offsets[1]]
    many = (locs[first], table["target_id"].to_numpy()[first].astype(np.uint64))
    # one target: the root with the most rows in the table, rows jittered around its synapses
    counts = pd.Series(table["target_id"]).value_counts()
    big = np.uint64(counts.index[0])
    pick = np.flatnonzero(table["target_id"].to_numpy() == big)
    rng = np.random.default_rng(1)
    sel = pick[rng.integers(0, len(pick), rows)]
    one = (locs[sel] + rng.normal(0, 30, (rows, 3)) * [1, 1, 0.4], np.full(rows, big, np.uint64))
    # sparse: the first planned partition of bench_jobs' sparse table (2 x 10^5 rows over the volume)
    sp = synapse_table(path, 200_000, seed=2)
    sp_locs = sp[["x", "y", "z"]].to_numpy()
    sp_vox = np.clip(nm_to_voxels(sp_locs, meta.resolution[0]), b[0], b[1] - 1)
    sp_plan = plan_partitions(chunk_keys(sp_vox, b, meta.chunk_size[0]), rows)
    sp_first = sp_plan.order[: sp_plan.offsets[1]]
    sparse = (sp_locs[sp_first], sp["target_id"].to_numpy()[sp_first].astype(np.uint64))
    return spec, {"many": many, "one": one, "sparse": sparse}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--case", choices=("many", "one", "sparse", "both"), default="both")
    a = p.parse_args(argv)
    from crantseg_dask.ops._snap_kernel import STATUS, snap_kernel

    spec, cases = _cases(a.rows)
    for name, (locs, targets) in cases.items():
        if a.case not in (name, "both"):
            continue
        t0 = time.perf_counter()
        snap_kernel(locs, targets, spec, True, 160.0)  # warm: leaves cache, page cache
        print(f"\n== {name}: first (cold) call {time.perf_counter() - t0:.2f} s")
        t0, c0 = time.perf_counter(), time.process_time()
        got = snap_kernel(locs, targets, spec, True, 160.0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        st = np.bincount(got.status, minlength=len(STATUS))
        print(f"\n== {name}: {len(locs)} rows, {len(np.unique(targets))} targets: {wall:.2f} s wall "
              f"({len(locs) / wall:,.0f} rows/s), {cpu:.2f} s CPU ({len(locs) / cpu:,.0f} rows per CPU s)")
        print("   statuses: " + ", ".join(f"{s}={c}" for s, c in zip(STATUS, st.tolist()) if c))
        prof = cProfile.Profile()
        prof.enable()
        snap_kernel(locs, targets, spec, True, 160.0)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
