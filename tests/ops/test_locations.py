"""locs_to_supervoxels / locs_to_segments: checklist items 21-30, against brute-force truth."""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from crantseg_dask.dataset.truth_snap import SnapTruth, other_targets
from crantseg_dask.errors import InvalidInputError, InvalidLocationError, SourceError
from crantseg_dask.ops.locations import (locs_to_segments, locs_to_segments_graph,
                                         locs_to_supervoxels, locs_to_supervoxels_graph)
from crantseg_dask.sources.base import SourceSpec
from crantseg_dask.testing.server import fast_spec, faulty_server

PARTITIONINGS = [None, 2, 37]  # default (one partition), many tiny ones, ragged


@pytest.fixture(scope="module")
def points(truth):
    """nm locations: one inside each of 300 supervoxels, plus random points in and around the volume."""
    rng = np.random.default_rng(7)
    res = truth.resolution(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 300, replace=False)]
    on = (anchors + rng.random(anchors.shape)) * res
    off, size = truth.bounds(0)
    rand = rng.uniform((off - 20) * res, (off + size + 20) * res, size=(200, 3))
    return np.concatenate([on, rand])


def now_roots(truth, svs):
    return truth.root_of(svs, datetime.now(timezone.utc)).astype(np.int64)


def partitioned(k):
    return dask.config.set({"crantseg.partition-size": k}) if k else dask.config.set({})


# -- 21, 27, 28: dtype, order, values over partitionings and mips -------------------------------
@pytest.mark.parametrize("mip", [0, 1, 2])
@pytest.mark.parametrize("k", PARTITIONINGS)
def test_supervoxels_match_truth(spec, truth, points, mip, k):
    with partitioned(k):
        out = locs_to_supervoxels(points, mip=mip, progress=False, dataset=spec)
    assert out.dtype == np.uint64 and out.shape == (len(points),)
    expected = truth.supervoxel_at_nm(points, mip)
    assert np.array_equal(out, expected)
    assert (expected > 0).sum() > 100 and (expected == 0).sum() > 20  # both kinds present


@pytest.mark.parametrize("k", PARTITIONINGS)
def test_segments_match_truth(spec, truth, points, k):
    with partitioned(k):
        out = locs_to_segments(points, progress=False, dataset=spec)
    assert out.dtype == np.int64 and out.shape == (len(points),)
    assert np.array_equal(out, now_roots(truth, truth.supervoxel_at_nm(points, 0)))


def test_duplicates_and_permutation(spec, truth, points):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(points), 900)  # many duplicates, shuffled
    with partitioned(11):
        out = locs_to_supervoxels(points[idx], progress=False, dataset=spec)
        base = locs_to_supervoxels(points, progress=False, dataset=spec)
    assert np.array_equal(out, base[idx])
    assert np.array_equal(out, truth.supervoxel_at_nm(points[idx], 0))


# -- 22: floor(nm / res) ----------------------------------------------------------------------
@pytest.mark.parametrize("mip", [0, 1, 2])
def test_nm_to_voxel_is_floor(spec, truth, mip):
    res = truth.resolution(mip)
    off, size = truth.bounds(mip)
    vol = truth.volume(mip)
    # voxels whose +x neighbour holds a different non-zero supervoxel: a boundary to probe
    diff = (vol[:-1] != vol[1:]) & (vol[:-1] > 0) & (vol[1:] > 0)
    idx = np.argwhere(diff)[:20] + off
    corner = (idx + [1, 0, 0]) * res + [0, res[1] / 2, res[2] / 2]  # on the boundary plane
    locs = np.concatenate([corner, corner - [1e-6, 0, 0], corner + [res[0] - 1e-6, 0, 0]])
    out = locs_to_supervoxels(locs, mip=mip, progress=False, dataset=spec)
    n = len(idx)
    assert np.array_equal(out[:n], truth.supervoxel_at(idx + [1, 0, 0], mip))   # exact corner
    assert np.array_equal(out[n:2 * n], truth.supervoxel_at(idx, mip))          # just below
    assert np.array_equal(out[2 * n:], truth.supervoxel_at(idx + [1, 0, 0], mip))
    assert not np.array_equal(out[:n], out[n:2 * n])


# -- 23: voxel coordinates are on the 8 x 8 x 42 viewer grid ---------------------------------------
@pytest.mark.parametrize("unit", ["voxel", "voxels", "VOXEL"])
def test_voxel_coordinates_scale_by_viewer_resolution(spec, truth, points, unit):
    vox = points / np.array([8.0, 8.0, 42.0])
    out = locs_to_supervoxels(vox, coordinates=unit, progress=False, dataset=spec)
    assert np.array_equal(out, truth.supervoxel_at_nm(vox * [8, 8, 42], 0))
    seg = locs_to_segments(vox, coordinates=unit, progress=False, dataset=spec)
    assert np.array_equal(seg, now_roots(truth, out))


