"""snap_to_id / snap_table: checklist items 63-68 against a brute-force search over the truth volume."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from crantseg_dask.dataset.truth_snap import SnapTruth
from crantseg_dask.errors import InvalidIDError, InvalidInputError, InvalidLocationError
from crantseg_dask.ops.locations import locs_to_segments, locs_to_supervoxels
from crantseg_dask.ops.snapping import snap_table, snap_table_graph, snap_to_id
from crantseg_dask.sources import open_source

R = 160.0


# -- brute force: the snapping oracle (crantseg_dask.dataset.truth_snap) ----------------------------
@lru_cache(maxsize=None)
def _oracle(truth):
    return SnapTruth(truth)


def brute(truth, locs, targets, snap_zero=False, r=R, erode=True):
    """Expected (xyz, status, distance) per row, by exhaustive search of the truth volume."""
    xyz, dist, status = _oracle(truth).table(locs, targets, snap_zero, r, erode)
    return xyz, status.astype(str), dist


def largest_roots(truth, n):
    """The ``n`` roots alive now with the most mip-0 voxels, smallest first (brute force)."""
    return truth.largest_roots(n)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def targets(truth):
    """The two largest roots alive now."""
    return largest_roots(truth, 2)


@pytest.fixture(scope="module")
def near(truth, targets):
    """Locations jittered around the target's voxels (on, near, far), plus out-of-volume points."""
    rng = np.random.default_rng(11)
    res = truth.resolution(0)
    vox = truth.voxels_of(targets[-1])
    p = (vox[rng.choice(len(vox), 150)] + rng.random((150, 3))) * res + rng.normal(0, 120, (150, 3))
    off, size = truth.bounds(0)
    edge = (np.array([off[0], off[1] + size[1] // 2, off[2] + size[2] // 2]) - [3, 0, 0]) * res
    return np.concatenate([p, edge[None], [[-1e6, -1e6, -1e6]]])


# -- 63, 65, 66, 67: values against brute force, over partitionings ----------------------------
@pytest.mark.parametrize("k", [None, 2, 29])
@pytest.mark.parametrize("snap_zero", [False, True])
def test_snap_matches_brute_force(spec, truth, targets, near, k, snap_zero):
    target = targets[-1]
    before = near.copy()
    with dask.config.set({"crantseg.partition-size": k} if k else {}):
        out = snap_to_id(near, target, snap_zero=snap_zero, verbose=False, dataset=spec)
    assert np.array_equal(near, before)                      # 63: input untouched
    assert out.dtype == np.float64 and out.shape == near.shape
    xyz, status, _ = brute(truth, near, [target] * len(near), snap_zero)
    assert np.array_equal(out, xyz)
    assert set(status) >= {"on_target", "snapped", "not_found"}
    moved = status == "snapped"
    assert moved.sum() >= 5
    res = truth.resolution(0)
    assert np.array_equal(out[moved] / res, np.round(out[moved] / res))   # 66: mip-0 grid corner
    seg = locs_to_segments(out[moved], progress=False, dataset=spec)
    assert (seg == target).all()                                          # 66: maps back to id
    kept = status != "snapped"
    assert np.array_equal(out[kept], near[kept])                          # 64, 65, 67
    if not snap_zero:
        assert (status == "background_skipped").any()


def test_supervoxel_target_and_no_erosion(spec, truth, targets, near):
    sv = int(truth.leaves(targets[-1])[len(truth.leaves(targets[-1])) // 2])
    out = snap_to_id(near, sv, search_radius=400, verbose=False, dataset=spec, erode=False)
    xyz, status, _ = brute(truth, near, [sv] * len(near), r=400, erode=False)
    assert np.array_equal(out, xyz)
    assert (locs_to_supervoxels(out[status == "snapped"], progress=False, dataset=spec) == sv).all()


def test_voxel_input_returns_nm(spec, truth, targets, near):
    vox = near / [8, 8, 42]
    out = snap_to_id(vox, targets[-1], coordinates="voxel", verbose=False, dataset=spec)
    xyz, _, _ = brute(truth, vox * [8, 8, 42], [targets[-1]] * len(vox))
    assert np.array_equal(out, xyz)


def test_tiny_radius_and_far_points_keep_coordinates(spec, truth, targets, near):
    out = snap_to_id(near, targets[-1], search_radius=0, snap_zero=True, verbose=False, dataset=spec)
    xyz, status, _ = brute(truth, near, [targets[-1]] * len(near), True, r=0)
    assert np.array_equal(out, xyz)
    assert np.array_equal(out[status != "on_target"], near[status != "on_target"])


# -- 64, 68: messages ---------------------------------------------------------------------------
def test_messages(spec, truth, targets, near, capsys):
    out = snap_to_id(near, targets[-1], verbose=True, dataset=spec)
    _, status, _ = brute(truth, near, [targets[-1]] * len(near))
    k = int(np.isin(status, ["snapped", "not_found"]).sum())
    m = int((status == "not_found").sum())
    text = capsys.readouterr().out
    assert f"{k} of {len(near)} locations needed to be snapped" in text
    assert f"Of these {m} locations could not be snapped" in text
    on = near[status == "on_target"]
    again = snap_to_id(on, targets[-1], verbose=True, dataset=spec)
    assert np.array_equal(again, on)
    assert "All locations already on the correct segment!" in capsys.readouterr().out
    snap_to_id(near, targets[-1], verbose=False, dataset=spec)
    assert capsys.readouterr().out == ""
    assert out.shape == near.shape


# -- the table form -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(truth, targets, near):
    rng = np.random.default_rng(5)
    tgt = np.array(targets, dtype=np.uint64)[rng.integers(0, 2, len(near))]
    df = pd.DataFrame({"x": near[:, 0], "y": near[:, 1], "z": near[:, 2], "root": tgt,
                       "keep": np.arange(len(near))}, index=np.arange(len(near)) * 10 + 3)
    return df


@pytest.mark.parametrize("k", [None, 4, 33])
def test_snap_table(spec, truth, table, k):
    with dask.config.set({"crantseg.partition-size": k} if k else {}):
        out = snap_table(table, id_column="root", progress=False, dataset=spec)
    locs = table[["x", "y", "z"]].to_numpy()
    xyz, status, dist = brute(truth, locs, table["root"].to_numpy())
    assert out.index.equals(table.index)
    assert list(out.columns) == ["snapped_x", "snapped_y", "snapped_z", "distance_nm", "status"]
    assert np.array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    assert out["status"].astype(str).tolist() == status.tolist()
    np.testing.assert_allclose(out["distance_nm"].to_numpy(), dist, equal_nan=True)
    assert (out["distance_nm"].dropna() <= R).all()


def test_snap_table_graph_over_dask_partitions(spec, truth, table):
    ddf = dd.from_pandas(table, npartitions=5)
    lazy = snap_table_graph(ddf, id_column="root", dataset=spec)
    out = lazy.compute()
    xyz, status, _ = brute(truth, table[["x", "y", "z"]].to_numpy(), table["root"].to_numpy())
    assert out.index.equals(table.index)
    assert np.array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    assert out["status"].astype(str).tolist() == status.tolist()


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input(local_spec, targets, near, table):
    t = targets[-1]
    with pytest.raises(InvalidLocationError, match="finite"):
        snap_to_id([[0, 0, np.nan]], t, dataset=local_spec)
    with pytest.raises(InvalidLocationError, match="shape"):
        snap_to_id([[0, 0]], t, dataset=local_spec)
    with pytest.raises(InvalidInputError, match="unit"):
        snap_to_id(near, t, coordinates="parsecs", dataset=local_spec)
    with pytest.raises(InvalidInputError, match="search_radius"):
        snap_to_id(near, t, search_radius=-5, dataset=local_spec)
    with pytest.raises(InvalidIDError, match="exactly one"):
        snap_to_id(near, [t, t], dataset=local_spec)
    with pytest.raises(InvalidIDError):
        snap_to_id(near, 0, dataset=local_spec)
    with pytest.raises(KeyError):
        snap_to_id(near, (8 << 56) + 999_999, dataset=local_spec)
    with pytest.raises(InvalidInputError, match=re.escape("['root2']")):
        snap_table(table, id_column="root2", dataset=local_spec)
    with pytest.raises(InvalidIDError, match="non-zero"):
        snap_table(table.assign(root=0), id_column="root", dataset=local_spec)


def test_empty(local_spec, targets):
    out = snap_to_id(np.zeros((0, 3)), targets[-1], verbose=False, dataset=local_spec)
    assert out.shape == (0, 3) and out.dtype == np.float64
    df = snap_table(pd.DataFrame({"x": [], "y": [], "z": [], "id": []}).astype({"id": np.uint64}),
                    "id", progress=False, dataset=local_spec)
    assert len(df) == 0 and "status" in df


# -- timeless targets and the lazy array builder ------------------------------------------------------
def test_root_created_after_last_materialization(spec, truth):
    """crantpy searches cutouts with roots at the last materialization, so a newer root never snaps."""
    now = datetime.now(timezone.utc)
    mat = truth.materialization()
    fresh = [r for r in truth.roots_at(now) if truth.created(r) > mat]
    root = max(fresh, key=lambda r: len(truth.leaves(r)))
    rng = np.random.default_rng(4)
    vox = truth.voxels_of(root)
    locs = (vox[rng.choice(len(vox), 60)] + 0.5) * truth.resolution(0) + rng.normal(0, 60, (60, 3))
    out = snap_to_id(locs, root, verbose=False, dataset=spec)
    xyz, status, _ = brute(truth, locs, [root] * len(locs))
    assert np.array_equal(out, xyz) and (status == "snapped").any()
    assert (locs_to_segments(out[status == "snapped"], progress=False, dataset=spec) == root).all()


def test_outdated_root_uses_its_leaves(spec, truth):
    old = next(r for r in truth.all_roots.tolist() if truth.superseded(r) is not None
               and len(truth.leaves(r)) > 20)
    rng = np.random.default_rng(8)
    vox = truth.voxels_of(old)
    locs = (vox[rng.choice(len(vox), 40)] + 0.5) * truth.resolution(0) + rng.normal(0, 60, (40, 3))
    out = snap_to_id(locs, old, verbose=False, dataset=spec)
    xyz, status, _ = brute(truth, locs, [old] * len(locs))
    assert np.array_equal(out, xyz)
    moved = np.isin(status, ["snapped", "on_target"])
    svs = locs_to_supervoxels(out[moved], progress=False, dataset=spec)
    assert np.isin(svs, truth.leaves(old)).all()


@pytest.mark.parametrize("chunks", [7, 200])
def test_snap_to_id_graph(spec, truth, targets, near, chunks):
    import dask.array as da

    from crantseg_dask.ops.snapping import snap_to_id_graph

    lazy = snap_to_id_graph(da.from_array(near, chunks=(chunks, 3)), targets[-1], dataset=spec)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float64
    xyz, _, _ = brute(truth, near, [targets[-1]] * len(near))
    assert np.array_equal(lazy.compute(), xyz)


def test_snap_table_voxel_columns(local_spec, truth, table):
    vox = table.assign(x=table.x / 8, y=table.y / 8, z=table.z / 42).rename(
        columns={"x": "px", "y": "py", "z": "pz"})
    out = snap_table(vox, id_column="root", coordinates="voxel", columns=("px", "py", "pz"),
                     progress=False, dataset=local_spec)
    locs = vox[["px", "py", "pz"]].to_numpy() * [8, 8, 42]
    xyz, status, _ = brute(truth, locs, table["root"].to_numpy())
    assert np.array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    lazy = snap_table_graph(dd.from_pandas(vox, npartitions=3), id_column="root", coordinates="voxel",
                            columns=("px", "py", "pz"), dataset=local_spec).compute()
    assert lazy.equals(out)


def test_snap_table_graph_bad_input(local_spec, table):
    with pytest.raises(InvalidInputError, match="root2"):
        snap_table_graph(dd.from_pandas(table, npartitions=2), id_column="root2", dataset=local_spec)
    bad = dd.from_pandas(table.assign(x=np.where(table.keep == 3, np.nan, table.x)), npartitions=2)
    with pytest.raises(InvalidLocationError, match="finite"):
        snap_table_graph(bad, id_column="root", dataset=local_spec).compute()
    floats = dd.from_pandas(table.assign(root=table.root.astype(np.float64)), npartitions=2)
    with pytest.raises(InvalidIDError, match="dtype float64"):
        snap_table_graph(floats, id_column="root", dataset=local_spec)
    for value in (-1, 0):
        neg = dd.from_pandas(table.assign(root=np.where(table.keep == 3, value, table.root.astype(np.int64))),
                             npartitions=2)
        with pytest.raises(InvalidIDError):
            snap_table_graph(neg, id_column="root", dataset=local_spec).compute()


def test_tree_neuron_input(local_spec, truth, targets, near):
    navis = pytest.importorskip("navis")  # the real package (test extra)
    n = navis.TreeNeuron(pd.DataFrame({"node_id": np.arange(1, len(near) + 1), "parent_id": np.arange(len(near)) - 0,
                                       "x": near[:, 0], "y": near[:, 1], "z": near[:, 2]}).assign(
        parent_id=lambda d: np.where(d.node_id == 1, -1, d.node_id - 1)), id=1)
    out = snap_to_id(n, targets[-1], verbose=False, dataset=local_spec)
    xyz, _, _ = brute(truth, near, [targets[-1]] * len(near))
    np.testing.assert_array_equal(out, xyz)


# -- exact ties: more than 8 candidate centres equally near -----------------------------------
def _brute_nearest(points, cand, res, r):
    c = (cand + 0.5) * res
    out = []
    for p in points:
        d = c - p
        d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        d2 = np.where(d2 <= r * r, d2, np.inf)
        out.append(int(np.argmin(d2)) if np.isfinite(d2.min()) else -1)
    return np.array(out)


@pytest.mark.parametrize("res", [(16.0, 16.0, 42.0), (16.0, 16.0, 16.0)])
def test_nearest_many_many_exact_ties(res):
    """A hollow shell of candidates around a voxel centre / corner / edge midpoint leaves up to 48
    centres exactly equally near: the first in x, y, z order must win, as in a brute-force scan."""
    from crantseg_dask.ops._snap_nearest import _nearest_many

    res = np.array(res)
    g = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), -1).reshape(-1, 3)  # lexicographic
    for centre in ([6, 6, 6], [6.5, 6.5, 6], [6.5, 6.5, 6.5], [6, 6.5, 6]):
        d = (g - np.array(centre)) * res
        d2 = (d * d).sum(axis=1)
        p = ((np.array(centre) + 0.5) * res)[None]
        for h in np.unique(d2)[1:6]:
            cand = g[d2 >= h]
            j, best = _nearest_many(p, cand, res, 200.0)
            assert j.tolist() == _brute_nearest(p, cand, res, 200.0).tolist(), (centre, h)
            assert best[0] == h


@pytest.mark.parametrize("k", [None, 3])
def test_snap_on_grid_symmetry_positions(spec, truth, targets, k):
    """Points exactly on voxel corners and centres just outside the target blob."""
    target = targets[-1]
    res = truth.resolution(0)
    vox = truth.voxels_of(target)
    rng = np.random.default_rng(3)
    base = vox[rng.choice(len(vox), 40)]
    shifts = np.array([[3, 0, 0], [0, -3, 0], [-2, 2, 0], [0, 0, 1]])
    pts = np.concatenate([(base + s + h) * res for s in shifts for h in (0.0, 0.5)])
    with dask.config.set({"crantseg.partition-size": k} if k else {}):
        out = snap_to_id(pts, target, snap_zero=True, verbose=False, dataset=spec)
    xyz, _, _ = brute(truth, pts, [target] * len(pts), True)
    assert np.array_equal(out, xyz)


def test_snap_to_id_graph_bad_shape(local_spec, targets):
    import dask.array as da

    from crantseg_dask.ops.snapping import snap_to_id_graph

    for shape in ((4, 2), (4,), (2, 3, 1)):
        with pytest.raises(InvalidLocationError, match="shape"):
            snap_to_id_graph(da.zeros(shape, chunks=2), targets[-1], dataset=local_spec)
    bad = da.from_array(np.array([[0.0, 0.0, np.nan]]), chunks=1)
    with pytest.raises(InvalidLocationError, match="finite"):
        snap_to_id_graph(bad, targets[-1], dataset=local_spec).compute()


def test_search_radius_limit(local_spec, truth, targets, near, table):
    """Radii beyond 4 mip-0 storage chunks (smallest axis, in nm) are refused before any read."""
    import dask.array as da

    from crantseg_dask.ops._snap_kernel import snap_kernel
    from crantseg_dask.ops.snapping import snap_to_id_graph

    meta = open_source(local_spec).meta
    limit = 4 * float(np.min(np.array(meta.chunk_size[0]) * np.array(meta.resolution[0])))
    t = targets[-1]
    calls = [lambda r: snap_to_id(near, t, search_radius=r, verbose=False, dataset=local_spec),
             lambda r: snap_table(table, id_column="root", search_radius=r, progress=False, dataset=local_spec),
             lambda r: snap_to_id_graph(da.from_array(near, chunks=(50, 3)), t, search_radius=r, dataset=local_spec),
             lambda r: snap_table_graph(dd.from_pandas(table, npartitions=2), id_column="root",
                                        search_radius=r, dataset=local_spec),
             lambda r: snap_kernel(near[:3], np.full(3, t, np.uint64), local_spec, False, r)]
    for call in calls:
        with pytest.raises(InvalidInputError, match=f"limit of {limit:g} nm"):
            call(limit * 1.01)
    out = snap_to_id(near, t, search_radius=limit, snap_zero=True, verbose=False, dataset=local_spec)
    xyz, _, _ = brute(truth, near, [t] * len(near), True, r=limit)
    assert np.array_equal(out, xyz)


# -- rows whose target is another neuron than the one under them --------------------------------------
@pytest.fixture(scope="module")
def crossed(truth):
    """Locations on and around many neurons, each with a target that is a NEIGHBOURING root (not the
    one under it) where one is near, plus a few supervoxel targets."""
    from crantseg_dask.dataset.truth_snap import other_targets

    rng = np.random.default_rng(21)
    res = truth.resolution(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 160, replace=False)]
    locs = (anchors + rng.random(anchors.shape)) * res + rng.normal(0, 40, anchors.shape) * [1, 1, 0.5]
    # the world is dense inside the tissue: add rows on background voxels at the tissue's edge
    vol, off = truth.volume(0), np.asarray(truth.bounds(0)[0])
    fg = vol != 0
    edge = ~fg & (np.roll(fg, 1, 0) | np.roll(fg, -1, 0) | np.roll(fg, 1, 1) | np.roll(fg, -1, 1))
    edge_vox = np.argwhere(edge[2:-2, 2:-2, 1:-1]) + [2, 2, 1]
    edge_vox = edge_vox[rng.choice(len(edge_vox), 24, replace=False)]
    locs = np.concatenate([locs, (off + edge_vox + 0.5) * res])
    now = datetime.now(timezone.utc)
    tgt, own = other_targets(truth, locs, now, seed=2)
    keep = tgt != 0
    locs, tgt, own = locs[keep], tgt[keep], own[keep]
    sv_rows = rng.choice(len(locs), 12, replace=False)  # a supervoxel target: one leaf of the root
    for i in sv_rows:
        tgt[i] = rng.choice(truth.leaves(int(tgt[i])))
    return pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "target": tgt, "own": own})


