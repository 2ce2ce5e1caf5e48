"""Shared pieces of the reliability tests (issue 17): a small location table with its truth, a
TLS LocalCluster client, helpers to run the CLI and damage a job's store."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from crantseg_dask.cluster import make_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client():
    with make_client(n_workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def table(truth, tmp_path_factory):
    """1,200 locations (1,000 on supervoxel anchors) with their supervoxels and roots at "mat"."""
    rng = np.random.default_rng(17)
    off, size = truth.bounds(0)
    vox = rng.integers(off, off + size, size=(1200, 3))
    vox[:1000] = truth.sv_anchor[rng.integers(0, len(truth.sv_anchor), 1000)]
    df = pd.DataFrame((vox + 0.5) * truth.resolution(0), columns=["x", "y", "z"])
    d = tmp_path_factory.mktemp("table")
    df.to_parquet(d / "t.parquet")
    sv = truth.supervoxel_at(vox)
    return {"path": d / "t.parquet", "df": df, "sv": sv, "root": truth.root_of(sv, truth.materialization())}


def check_truth(out, table):
    from crantseg_dask.persist import read_output

    r = read_output(out)
    np.testing.assert_array_equal(r.index, np.arange(len(table["df"])))
    np.testing.assert_array_equal(r["supervoxel_id"], table["sv"])
    np.testing.assert_array_equal(r["root_id"], table["root"])
    return r


def arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][:]) for k in g.array_keys()}


def cli(*args, cwd=None, env=None, timeout=300):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "crantseg_dask.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=timeout)


def chunk(out, name, i=0):
    return Path(out) / name / "c" / str(i)


def wait_done(out, at_least, timeout=180):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            done = np.asarray(zarr.open_group(str(out), mode="r")["_done"][:])
            if done.sum() >= at_least:
                return done
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{out}: fewer than {at_least} partitions done after {timeout} s")