# -- 24: outside the volume and background give 0 ------------------------------------------------
def test_outside_and_background_are_zero(spec, truth):
    res = truth.resolution(0)
    off, size = truth.bounds(0)
    bg = np.argwhere(truth.volume(0) == 0)[:5] + off
    far = np.array([[-1e9, 0, 0], [0, 0, 0], (off + size) * res, (off - 1) * res, [1e12, 1e12, 1e12]])
    locs = np.concatenate([(bg + 0.5) * res, far])
    assert not locs_to_supervoxels(locs, progress=False, dataset=spec).any()
    assert not locs_to_segments(locs, progress=False, dataset=spec).any()


@pytest.mark.parametrize("mip", [0, 1])
def test_outside_warning_counts_first_row_and_points_at_the_caller(spec, truth, points, mip):
    """The warning is built from the partition plan (keys -1): its count and first row agree with
    the dataset's bounds, and it points at the caller's line, for both eager calls."""
    import warnings as w_

    from crantseg_dask.ops.extent import OutsideVolumeWarning

    res = truth.resolution(mip)
    off, size = truth.bounds(mip)
    vox = np.floor(points / res)
    outside = ~np.all((vox >= off) & (vox < off + size), axis=1)
    assert 0 < outside.sum() < len(points)
    for fn in (locs_to_supervoxels, locs_to_segments):
        if fn is locs_to_segments and mip:
            continue
        with w_.catch_warnings(record=True) as got:
            w_.simplefilter("always")
            fn(points, mip=mip, progress=False, dataset=spec) if mip else fn(points, progress=False, dataset=spec)
        (msg,) = [x for x in got if issubclass(x.category, OutsideVolumeWarning)]
        first = int(np.argmax(outside))
        assert str(msg.message).startswith(f"{int(outside.sum())} of {len(points)} locations lie outside the "
                                           f"volume (x, y, z in nm: first location {first} at ")
        assert msg.filename == __file__


# -- 25: DataFrames ---------------------------------------------------------------------------
def test_dataframe_input(spec, truth, points):
    df = pd.DataFrame({"z": points[:, 2], "id": np.arange(len(points)), "x": points[:, 0],
                       "y": points[:, 1]}, index=np.arange(len(points))[::-1])
    out = locs_to_supervoxels(df, progress=False, dataset=spec)
    assert np.array_equal(out, truth.supervoxel_at_nm(points, 0))
    str_df = df[["x", "y", "z"]].astype(str)  # numeric strings are converted
    assert np.array_equal(locs_to_supervoxels(str_df, progress=False, dataset=spec), out)


@pytest.mark.parametrize("fn", [locs_to_supervoxels, locs_to_segments])
def test_dataframe_missing_column(local_spec, fn):
    with pytest.raises(ValueError, match=re.escape("[x, y, z] columns")):
        fn(pd.DataFrame({"x": [1.0], "y": [2.0]}), progress=False, dataset=local_spec)


# -- 26: empty ----------------------------------------------------------------------------------
def test_empty(spec):
    for empty in ([], np.zeros((0, 3)), pd.DataFrame({"x": [], "y": [], "z": []})):
        a = locs_to_supervoxels(empty, progress=False, dataset=spec)
        b = locs_to_segments(empty, progress=False, dataset=spec)
        assert a.dtype == np.uint64 and a.shape == (0,)
        assert b.dtype == np.int64 and b.shape == (0,)


def test_single_point(spec, truth, points):
    p = points[0]
    assert locs_to_supervoxels(p, progress=False, dataset=spec).tolist() == \
        truth.supervoxel_at_nm(p[None], 0).tolist()


# -- 29: timestamps ------------------------------------------------------------------------------
def test_timestamps(spec, truth, points):
    svs = truth.supervoxel_at_nm(points, 0)
    mat = locs_to_segments(points, timestamp="mat", progress=False, dataset=spec)
    assert np.array_equal(mat, truth.root_of(svs, truth.materialization()).astype(np.int64))
    now = locs_to_segments(points, timestamp=None, progress=False, dataset=spec)
    assert np.array_equal(now, now_roots(truth, svs))
    assert not np.array_equal(mat, now)  # edits after the last materialization are seen
    t = truth.operation_times()[5]
    at = locs_to_segments(points, timestamp=int(t.timestamp()), progress=False, dataset=spec)
    assert np.array_equal(at, truth.root_of(svs, t).astype(np.int64))
    v2 = locs_to_segments(points, timestamp="mat_2", progress=False, dataset=spec)
    assert np.array_equal(v2, truth.root_of(svs, truth.materialization(2)).astype(np.int64))