@pytest.mark.parametrize("snap_zero", [False, True])
def test_snap_table_to_other_neurons_matches_oracle(spec, truth, crossed, snap_zero):
    out = snap_table(crossed, id_column="target", snap_zero=snap_zero, progress=False, dataset=spec)
    locs = crossed[["x", "y", "z"]].to_numpy()
    xyz, status, dist = brute(truth, locs, crossed["target"].to_numpy(), snap_zero)
    got = out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy()
    np.testing.assert_array_equal(got, xyz)
    assert out["status"].astype(str).tolist() == status.tolist()
    np.testing.assert_allclose(out["distance_nm"].to_numpy(), dist, rtol=1e-12, equal_nan=True)
    snapped = status == "snapped"
    other = snapped & (crossed["own"].to_numpy() != 0) & (crossed["own"].to_numpy() != crossed["target"].to_numpy())
    assert other.sum() >= 30 and not np.array_equal(got[other], locs[other])  # it really moved rows
    if snap_zero:
        assert (snapped & (crossed["own"].to_numpy() == 0)).sum() >= 5   # background rows snapped too
    else:
        assert (status == "background_skipped").sum() >= 5
    # the lookup at the snapped point: the oracle's supervoxel, one of the target's
    sv, _ = _oracle(truth).lookup(xyz[snapped], datetime.now(timezone.utc))
    got_sv = locs_to_supervoxels(got[snapped], progress=False, dataset=spec)
    np.testing.assert_array_equal(got_sv, sv)
    tg = crossed["target"].to_numpy()[snapped]
    assert all(s in _oracle(truth).members(int(t)) for s, t in zip(sv.tolist(), tg.tolist()))


