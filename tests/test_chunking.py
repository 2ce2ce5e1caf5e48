"""_chunking: keys, partition plans and inverse permutations on plain numpy."""
from __future__ import annotations

import numpy as np
import pytest

from crantseg_dask._chunking import chunk_keys, nm_to_voxels, plan_partitions

BOUNDS = np.array([[10, 20, 5], [74, 84, 37]])  # 64 x 64 x 32 voxels, chunks start at lo
CHUNK = (16, 16, 8)


def brute_key(v):
    lo, hi = BOUNDS
    if not np.all((v >= lo) & (v < hi)):
        return -1
    c = (v - lo) // CHUNK
    grid = -(-(hi - lo) // CHUNK)
    return int((c[0] * grid[1] + c[1]) * grid[2] + c[2])


def test_nm_to_voxels_floors_and_clips():
    res = (16, 16, 42)
    v = nm_to_voxels([[331200, 0, 41.999], [-0.5, 15.999, 42], [1e300, -1e300, 0]], res)
    assert v.dtype == np.int64
    assert v[0].tolist() == [20700, 0, 0]
    assert v[1].tolist() == [-1, 0, 1]
    assert v[2, 0] > 2**61 and v[2, 1] < -(2**61)
    v32 = nm_to_voxels([[331200, -0.5, 1e300], [-1e300, 0, 41.999]], res, np.int32)
    assert v32.dtype == np.int32
    assert v32.tolist() == [[20700, -1, 2**31 - 2], [-(2**31 - 2), 0, 0]]


def test_chunk_keys_match_brute_force():
    rng = np.random.default_rng(1)
    v = rng.integers(0, 100, size=(2000, 3))
    keys = chunk_keys(v, BOUNDS, CHUNK)
    assert keys.dtype == np.int64
    assert keys.tolist() == [brute_key(p) for p in v]
    assert (keys == -1).any() and (keys >= 0).any()


@pytest.mark.parametrize("size", [1, 3, 7, 50, 10_000])
def test_plan_partitions_invariants(size):
    rng = np.random.default_rng(size)
    keys = rng.integers(-1, 20, size=500) * (rng.random(500) < 0.9)  # many repeats, some -1
    plan = plan_partitions(keys, size)
    assert sum(plan.sizes) == len(keys)
    assert all(1 <= s <= size for s in plan.sizes)
    assert sorted(plan.order.tolist()) == list(range(len(keys)))
    assert np.array_equal(plan.keys, keys[plan.order])
    assert np.all(np.diff(plan.keys) >= 0)
    assert np.array_equal(plan.inverse[plan.order], np.arange(len(keys)))
    values = rng.random(len(keys))
    assert np.array_equal(plan.restore(values[plan.order]), values)
    # a chunk with at most `size` rows is never split across partitions
    part = np.repeat(np.arange(plan.n_partitions), plan.sizes)
    for k in np.unique(keys):
        n = int((keys == k).sum())
        parts = np.unique(part[plan.keys == k])
        assert len(parts) == (1 if n <= size else len(parts))
        if n > size:  # split into the fewest pieces
            assert len(parts) <= -(-n // size) + 1


def test_plan_partitions_packs_greedily():
    keys = np.repeat([0, 1, 2, 3], [3, 3, 5, 1])
    assert plan_partitions(keys, 6).sizes == (6, 6)
    assert plan_partitions(keys, 4).sizes == (3, 3, 4, 2)
    assert plan_partitions(keys, 100).sizes == (12,)
    assert plan_partitions(keys, 1).sizes == (1,) * 12


def test_plan_partitions_stable_and_empty():
    keys = np.array([5, 1, 5, 1, 5])
    plan = plan_partitions(keys, 2)
    assert plan.order.tolist() == [1, 3, 0, 2, 4]
    assert plan.offsets.tolist() == [0, 2, 4, 5]
    empty = plan_partitions(np.zeros(0, np.int64), 3)
    assert empty.sizes == () and empty.order.size == 0 and empty.inverse.size == 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_plan_partitions_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="partition_size"):
        plan_partitions(np.zeros(3, np.int64), bad)


# -- pack_coords: one int64 per voxel, relative to a lower bound (negative offsets are legal) ------
def test_pack_coords_negative_and_order():
    from crantseg_dask._chunking import pack_coords

    rng = np.random.default_rng(4)
    c = rng.integers(-5, 5, (2000, 3))
    lo = np.array([-6, -6, -6])
    keys = pack_coords(c, lo)
    assert len(np.unique(keys)) == len(np.unique(c, axis=0))           # no collisions
    order = np.lexsort(c.T[::-1])
    assert np.all(np.diff(keys[order]) >= 0)                           # lexicographic order kept
    assert pack_coords([[-6, -6, -6]], lo).tolist() == [0]
    with pytest.raises(ValueError, match="packing"):
        pack_coords([[-7, 0, 0]], lo)
    with pytest.raises(ValueError, match="packing"):
        pack_coords([[0, 0, (1 << 21) - 6]], lo)


@pytest.mark.parametrize("offset", [(-40, -3, -7), (0, 0, 0), (5, -1, 2)])
def test_erode_matches_brute_force_with_negative_coordinates(offset):
    from crantseg_dask.ops._snap_nearest import _interior, sorted_voxels

    rng = np.random.default_rng(9)
    m = rng.random((9, 8, 7)) < 0.8
    m[2:6, 2:6, 2:5] = True
    coords = np.argwhere(m) + np.array(offset)
    p = np.pad(m, 1)
    core = m.copy()
    for axis in range(3):
        for s in (-1, 1):
            core &= np.roll(p, s, axis=axis)[1:-1, 1:-1, 1:-1]
    expected = np.argwhere(core) + np.array(offset)
    want = sorted(map(tuple, expected.tolist()))
    order, interior = sorted_voxels(coords, np.zeros(len(coords), np.int64), 1, True)  # the kernel's erosion
    assert sorted(map(tuple, coords[order[interior]].tolist())) == want
    assert sorted(map(tuple, coords[_interior(coords)].tolist())) == want  # its one-target-at-a-time fallback


@pytest.mark.parametrize("wide", [False, True])
def test_sorted_voxels_drops_repeated_pairs_and_erodes_like_brute_force(wide):
    """Repeated (owner, voxel) pairs (overlapping rows of one target) come once, the first of
    them, sorted by (owner, x, y, z); erosion per owner against a brute-force dilation check.
    ``wide``: coordinates too far apart for one packed key (the one-owner-at-a-time path)."""
    from crantseg_dask.ops._snap_nearest import sorted_voxels

    rng = np.random.default_rng(11)
    masks = [rng.random((7, 6, 5)) < 0.85 for _ in range(3)]
    offsets = np.array([[0, 0, 0], [3, -2, 1], [(1 << 40) if wide else 50, 0, 0]])
    coords = np.concatenate([np.argwhere(m) + o for m, o in zip(masks, offsets)])
    owner = np.repeat(np.arange(3), [int(m.sum()) for m in masks])
    rep = rng.choice(len(coords), 40, replace=False)
    coords, owner = np.concatenate([coords, coords[rep]]), np.concatenate([owner, owner[rep]])
    order, interior = sorted_voxels(coords, owner, 3, True)
    assert len(order) == len(coords) - 40 and (order < len(coords) - 40).all()  # the first of each
    got = np.column_stack([owner[order], coords[order]])
    assert list(map(tuple, got.tolist())) == sorted(set(map(tuple, got.tolist())))  # sorted, distinct
    for k, (m, o) in enumerate(zip(masks, offsets)):
        p = np.pad(m, 1)
        core = m.copy()
        for axis in range(3):
            for s in (-1, 1):
                core &= np.roll(p, s, axis=axis)[1:-1, 1:-1, 1:-1]
        mine = owner[order] == k
        assert sorted(map(tuple, coords[order][mine & interior].tolist())) == \
            sorted(map(tuple, (np.argwhere(core) + o).tolist()))
