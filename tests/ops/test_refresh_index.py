"""A job's per-partition root ranges (``_range_root_id``) and the refresh that reads only the
chunks they point to, against the truth of the edit log (roots of each row's supervoxel)."""
from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import zarr

from crantseg_dask.ops.refresh import refresh
from crantseg_dask.sources import open_source

SIZE = 100  # partition (chunk) length


def _versions(truth) -> list[int]:
    return sorted(m["version"] for m in truth.edits["materializations"])


def _ranges(values: np.ndarray) -> np.ndarray:
    """[min non-zero, max] of each SIZE-row partition of ``values``; [2**64 - 1, 0] for none."""
    out = []
    for i in range(0, len(values), SIZE):
        nz = values[i: i + SIZE][values[i: i + SIZE] != 0]
        out.append([nz.min(), nz.max()] if len(nz) else [np.iinfo(np.uint64).max, 0])
    return np.array(out, np.uint64)


def _job(tmp_path, truth, local_spec, svs, name="job.zarr", **kw):
    from distributed import Client

    from crantseg_dask.jobs import run_job

    pd.DataFrame({"supervoxel_id": svs.astype(np.int64)}).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / name
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        run_job("supervoxels-to-roots", tmp_path / "in.parquet", out, dataset=local_spec, timestamp="mat_1",
                client=client, progress=False, partition_size=SIZE, **kw)
    return out


@pytest.fixture
def grouped(tmp_path, truth, local_spec):
    """A job at mat 1 over supervoxels grouped by their root at mat 1 (a lab's neuron list), a
    partition of empty rows among them; its supervoxels in stored row order."""
    t0 = truth.materialization(1)
    rng = np.random.default_rng(11)
    svs = truth.supervoxels[rng.integers(0, len(truth.supervoxels), 1400)]
    svs = svs[np.argsort(truth.root_of(svs, t0), kind="stable")]
    svs = np.concatenate([svs[:700], np.zeros(SIZE, np.uint64), svs[700:]]).astype(np.uint64)
    out = _job(tmp_path, truth, local_spec, svs)
    stored = svs[np.asarray(zarr.open_group(str(out), mode="r")["row"][:])]
    return out, stored


def _index(out) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out), mode="r")["_range_root_id"][:]).reshape(-1, 2)


def test_a_job_keeps_each_partitions_root_range(grouped, truth):
    out, stored = grouped
    want = _ranges(truth.root_of(stored, truth.materialization(1)))
    assert (want[7] == [np.iinfo(np.uint64).max, 0]).all()  # the empty partition
    assert (_index(out) == want).all()


def test_resume_rewrites_the_range_of_the_partitions_it_reruns(grouped, truth, local_spec):
    """A partition marked unfinished with a wrong range entry: the resumed job writes it anew."""
    from crantseg_dask.jobs import run_job
    from crantseg_dask.persist import JobStore

    out, stored = grouped
    store = JobStore(str(out))
    store.mark_undone([3])
    g = zarr.open_group(str(out), mode="r+")
    g["_range_root_id"][6:8] = np.array([5, 6], np.uint64)
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        run_job("supervoxels-to-roots", out.parent / "in.parquet", out, dataset=local_spec, timestamp="mat_1",
                client=client, progress=False, partition_size=SIZE, resume=True)
    assert (_index(out) == _ranges(truth.root_of(stored, truth.materialization(1)))).all()