def test_erode_false_on_a_root_target(spec, truth, crossed):
    locs, tg = crossed[["x", "y", "z"]].to_numpy(), crossed["target"].to_numpy()
    roots = truth.layout.layer(tg) == truth.layout.n_layers
    locs, tg = locs[roots], tg[roots]
    out = snap_table(pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "t": tg}), id_column="t",
                     erode=False, progress=False, dataset=spec)
    xyz, status, dist = brute(truth, locs, tg, erode=False)
    np.testing.assert_array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    assert out["status"].astype(str).tolist() == status.tolist()
    np.testing.assert_allclose(out["distance_nm"].to_numpy(), dist, rtol=1e-12, equal_nan=True)
    eroded, _, _ = brute(truth, locs, tg)
    assert (xyz != eroded).any(axis=1).sum() >= 5  # the flag matters on these rows


def test_snap_caches_evict_and_answers_stay_right(local_spec, truth, crossed, monkeypatch):
    """With byte budgets of almost nothing, the leaves cache and the per-task chunk cache keep at
    most one entry (least recently used out), and every answer still matches the oracle."""
    from crantseg_dask.ops import _snap_kernel as k

    monkeypatch.setattr(k, "_LEAVES_BUDGET", 1)
    monkeypatch.setattr(k, "_LEAVES", __import__("collections").OrderedDict())
    monkeypatch.setattr(k, "_leaves_bytes", 0)
    sizes = []
    if hasattr(k, "_SparseChunks"):
        init = k._SparseChunks.__init__
        chunk = k._SparseChunks.chunk

        def tiny_init(self, source, budget_bytes=1):
            init(self, source, budget_bytes=1)

        def watched(self, c):
            out = chunk(self, c)
            sizes.append(len(self._lru))
            return out

        monkeypatch.setattr(k._SparseChunks, "__init__", tiny_init)
        monkeypatch.setattr(k._SparseChunks, "chunk", watched)
    with dask.config.set(scheduler="sync"):
        out = snap_table(crossed, id_column="target", snap_zero=True, progress=False, dataset=local_spec)
    xyz, status, _ = brute(truth, crossed[["x", "y", "z"]].to_numpy(), crossed["target"].to_numpy(), True)
    np.testing.assert_array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    assert out["status"].astype(str).tolist() == status.tolist()
    assert len(k._LEAVES) == 1 and len(np.unique(crossed["target"])) > 1
    if hasattr(k, "_SparseChunks"):
        assert sizes and max(sizes) == 1
