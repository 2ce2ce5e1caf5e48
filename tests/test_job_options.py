"""Every job operation and every ``crantseg run`` option, actually run and compared with the truth.

Expected values come from ``Truth`` (the stored volume, the replayed edit log) and the snapping
oracle ``SnapTruth`` (exhaustive search in the ball), never from the engine. Each option is run
where dropping its effect changes the answer (checked on the truth side), so a job that ignored
it would fail. The CLI runs connect to this module's cluster with ``--scheduler``.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from crantseg_dask.cli import main
from crantseg_dask.dataset.truth_snap import SnapTruth, other_targets
from crantseg_dask.errors import InvalidInputError
from crantseg_dask.jobs import run_job
from crantseg_dask.persist import read_output, read_ragged

VIEWER = np.array([8.0, 8.0, 42.0])


@pytest.fixture(scope="module")
def client():
    """A user's own plain-TCP cluster, as ``--scheduler tcp://...`` reaches one (the TLS of
    ``make_client``'s own cluster keeps its address closed to other processes: issue 17)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, protocol="tcp") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def oracle(truth):
    return SnapTruth(truth)


@pytest.fixture(scope="module")
def rows(truth):
    """Locations around supervoxel anchors, on background and outside the volume; ``target_id`` is a
    neighbouring root (at the latest materialization) where one is near, else the root under it;
    ``decoy`` is the root under each row (a wrong column to read targets from)."""
    rng = np.random.default_rng(31)
    res = truth.resolution(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 240, replace=False)]
    locs = (anchors + rng.random(anchors.shape)) * res + rng.normal(0, 50, anchors.shape) * [1, 1, 0.5]
    off, size = truth.bounds(0)
    edge = (np.array([off[0] - 2, off[1] + size[1] // 2, off[2] + size[2] // 2]) + 0.5) * res
    locs = np.concatenate([locs, edge[None], [[-1e5, 5e3, 800.0]]])
    mat = truth.materialization()
    tgt, own = other_targets(truth, locs, mat, seed=4)
    fallback = int(truth.largest_roots(1, mat)[0])
    tgt[tgt == 0] = fallback  # background / outside rows: a real target anyway
    return pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "target_id": tgt,
                         "decoy": np.where(own != 0, own, fallback).astype(np.uint64), "own": own})


def _check_snap(result, table, oracle, truth, locs_nm, targets, r=160.0, snap_zero=False):
    """Every output column of a snap job against the oracle; returns the oracle's statuses."""
    xyz, dist, status = oracle.table(locs_nm, targets, snap_zero, r)
    np.testing.assert_array_equal(result[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    np.testing.assert_allclose(result["distance_nm"].to_numpy(), dist, rtol=1e-12, equal_nan=True)
    assert result["status"].astype(str).tolist() == status.tolist()
    sv, root = oracle.lookup(xyz, truth.materialization())
    np.testing.assert_array_equal(result["supervoxel_id"].to_numpy(), sv)
    np.testing.assert_array_equal(result["root_id"].to_numpy(), root)
    return status


def _cli(client, *args) -> int:
    return main(["run", *args, "--scheduler", client.scheduler.address, "--no-progress"])


def test_snap_job_snaps_rows_onto_other_neurons(client, truth, oracle, rows, tiny_path, tmp_path):
    run_job("snap", rows, tmp_path / "s.zarr", dataset=str(tiny_path), timestamp="mat", partition_size=37,
            client=client, progress=False)
    result = read_output(tmp_path / "s.zarr")
    locs, tgt = rows[["x", "y", "z"]].to_numpy(), rows["target_id"].to_numpy()
    status = _check_snap(result, rows, oracle, truth, locs, tgt)
    own = rows["own"].to_numpy()
    moved = (status == "snapped") & (own != 0) & (own != tgt)
    assert moved.sum() >= 40  # rows moved off their own neuron onto the target
    assert (result["root_id"].to_numpy()[moved] == tgt[moved]).mean() > 0.9
    assert {"on_target", "background_skipped", "out_of_bounds"} <= set(status)


def test_snap_job_snap_zero(client, truth, oracle, rows, tiny_path, tmp_path):
    run_job("snap", rows, tmp_path / "z.zarr", dataset=str(tiny_path), timestamp="mat", snap_zero=True,
            client=client, progress=False)
    status = _check_snap(read_output(tmp_path / "z.zarr"), rows, oracle, truth, rows[["x", "y", "z"]].to_numpy(),
                         rows["target_id"].to_numpy(), snap_zero=True)
    assert ((status == "snapped") & (rows["own"].to_numpy() == 0)).sum() >= 5


def test_cli_snap_id_column_search_radius_and_voxel_coordinates(client, truth, oracle, rows, tiny_path, tmp_path):
    """--id-column pre (the decoy ``target_id`` would give other answers), --search-radius 64 (160
    would too) and --coordinates voxel (nm would too)."""
    vox = rows[["x", "y", "z"]].to_numpy() / VIEWER
    table = pd.DataFrame({"x": vox[:, 0], "y": vox[:, 1], "z": vox[:, 2], "pre": rows["target_id"],
                          "target_id": rows["decoy"]})
    table.to_parquet(tmp_path / "in.parquet")
    assert _cli(client, "snap", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.zarr"),
                "--dataset", str(tiny_path), "--timestamp", "mat", "--id-column", "pre", "--search-radius", "64",
                "--coordinates", "voxel") == 0
    locs = vox * VIEWER
    tgt = rows["target_id"].to_numpy()
    want = oracle.table(locs, tgt, False, 64.0)
    _check_snap(read_output(tmp_path / "o.zarr"), table, oracle, truth, locs, tgt, r=64.0)
    for other in (oracle.table(locs, tgt, False, 160.0), oracle.table(locs, rows["decoy"].to_numpy(), False, 64.0),
                  oracle.table(vox, tgt, False, 64.0)):
        assert not np.array_equal(other[0], want[0])  # each option changes the answer


@pytest.mark.parametrize("mip", [1, 2])
def test_cli_locs_to_supervoxels_mip_and_voxel_coordinates(client, truth, rows, tiny_path, tmp_path, mip):
    vox = rows[["x", "y", "z"]].to_numpy() / VIEWER
    pd.DataFrame({"x": vox[:, 0], "y": vox[:, 1], "z": vox[:, 2]}).to_parquet(tmp_path / "in.parquet")
    assert _cli(client, "locs-to-supervoxels", "--input", str(tmp_path / "in.parquet"), "--output",
                str(tmp_path / "o.zarr"), "--dataset", str(tiny_path), "--mip", str(mip),
                "--coordinates", "voxel", "--partition-size", "50") == 0
    got = read_output(tmp_path / "o.zarr")["supervoxel_id"].to_numpy()
    want = truth.supervoxel_at_nm(vox * VIEWER, mip)
    np.testing.assert_array_equal(got, want)
    assert (want != truth.supervoxel_at_nm(vox * VIEWER, 0)).sum() >= 5   # the mip matters here
    assert (want != truth.supervoxel_at_nm(vox, mip)).sum() >= 5           # and so do the units


def test_locs_to_supervoxels_job_default_mip(client, truth, rows, tiny_path, tmp_path):
    run_job("locs-to-supervoxels", rows, tmp_path / "o.zarr", dataset=str(tiny_path), client=client,
            progress=False)
    np.testing.assert_array_equal(read_output(tmp_path / "o.zarr")["supervoxel_id"].to_numpy(),
                                  truth.supervoxel_at_nm(rows[["x", "y", "z"]].to_numpy(), 0))


def test_cli_locs_to_segments_voxel_coordinates(client, truth, rows, tiny_path, tmp_path):
    vox = rows[["x", "y", "z"]].to_numpy() / VIEWER
    pd.DataFrame({"x": vox[:, 0], "y": vox[:, 1], "z": vox[:, 2]}).to_csv(tmp_path / "in.csv", index=False)
    assert _cli(client, "locs-to-segments", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.zarr"),
                "--dataset", str(tiny_path), "--timestamp", "mat", "--coordinates", "voxel") == 0
    sv = truth.supervoxel_at_nm(vox * VIEWER, 0)
    got = read_output(tmp_path / "o.zarr")
    np.testing.assert_array_equal(got["supervoxel_id"].to_numpy(), sv)
    np.testing.assert_array_equal(got["root_id"].to_numpy(), truth.root_of(sv, truth.materialization()))


def test_supervoxels_to_roots_job_at_several_times(client, truth, tiny_path, tmp_path):
    """Times: just after ingest, between edits, the latest materialization, now; rows include 0 and
    repeats. Roots differ between the times, so a job ignoring the timestamp fails."""
    rng = np.random.default_rng(3)
    svs = np.concatenate([rng.choice(truth.supervoxels, 300), [0, 0], truth.supervoxels[:3]]).astype(np.uint64)
    pd.DataFrame({"supervoxel_id": svs}).to_parquet(tmp_path / "sv.parquet")
    ops = truth.operation_times()
    times = {"ingest": truth.ingest_ms / 1000 + 0.5, "middle": ops[len(ops) // 2].timestamp() + 0.5,
             "mat": "mat", "now": None}
    answers = []
    for name, ts in times.items():
        out = tmp_path / f"{name}.zarr"
        run_job("supervoxels-to-roots", tmp_path / "sv.parquet", out, dataset=str(tiny_path), timestamp=ts,
                partition_size=64, client=client, progress=False)
        at = {"mat": truth.materialization(), "now": datetime.now(timezone.utc)}.get(name, ts)
        want = truth.root_of(svs, at)
        np.testing.assert_array_equal(read_output(out)["root_id"].to_numpy(), want)
        answers.append(want)
    assert all(not np.array_equal(a, b) for a, b in zip(answers[:-1], answers[1:-1]))


def test_cli_supervoxels_to_roots(client, truth, tiny_path, tmp_path):
    svs = truth.supervoxels[::7].astype(np.uint64)
    pd.DataFrame({"supervoxel_id": svs}).to_parquet(tmp_path / "sv.parquet")
    assert _cli(client, "supervoxels-to-roots", "--input", str(tmp_path / "sv.parquet"), "--output",
                str(tmp_path / "o.zarr"), "--dataset", str(tiny_path), "--timestamp", "mat") == 0
    np.testing.assert_array_equal(read_output(tmp_path / "o.zarr")["root_id"].to_numpy(),
                                  truth.root_of(svs, truth.materialization()))


@pytest.mark.parametrize("thin", [False, True])
def test_cli_get_voxels_mip_and_thin(client, truth, tiny_path, tmp_path, thin):
    roots = truth.largest_roots(3)
    if thin:  # roots whose thinning removes something at mip 2 (by the truth's per-voxel scan)
        roots = [r for r in truth.largest_roots(40) if len(truth.interface_voxels(r, 2))][:3]
        assert roots
    pd.DataFrame({"root_id": roots}).to_parquet(tmp_path / "r.parquet")
    args = ["get-voxels", "--input", str(tmp_path / "r.parquet"), "--output", str(tmp_path / "o.zarr"),
            "--dataset", str(tiny_path), "--mip", "2"] + (["--thin"] if thin else [])
    assert _cli(client, *args) == 0
    voxels = read_ragged(tmp_path / "o.zarr", "voxels")
    for row, root in enumerate(roots):
        want = truth.voxels_of(root, 2)
        if thin:
            cut = {tuple(v) for v in truth.interface_voxels(root, 2).tolist()}
            assert cut  # thinning removes something from these roots
            want = want[np.array([tuple(v) not in cut for v in want.tolist()])]
        np.testing.assert_array_equal(voxels[row].astype(np.int64), want)


@pytest.mark.parametrize("op, bad", [("snap", {"serach_radius": 5.0}), ("locs-to-segments", {"mip": 1}),
                                     ("update-ids", {"stoplayer": 3}), ("get-voxels", {"thinn": True})])
def test_run_job_rejects_unknown_argument_names(rows, tiny_path, tmp_path, op, bad):
    with pytest.raises(InvalidInputError, match=repr(next(iter(bad)))):
        run_job(op, rows, tmp_path / "o.zarr", dataset=str(tiny_path), progress=False, **bad)
    assert not (tmp_path / "o.zarr").exists()