def test_refresh_by_the_index_equals_the_truth_at_each_later_time(grouped, truth, monkeypatch):
    """Refreshed to each later materialization and then to now: every row holds the truth's root
    of its supervoxel then, ``root_id_previous`` the truth's root before where it changed, the
    index the truth's ranges; each refresh decodes every root chunk whose roots change and
    some refresh spares chunks (the index); verify sees a whole group."""
    from crantseg_dask.ops import _zarr_chunks
    from crantseg_dask.persist import read_output, verify

    out, stored = grouped
    read = []
    real = _zarr_chunks.ChunkCodec.decode
    monkeypatch.setattr(_zarr_chunks.ChunkCodec, "decode",
                        lambda self, i, out=None: read.append((self.folder.name, i)) or real(self, i, out))
    times = [truth.materialization(v) for v in _versions(truth)]
    times.append(truth.operation_times()[-1] + timedelta(days=1))
    n_chunks, spared = len(stored) // SIZE, []
    for before, now in zip(times[:-1], times[1:]):
        read.clear()
        rep = refresh(out, now)
        old, new = truth.root_of(stored, before), truth.root_of(stored, now)
        g = zarr.open_group(str(out), mode="r")
        assert (np.asarray(g["root_id"][:]) == new).all(), now
        assert (np.asarray(g["root_id_previous"][:]) == np.where(old != new, old, 0)).all(), now
        assert (_index(out) == _ranges(new)).all(), now
        decoded = {i for name, i in read if name == "root_id"}
        changed = set(np.flatnonzero((old != new).reshape(-1, SIZE).any(1)).tolist())
        assert changed <= decoded, (now, changed, decoded)
        spared.append(n_chunks - len(decoded))
        assert rep.rows_changed == {"root_id": int((old != new).sum())}
    assert (read_output(str(out))["root_id"].to_numpy().astype(np.uint64)
            == truth.root_of(stored[np.argsort(np.asarray(zarr.open_group(str(out), mode="r")["row"][:]))],
                             times[-1])).all()
    assert verify(str(out))["outputs"] == {}
    assert max(spared) > 0, spared


def test_a_job_without_the_index_still_refreshes(grouped, truth):
    """An older job (no ``_range_root_id``): the whole column is read; the truth's roots."""
    out, stored = grouped
    shutil.rmtree(out / "_range_root_id")
    t1 = truth.materialization(_versions(truth)[-1])
    refresh(out, t1)
    g = zarr.open_group(str(out), mode="r")
    assert (np.asarray(g["root_id"][:]) == truth.root_of(stored, t1)).all()
    assert "_range_root_id" not in g.array_keys()


def test_a_root_chunk_edited_after_a_refresh_is_checked_again(grouped, truth, local_spec, monkeypatch):
    """The refresh records each root chunk's checksum; the next refresh trusts the column (no
    ``is_latest`` at its time) only while every chunk still matches: a root superseded long
    before, written into a chunk afterwards, is found and updated to the truth's root of the
    row's supervoxel."""
    out, stored = grouped
    versions = _versions(truth)
    times = [truth.materialization(v) for v in versions]
    source = open_source(local_spec)
    checked = []
    real = type(source).is_latest
    monkeypatch.setattr(type(source), "is_latest", lambda self, r, ts: checked.append(ts) or real(self, r, ts))
    refresh(out, times[1])
    checked.clear()
    refresh(out, times[2])
    assert times[1] not in checked  # trusted by its chunks' checksums
    row = int(np.flatnonzero(stored != 0)[-1])
    old = next(r for r in truth.all_roots.tolist() if truth.superseded(r) and truth.superseded(r) < times[1]
               and r != truth.root_of(stored[row:row + 1], times[2])[0])
    g = zarr.open_group(str(out), mode="r+")
    g["root_id"][row] = np.uint64(old)  # edited through zarr, the index not updated
    checked.clear()
    rep = refresh(out, times[-1] if len(times) > 3 else times[2] + timedelta(days=1))
    assert times[2] in checked and rep.stale_roots == 1
    g = zarr.open_group(str(out), mode="r")
    assert int(g["root_id"][row]) == int(truth.root_of(stored[row:row + 1], times[-1] if len(times) > 3
                                                         else times[2] + timedelta(days=1))[0])


def test_chunks_in_range_kernel():
    """Against the definition: a chunk is picked when some id lies in [smallest, largest]
    (bounds included); an empty chunk ([2**64 - 1, 0]) never."""
    from crantseg_dask.ops.refresh import chunks_in_range

    rng = np.random.default_rng(3)
    lo = rng.integers(1, 1000, 300).astype(np.uint64)
    ranges = np.stack([lo, lo + rng.integers(0, 20, 300).astype(np.uint64)], 1)
    ranges[::17] = [np.iinfo(np.uint64).max, 0]
    ids = np.concatenate([rng.integers(1, 1100, 40).astype(np.uint64), ranges[1:3, 0], ranges[5:6, 1]])
    want = [i for i, (a, b) in enumerate(ranges.tolist()) if any(a <= x <= b for x in ids.tolist())]
    assert chunks_in_range(ranges, ids).tolist() == want
    assert {1, 2, 5} <= set(want)
    assert chunks_in_range(ranges, ids[:0]).size == 0
