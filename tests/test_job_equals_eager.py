"""Every job operation's output equals its eager call on the same rows (issue 14, item 1).

Jobs run the kernels of ``ops/`` on partitions they read from Zarr; the eager functions run the
same kernels through their own planning. The two must agree column by column on rows that
include the edge cases: background, outside the volume, unsnappable rows, stale and non-root
IDs, zeros, repeats. Every operation in ``OPERATIONS`` has a case here, and each case checks that
its edge cases are really in the rows (from the dataset's ground truth), so no comparison is
vacuous. Correctness against the ground truth itself is in ``test_job_options.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.operations import OPERATIONS
from crantseg_dask.persist import read_output, read_ragged

VIEWER = np.array([8.0, 8.0, 42.0])


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def points(truth):
    """Locations on supervoxels (with jitter), on background, just outside and far outside the
    volume, and repeats; ``target_id``: a neighbouring root where one is near, else the root under
    the row, and for a quarter of the rows a root far away (unsnappable within the radius)."""
    from crantseg_dask.dataset.truth_snap import other_targets

    rng = np.random.default_rng(14)
    res = truth.resolution(0)
    off, size = truth.bounds(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 160, replace=False)]
    on = (anchors + rng.random(anchors.shape)) * res + rng.normal(0, 40, anchors.shape) * [1, 1, 0.5]
    vox = rng.integers(off, off + size, size=(4000, 3))
    bg = vox[truth.supervoxel_at(vox) == 0][:20]
    assert len(bg) == 20, "the dataset has background voxels to test"
    outside = np.array([[off[0] - 2, off[1] + size[1] // 2, off[2] + size[2] // 2],
                        [off[0] + size[0] + 1, off[1] + 3, off[2] + 1], [-10_000, 300, 20]])
    locs = np.concatenate([on, (bg + 0.5) * res, (outside + 0.5) * res, on[:5]])
    mat = truth.materialization()
    tgt, own = other_targets(truth, locs, mat, seed=9)
    largest = truth.largest_roots(2, mat)
    tgt[tgt == 0] = int(largest[0])
    far = rng.random(len(tgt)) < 0.25
    tgt[far] = np.where(own[far] == largest[1], largest[0], largest[1])
    return pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "target_id": tgt.astype(np.uint64),
                         "note": "kept"})


def _run(client, tiny_path, tmp_path, op, table, **args):
    out = tmp_path / f"{op}-{len(list(tmp_path.iterdir()))}.zarr"
    run_job(op, table, out, dataset=str(tiny_path), partition_size=37, client=client, progress=False, **args)
    return out, read_output(out)


def _u64(col) -> np.ndarray:
    return np.array([int(v) for v in col], dtype=np.uint64)


# -- the cases, one per operation -----------------------------------------------------------------
def case_locs_to_supervoxels(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import locs_to_supervoxels

    for args in ({}, {"mip": 1}, {"coordinates": "voxel"}):
        table = points.copy()
        if args.get("coordinates") == "voxel":
            table[["x", "y", "z"]] = np.floor(table[["x", "y", "z"]].to_numpy() / VIEWER)
        _, got = _run(client, tiny_path, tmp_path, "locs-to-supervoxels", table, **args)
        want = locs_to_supervoxels(table[["x", "y", "z"]], progress=False, dataset=str(tiny_path), **args)
        np.testing.assert_array_equal(got["supervoxel_id"].to_numpy(), want)
        assert (want == 0).sum() >= 23 and (want != 0).sum() > 100  # background and outside rows are in


def case_locs_to_segments(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import locs_to_segments, locs_to_supervoxels

    for ts in ("mat", truth.operation_times()[1].timestamp() + 0.5):
        _, got = _run(client, tiny_path, tmp_path, "locs-to-segments", points, timestamp=ts)
        xyz = points[["x", "y", "z"]]
        np.testing.assert_array_equal(got["supervoxel_id"].to_numpy(),
                                      locs_to_supervoxels(xyz, progress=False, dataset=str(tiny_path)))
        want = locs_to_segments(xyz, timestamp=ts, progress=False, dataset=str(tiny_path))
        np.testing.assert_array_equal(got["root_id"].to_numpy().astype(np.int64), want)
        assert (want == 0).any() and (want != 0).sum() > 100


def case_snap(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import locs_to_segments, locs_to_supervoxels
    from crantseg_dask.ops.snapping import snap_table

    seen = set()
    for args in ({}, {"snap_zero": True, "search_radius": 60.0}, {"search_radius": 0.0}):
        _, got = _run(client, tiny_path, tmp_path, "snap", points, timestamp="mat", **args)
        want = snap_table(points, id_column="target_id", progress=False, dataset=str(tiny_path),
                          **{k: v for k, v in args.items()})
        cols = ["snapped_x", "snapped_y", "snapped_z"]
        np.testing.assert_array_equal(got[cols].to_numpy(), want[cols].to_numpy())
        np.testing.assert_array_equal(got["distance_nm"].to_numpy(), want["distance_nm"].to_numpy())
        assert got["status"].astype(str).tolist() == want["status"].astype(str).tolist()
        snapped = want[cols].to_numpy()
        np.testing.assert_array_equal(got["supervoxel_id"].to_numpy(),
                                      locs_to_supervoxels(snapped, progress=False, dataset=str(tiny_path)))
        np.testing.assert_array_equal(got["root_id"].to_numpy().astype(np.int64),
                                      locs_to_segments(snapped, timestamp="mat", progress=False,
                                                       dataset=str(tiny_path)))
        seen |= set(want["status"].astype(str))
    assert {"on_target", "snapped", "not_found", "background_skipped", "out_of_bounds"} <= seen, seen


def case_update_ids(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import update_ids
    from crantseg_dask.ops.updates import update_cache

    t = truth.operation_times()[-1]
    stale = [int(r) for r in truth.all_roots if not truth.is_latest(r, t)]
    current = sorted(truth.roots_at(t))
    assert len(stale) >= 6
    roots = np.array(stale + current[:20] + [0, stale[0], int(truth.supervoxels[5])], dtype=np.uint64)
    sv = np.zeros(len(roots), np.uint64)
    sv[: len(stale) // 2] = [truth.leaves(r)[0] for r in stale[: len(stale) // 2]]  # half the stale rows have one
    table = pd.DataFrame({"root_id": roots, "supervoxel_id": sv})
    for args in ({}, {"stop_layer": 1}):
        for frame in (table, table[["root_id"]]):
            _, got = _run(client, tiny_path, tmp_path, "update-ids", frame, timestamp=t, **args)
            update_cache.clear()
            want = update_ids(frame, timestamp=t, progress=False, dataset=str(tiny_path), **args)
            np.testing.assert_array_equal(got["new_id"].to_numpy(), _u64(want["new_id"]))
            np.testing.assert_array_equal(got["confidence"].to_numpy(), want["confidence"].to_numpy())
            np.testing.assert_array_equal(got["changed"].to_numpy(), want["changed"].to_numpy())
            conf = want["confidence"].to_numpy()
            assert ((conf > 0) & (conf < 1)).any() and (conf == 0).any() and want["changed"].any()


def case_get_voxels(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import get_voxels

    t = truth.operation_times()[-1]
    stale = [int(r) for r in truth.all_roots if not truth.is_latest(r, t)][:2]
    thin = [r for r in truth.largest_roots(40) if len(truth.interface_voxels(r, 2))][:2]
    assert stale and thin
    roots = [*stale, *thin, int(truth.largest_roots(1)[0])]
    for args in ({"mip": 2}, {"mip": 2, "thin": True}, {"mip": 1}):
        out, got = _run(client, tiny_path, tmp_path, "get-voxels", pd.DataFrame({"root_id": roots}), **args)
        voxels, svids = read_ragged(out, "voxels"), read_ragged(out, "svids")
        for row, root in enumerate(roots):
            v, s = get_voxels(root, sv_map=True, progress=False, dataset=str(tiny_path), **args)
            assert len(v) > 0
            np.testing.assert_array_equal(voxels[row], v)
            np.testing.assert_array_equal(svids[row], s)
            assert got["n_voxels"][row] == len(v)


def case_supervoxels_to_roots(client, truth, tiny_path, tmp_path, points):
    from crantseg_dask import supervoxels_to_roots

    rng = np.random.default_rng(2)
    svs = np.concatenate([rng.choice(truth.supervoxels, 200), [0, 0], truth.supervoxels[:3]]).astype(np.uint64)
    table = pd.DataFrame({"supervoxel_id": svs})
    for ts, args in (("mat", {}), (truth.operation_times()[0].timestamp() + 0.5, {}), ("mat", {"stop_layer": 2})):
        _, got = _run(client, tiny_path, tmp_path, "supervoxels-to-roots", table, timestamp=ts, **args)
        want = supervoxels_to_roots(svs, timestamp=ts, progress=False, dataset=str(tiny_path), **args)
        np.testing.assert_array_equal(got["root_id"].to_numpy(), np.asarray(want).astype(np.uint64))
        assert (np.asarray(want)[-5:-3] == 0).all() and (np.asarray(want) != 0).sum() > 150


CASES = {"locs-to-supervoxels": case_locs_to_supervoxels, "locs-to-segments": case_locs_to_segments,
         "snap": case_snap, "update-ids": case_update_ids, "get-voxels": case_get_voxels,
         "supervoxels-to-roots": case_supervoxels_to_roots}


def test_every_job_operation_has_a_case():
    assert set(CASES) == set(OPERATIONS)


@pytest.mark.parametrize("op", sorted(CASES))
def test_job_output_equals_the_eager_call(op, client, truth, tiny_path, tmp_path, points):
    CASES[op](client, truth, tiny_path, tmp_path, points)