# -- 30: failed reads raise; bad input raises before any read ----------------------------------------
@pytest.fixture(scope="module")
def broken_spec(tiny_path, tmp_path_factory):
    """A copy of the tiny dataset whose mip-0 chunks are all deleted."""
    path = tmp_path_factory.mktemp("broken") / "tiny"
    shutil.copytree(tiny_path, path)
    for f in (path / "segmentation" / "16_16_42").iterdir():
        f.unlink()
    return SourceSpec(kind="local", name="broken", path=str(path))


def test_failed_read_raises_not_zero(broken_spec, truth, points):
    with pytest.raises(SourceError, match="missing"):
        locs_to_supervoxels(points, progress=False, dataset=broken_spec)
    with pytest.raises(SourceError):
        locs_to_segments(points, progress=False, dataset=broken_spec)
    # mip 1 is intact; points outside the volume need no read
    assert np.array_equal(locs_to_supervoxels(points, mip=1, progress=False, dataset=broken_spec),
                          truth.supervoxel_at_nm(points, 1))
    assert not locs_to_supervoxels([[-1e6, 0, 0]], progress=False, dataset=broken_spec).any()


def test_failed_roots_request_raises_not_zero(tiny_path, cave_home, points):
    """Over the cave source: once every request fails, the call raises after its retries."""
    server = faulty_server(tiny_path)
    try:
        spec = fast_spec(server, retries=2)
        assert locs_to_supervoxels(points[:300], progress=False, dataset=spec).any()  # source is open
        server.state.faults.fail_rate = 1.0
        with pytest.raises(SourceError):
            locs_to_segments(points, progress=False, dataset=spec)
    finally:
        server.stop()


@pytest.mark.parametrize("bad, err, match", [
    ([[1.0, 2.0, np.nan]], InvalidLocationError, "finite"),
    ([[1.0, np.inf, 3.0], [0, 0, 0]], InvalidLocationError, "finite"),
    ([[1.0, 2.0]], InvalidLocationError, "shape"),
    (np.zeros((2, 3, 1)), InvalidLocationError, "shape"),
    ([[1, 2, "a"]], InvalidLocationError, "numbers"),
    (pd.DataFrame({"x": [1], "y": [2], "q": [3]}), InvalidLocationError, "z"),
])
@pytest.mark.parametrize("fn", [locs_to_supervoxels, locs_to_segments])
def test_bad_input_raises_before_any_read(broken_spec, fn, bad, err, match):
    with pytest.raises(err, match=match):
        fn(bad, progress=False, dataset=broken_spec)


def test_bad_units_mip_timestamp(broken_spec):
    with pytest.raises(InvalidInputError, match="not a known unit"):
        locs_to_supervoxels([[0, 0, 0]], coordinates="furlongs", dataset=broken_spec)
    with pytest.raises(InvalidInputError, match="mip"):
        locs_to_supervoxels([[0, 0, 0]], mip=7, dataset=broken_spec)
    with pytest.raises(InvalidInputError, match="timestamp"):
        locs_to_segments([[0, 0, 0]], timestamp="yesterday-ish", dataset=broken_spec)


# -- lazy builders ------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("chunks", [500, 7, 123])
def test_graph_over_dask_blocks(spec, truth, points, chunks, shuffle):
    d = da.from_array(points, chunks=(chunks, 3))
    sv = locs_to_supervoxels_graph(d, mip=1, dataset=spec, shuffle=shuffle, partition_size=50)
    assert isinstance(sv, da.Array) and sv.dtype == np.uint64 and sv.chunks == (d.chunks[0],)
    assert np.array_equal(sv.compute(), truth.supervoxel_at_nm(points, 1))
    seg = locs_to_segments_graph(d, timestamp="mat", dataset=spec, shuffle=shuffle)
    assert np.array_equal(seg.compute(), truth.root_of(truth.supervoxel_at_nm(points, 0),
                                                       truth.materialization()))


def test_shuffle_reads_each_chunk_once(local_spec, truth, points, monkeypatch):
    from crantseg_dask.sources import open_source

    source = open_source(local_spec)
    reads = []
    original = source.read_chunks

    def counting(chunks, mip):  # every chunk read goes through the batch read_chunks
        chunks = [tuple(int(v) for v in c) for c in chunks]
        reads.extend((c, mip) for c in chunks)
        return original(chunks, mip)

    monkeypatch.setattr(source, "read_chunks", counting)
    original_encoded = source.read_encoded_many

    def counting_encoded(chunks, mip):  # random access (few points per chunk) reads encoded bytes
        chunks = [tuple(int(v) for v in c) for c in chunks]
        reads.extend((c, mip) for c in chunks)
        return original_encoded(chunks, mip)

    monkeypatch.setattr(source, "read_encoded_many", counting_encoded)
    rng = np.random.default_rng(0)
    shuffled = points[rng.permutation(len(points))]
    d = da.from_array(shuffled, chunks=(41, 3))  # 13 spatially mixed blocks
    out = locs_to_supervoxels_graph(d, dataset=local_spec, partition_size=100).compute()
    assert np.array_equal(out, truth.supervoxel_at_nm(shuffled, 0))
    assert len(reads) == len(set(reads)) > 20
    reads.clear()
    locs_to_supervoxels_graph(d, dataset=local_spec, shuffle=False).compute()
    assert len(reads) > len(set(reads))  # block by block, chunks are read again


