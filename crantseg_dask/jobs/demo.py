"""``crantseg demo``: the main job on the embedded dataset.

Generates the embedded dataset on first use, makes a synthetic synapse table (points scattered
around the neurons' supervoxels, each with the root it belongs to as its target), and runs the
batch job over it on a local Dask cluster, writing Zarr; then prints a summary, the dashboard link
and the timing.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset.layout import PRESETS
from ..sources import open_source
from ..sources.resolve import local_dataset_path, resolve_dataset
from .cli import _integer, dataset_argument
from .runner import run_job

__all__ = ["main", "synapse_table", "DEFAULT_OUT"]

DEFAULT_OUT = "crantseg-demo"  # relative: the demo writes into the directory it is run from


def synapse_table(dataset_path, n: int, seed: int = 0, jitter_nm: float = 60.0) -> pd.DataFrame:
    """``n`` synthetic synapses: x, y, z (nm) near random supervoxels, and ``target_id`` (their root now)."""
    path = Path(dataset_path)
    svs = np.load(path / "history" / "supervoxels.npy")
    anchor = np.load(path / "history" / "sv_anchor.npy")
    source = open_source(resolve_dataset(str(path)))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(svs), n)
    res = np.asarray(source.meta.resolution[0])
    xyz = (anchor[pick] + 0.5) * res + rng.normal(scale=jitter_nm, size=(n, 3)) * [1, 1, 0.4]
    roots = source.roots(svs, pd.Timestamp.now(tz="UTC").to_pydatetime())
    return pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "target_id": roots[pick]})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crantseg demo", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo", help="embedded dataset preset (default: demo; tiny is quick)")
    p.add_argument("--rows", type=_integer(1), default=1_000_000, help="synapses in the table (default 10^6)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"directory for the table and the Zarr output (default: ./{DEFAULT_OUT}, in the current "
                   "directory)")
    p.add_argument("--workers", type=_integer(1), default=2)
    p.add_argument("--partition-size", type=_integer(1), default=50_000, help="rows per task (default 50,000)")
    p.add_argument("--server", help="run the job through this CAVE deployment (with --datastack), which must serve "
                   "the --preset dataset (e.g. `crantseg serve --dataset tiny`); the table is made from the preset")
    p.add_argument("--datastack", help="the datastack on --server")
    p.add_argument("--token-file", help="a file holding the CAVE token (default: caveclient's secret)")
    a = p.parse_args(argv)
    if a.preset not in PRESETS:
        p.error(f"argument --preset: unknown preset {a.preset!r}; presets: {', '.join(sorted(PRESETS))}")
    a.dataset = None
    cave = dataset_argument(p, a)  # None: the job reads the embedded dataset itself
    t0 = time.perf_counter()
    print(f"dataset: the embedded {a.preset!r} preset (generated on first use; a line per slab while it is)",
          flush=True)
    path = local_dataset_path(a.preset, progress=True)
    print(f"dataset: {path} ({time.perf_counter() - t0:.1f} s)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = synapse_table(path, a.rows)
    table.to_parquet(out / "synapses.parquet")
    print(f"synapse table: {len(table)} rows -> {out / 'synapses.parquet'}")
    op = "snap" if "snap" in _operations() else "locs-to-segments"
    t1 = time.perf_counter()
    extra = {"snap_zero": True} if op == "snap" else {}  # synapses jittered onto background are snapped too
    if cave is not None:
        print(f"job dataset: {a.datastack} on {a.server}")
    summary = run_job(op, out / "synapses.parquet", out / "synapses.zarr", dataset=cave or str(path), force=True,
                      n_workers=a.workers, partition_size=a.partition_size, **extra)
    seconds = time.perf_counter() - t1
    from ..persist import read_output

    result = read_output(str(out / "synapses.zarr"))
    on_target = (result["root_id"].to_numpy() == table["target_id"].to_numpy()).mean()
    print(f"\n{op}: {len(table)} rows in {seconds:.1f} s ({len(table) / seconds:,.0f} rows/s) "
          f"on {a.workers} workers; dashboard was {summary['dashboard']}")
    print(f"rows whose root is their target neuron: {on_target:.1%}")
    if "status" in result:
        from ..ops.snapping import STATUS

        counts = result["status"].value_counts()
        print("\n".join(f"  {name:<20} {counts.get(name, 0):>10,}" for name in STATUS))
    print(f"output: {out / 'synapses.zarr'} (open with crantseg_dask.persist.read_output or xarray.open_zarr)")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def _operations():
    from .operations import OPERATIONS

    return OPERATIONS
