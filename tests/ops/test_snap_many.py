"""One snap block with hundreds of targets, against the brute-force oracle (``dataset.truth_snap``).

The kernel serves every target of a block at once (leaf membership, erosion and the KD-tree are
keyed by the target's index), so a block here mixes: neighbouring roots as targets, superseded
roots and supervoxel targets whose supervoxels other targets of the block share, rows on exact
voxel corners and edge midpoints (equally near voxel centres: the first in x, y, z order must
win), and the three ``erode`` modes. Expected values come only from ``SnapTruth`` (exhaustive
search of the truth volume); the fallback's from its eroded and uneroded answers."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from crantseg_dask.dataset.truth_snap import SnapTruth, other_targets
from crantseg_dask.ops._snap_kernel import STATUS, snap_kernel


@pytest.fixture(scope="module")
def block(truth):
    """(locs nm, targets): ~700 rows, several hundred distinct targets, many sharing supervoxels."""
    rng = np.random.default_rng(8)
    res = truth.resolution(0)
    now = datetime.now(timezone.utc)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 420, replace=False)]
    locs = (anchors + rng.random(anchors.shape)) * res + rng.normal(0, 40, anchors.shape) * [1, 1, 0.5]
    corners = np.round(locs[:150] / res) * res  # exact voxel corners: up to 8 centres equally near
    edges = (np.floor(locs[150:260] / res) + [0.0, 0.0, 0.5]) * res  # z-edge midpoints: 4 equally near
    locs = np.concatenate([locs, corners, edges])
    tgt, _ = other_targets(truth, locs, now, seed=4)
    keep = tgt != 0
    locs, tgt = locs[keep], tgt[keep]
    # supervoxel targets: a leaf of a root that other rows of the block target
    for i in rng.choice(len(locs), 60, replace=False):
        tgt[i] = rng.choice(truth.leaves(int(tgt[i])))
    # superseded roots, which share supervoxels with the roots that replaced them
    old = [r for r in truth.all_roots.tolist() if truth.superseded(r) is not None and len(truth.leaves(r)) > 2]
    extra = []
    for root in old:
        vox = truth.voxels_of(root)
        p = (vox[rng.choice(len(vox), 3)] + rng.random((3, 3))) * res + rng.normal(0, 50, (3, 3)) * [1, 1, 0.5]
        extra.append((p, root))
    locs = np.concatenate([locs] + [p for p, _ in extra])
    tgt = np.concatenate([tgt, np.repeat(np.array([r for _, r in extra], np.uint64), 3)])
    perm = rng.permutation(len(locs))  # targets interleaved, as in a table sorted by chunk
    return locs[perm], tgt[perm].astype(np.uint64)


class _Oracle(SnapTruth):
    """``SnapTruth`` keeping every target's candidates (it keeps 64): each mask is built once."""

    def __init__(self, truth):
        super().__init__(truth)
        self._kept = {}

    def candidates(self, target, erode=True):
        key = (int(target), bool(erode))
        if key not in self._kept:
            self._kept[key] = super().candidates(target, erode).astype(np.int32)
        return self._kept[key]


R = 80.0  # small enough that erosion empties some balls (the fallback's rows), large enough to snap most


@pytest.fixture(scope="module")
def oracle(truth):
    return _Oracle(truth)


@pytest.fixture(scope="module")
def expected(oracle, block):
    """The oracle's (xyz, distance, status) for the block with erosion and without, snap_zero=True."""
    locs, tgt = block
    return {erode: oracle.table(locs, tgt, True, R, erode) for erode in (True, False)}


def test_block_is_what_it_claims(oracle, block):
    locs, tgt = block
    assert len(np.unique(tgt)) >= 200
    counts = {}
    for t in np.unique(tgt).tolist():
        for s in oracle.members(t):
            counts[s] = counts.get(s, 0) + 1
    assert sum(c > 1 for c in counts.values()) >= 100  # supervoxels in several targets' leaves


@pytest.mark.timeout(900)  # the oracle's first pass: a whole-volume mask per target and mode
@pytest.mark.parametrize("erode", [True, False, "fallback"])
def test_many_targets_in_one_block_match_oracle(local_spec, truth, oracle, block, expected, erode):
    locs, tgt = block
    got = snap_kernel(locs, tgt, local_spec, True, R, erode)
    if erode == "fallback":
        xyz, dist, status = (a.copy() for a in expected[True])
        xyz_u, dist_u, status_u = expected[False]
        # searched, nothing eroded in the ball, but an uneroded voxel: the fallback's answer
        late = np.isin(status, ("not_found", "out_of_bounds")) & (status_u == "snapped")
        xyz[late], dist[late], status[late] = xyz_u[late], dist_u[late], "snapped_uneroded"
        assert late.sum() >= 5 and (status == "snapped").sum() >= 50
    else:
        xyz, dist, status = expected[erode]
    assert [STATUS[s] for s in got.status.tolist()] == status.tolist()
    np.testing.assert_array_equal(got.xyz, xyz)
    np.testing.assert_allclose(got.distance, dist, rtol=1e-12, equal_nan=True)
    moved = np.isin(status, ("snapped", "snapped_uneroded"))
    sv, _ = oracle.lookup(xyz, datetime.now(timezone.utc))
    np.testing.assert_array_equal(got.supervoxel[moved], sv[moved])
    assert moved.sum() >= 150
    # rows whose nearest candidate centre is one of several equally near: the tie rule decided them
    res, ties = truth.resolution(0), 0
    for i in np.flatnonzero(moved).tolist():
        cand = oracle.candidates(int(tgt[i]), erode is True or (erode == "fallback" and status[i] == "snapped"))
        d = (cand + 0.5) * res - locs[i]
        d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        ties += int((d2 == d2.min()).sum() > 1)
    assert ties >= 20