def test_graph_unknown_block_sizes(local_spec, truth, points):
    d = da.from_array(points, chunks=(100, 3))
    d = d[da.from_array(np.ones(len(points), bool), chunks=100)]  # chunks of unknown (nan) length
    assert np.isnan(d.shape[0])
    out = locs_to_segments_graph(d, dataset=local_spec).compute()
    assert np.array_equal(out, truth.root_of(truth.supervoxel_at_nm(points, 0), datetime.now(timezone.utc)))


def test_graph_from_numpy_partitions(local_spec, truth, points):
    g = locs_to_supervoxels_graph(points, dataset=local_spec, partition_size=16)
    n_parts = len(locs_to_supervoxels_graph(points, dataset=local_spec, partition_size=10**6).dask)
    assert len(g.dask) > n_parts  # more partitions, more tasks
    assert np.array_equal(g.compute(), truth.supervoxel_at_nm(points, 0))


def test_graph_nan_in_dask_block_raises(local_spec):
    d = da.from_array(np.array([[0.0, 0, 0], [np.nan, 1, 1]]), chunks=(1, 3))
    with pytest.raises(InvalidLocationError, match="finite"):
        locs_to_supervoxels_graph(d, dataset=local_spec).compute()


# -- 70: a distributed cluster (worker processes) gives the same answers ------------------------------
def test_on_a_process_cluster(local_spec, truth, points):
    distributed = pytest.importorskip("distributed")
    from crantseg_dask.ops.snapping import snap_table

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        with partitioned(60):
            seg = locs_to_segments(points, progress=False, dataset=local_spec)
        lazy = locs_to_supervoxels_graph(da.from_array(points, chunks=(90, 3)), dataset=local_spec).compute()
        svs = truth.supervoxel_at_nm(points, 0)
        roots = now_roots(truth, svs)
        # targets: a NEIGHBOURING root where one is near (else the row's own), so rows really snap
        targets, own = other_targets(truth, points, datetime.now(timezone.utc), seed=1)
        table = pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "z": points[:, 2], "id": targets})
        keep = targets != 0
        with partitioned(70):
            snapped = snap_table(table[keep], progress=False, dataset=local_spec)
    assert np.array_equal(seg, roots)
    assert np.array_equal(lazy, svs)
    xyz, dist, status = SnapTruth(truth).table(points[keep], targets[keep])
    np.testing.assert_array_equal(snapped[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    np.testing.assert_allclose(snapped["distance_nm"].to_numpy(), dist, rtol=1e-12, equal_nan=True)
    assert snapped["status"].astype(str).tolist() == status.tolist()
    assert ((status == "snapped") & (own[keep] != 0) & (own[keep] != targets[keep])).sum() >= 20


def test_shuffle_buckets_balanced_for_clustered_points(local_spec, truth, points, monkeypatch):
    """ceil(N / partition_size) buckets (not one per input block), cut at the data's quantiles:
    points clustered in a corner of the volume still fill every bucket about equally."""
    from crantseg_dask._chunking import chunk_keys, nm_to_voxels
    from crantseg_dask.ops import locations
    from crantseg_dask.sources import open_source

    meta = open_source(local_spec).meta
    keys = chunk_keys(nm_to_voxels(points, meta.resolution[0]), meta.bounds(0), meta.chunk_size[0])
    inside = keys >= 0
    low = inside & (keys <= np.quantile(keys[inside], 0.3))  # the first ~30% of the key space used
    clustered = points[low]
    n, ps = len(clustered), 20
    sizes = []
    real = locations._lookup_bucket
    monkeypatch.setattr(locations, "_lookup_bucket",
                        lambda pieces, *a: (sizes.append(sum(len(r) for r, _ in pieces)), real(pieces, *a))[1])
    d = da.from_array(clustered, chunks=(5, 3))  # many more blocks than buckets
    out = locs_to_supervoxels_graph(d, dataset=local_spec, partition_size=ps).compute()
    assert np.array_equal(out, truth.supervoxel_at_nm(clustered, 0))
    assert len(sizes) == -(-n // ps)
    per_chunk = np.unique(keys[low], return_counts=True)[1].max()
    assert sum(sizes) == n and max(sizes) <= ps + per_chunk and min(sizes) > 0
