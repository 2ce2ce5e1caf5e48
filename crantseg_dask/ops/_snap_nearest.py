"""The snap kernel's geometry on plain numpy, for all of a block's targets at once.

Every helper here works on voxels (or rows) labelled with an OWNER, the index of the target they
belong to, so that one call serves thousands of targets: leaf membership by one sorted search
(``member``), erosion by one sort of (owner, x, y, z) keys (``sorted_voxels``), and the nearest
voxel centre by one KD-tree whose fourth coordinate keeps owners apart (``_nearest_many``).
"""
from __future__ import annotations

import math

import numpy as np

from .._chunking import pack_coords

__all__ = ["member", "sorted_voxels", "_interior", "_nearest_many"]

_NEIGHBOURS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
#: bits of one (owner, x, y, z) key; wider spans fall back to one owner at a time
_KEY_BITS = 63


def member(values: np.ndarray, owner: np.ndarray, leaves: list[np.ndarray]) -> np.ndarray:
    """Whether ``values[i]`` is one of ``leaves[owner[i]]``, for every i at once.

    The (owner, leaf) pairs become one int64 each (the leaf by its rank among all leaves), sorted
    once; each (owner, value) pair is then found with one ``searchsorted``."""
    values = np.asarray(values, dtype=np.uint64)
    if not len(values) or not leaves:
        return np.zeros(len(values), dtype=bool)
    table = np.concatenate(leaves).astype(np.uint64, copy=False)
    if not len(table):
        return np.zeros(len(values), dtype=bool)
    labels, rank = np.unique(table, return_inverse=True)
    n = np.int64(len(labels))
    keys = np.sort(np.repeat(np.arange(len(leaves), dtype=np.int64), [len(x) for x in leaves]) * n + rank)
    pos = np.minimum(np.searchsorted(labels, values), len(labels) - 1)
    known = labels[pos] == values
    q = np.asarray(owner, dtype=np.int64) * n + pos
    at = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return known & (keys[at] == q)


def _owner_keys(coords: np.ndarray, owner: np.ndarray, n_owners: int):
    """(keys, steps): one int64 per voxel, ordered like (owner, x, y, z) lexicographically, and
    the key differences of one step along x, y and z; None when they would not fit ``_KEY_BITS``.

    Coordinates are taken relative to their owner's minimum less one, so that a face neighbour's
    key is the voxel's key plus or minus a step without carrying into another field."""
    lo = np.full((3, n_owners), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((3, n_owners), np.iinfo(np.int64).min, dtype=np.int64)
    for a in range(3):  # per axis: ufunc.at is fast on 1-D contiguous operands
        col = np.ascontiguousarray(coords[:, a])
        np.minimum.at(lo[a], owner, col)
        np.maximum.at(hi[a], owner, col)
    lo, hi = lo.T, hi.T
    lo -= 1
    used = np.zeros(n_owners, dtype=bool)
    used[owner] = True
    top = (hi[used] + 1 - lo[used]).max(axis=0)  # largest relative coordinate of a neighbour
    bits = [int(t).bit_length() for t in top]
    if sum(bits) + int(max(n_owners - 1, 0)).bit_length() > _KEY_BITS:
        return None
    rel = coords - lo[owner]
    sy, sx = bits[2], bits[1] + bits[2]
    keys = (owner.astype(np.int64) << (sx + bits[0])) | (rel[:, 0] << sx) | (rel[:, 1] << sy) | rel[:, 2]
    return keys, (1 << sx, 1 << sy, 1)


def sorted_voxels(coords: np.ndarray, owner: np.ndarray, n_owners: int, erode: bool):
    """(order, interior): the indices of the distinct (owner, voxel) pairs, sorted by (owner, x,
    y, z) (of repeated pairs the first), and, with ``erode``, a mask over that order of the
    voxels whose 6 face neighbours have the same owner (else None).

    ``coords`` (M, 3) int absolute voxels; ``owner`` (M,) in [0, n_owners). A pair may repeat
    (the kernel's rows of one target may overlap): the sort that orders them also drops repeats."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    owner = np.asarray(owner, dtype=np.int64)
    if not len(coords):
        return np.zeros(0, np.int64), (np.zeros(0, bool) if erode else None)
    packed = _owner_keys(coords, owner, n_owners)
    if packed is None:  # spans too wide for one key: one owner at a time
        order = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0], owner))
        s = np.column_stack([owner[order], coords[order]])
        order = order[np.r_[True, np.any(s[1:] != s[:-1], axis=1)]]
        if not erode:
            return order, None
        starts = np.flatnonzero(np.r_[True, owner[order][1:] != owner[order][:-1]])
        return order, np.concatenate([_interior(coords[g]) for g in np.split(order, starts[1:])])
    keys, steps = packed
    order = np.argsort(keys, kind="stable")  # stable: of repeated pairs the first comes first
    keys = keys[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    if not first.all():
        order, keys = order[first], keys[first]
    if not erode:
        return order, None
    # z neighbours (step 1) are adjacent in the sorted unique keys when present; x and y are searched
    keep = np.r_[keys[1:] == keys[:-1] + 1, False] & np.r_[False, keys[:-1] == keys[1:] - 1]
    last = len(keys) - 1
    for step in steps[:2]:
        for nb in (keys + step, keys - step):
            keep &= keys[np.minimum(np.searchsorted(keys, nb), last)] == nb
    return order, keep


def _interior(coords: np.ndarray) -> np.ndarray:
    """Mask of the voxels of the set whose 6 face neighbours are all in the set."""
    if len(coords) == 0:
        return np.zeros(0, dtype=bool)
    lo = coords.min(axis=0) - 1  # relative packing: negative coordinates (voxel_offset) are legal
    keys = np.sort(pack_coords(coords, lo))
    keep = np.ones(len(coords), dtype=bool)
    for d in _NEIGHBOURS:
        nb = pack_coords(coords + d, lo)
        pos = np.clip(np.searchsorted(keys, nb), 0, len(keys) - 1)
        keep &= keys[pos] == nb
    return keep


def _nearest_many(points: np.ndarray, cand: np.ndarray, res: np.ndarray, r: float,
                  point_owner: np.ndarray | None = None, cand_owner: np.ndarray | None = None):
    """For each point (nm), the index into ``cand`` (absolute voxels, sorted by owner, then x, y,
    z) of the candidate of the point's owner whose centre is nearest within ``r`` nm, first in
    that order among ties, and its squared distance; (-1, inf) where none is within ``r``.
    Without owners every point competes for every candidate.

    A KD-tree over the candidate centres proposes the 8 nearest; their exact squared distances
    (3-D) decide, so ties resolve by candidate order, as a brute-force scan would. Owners are a
    fourth coordinate, ``owner * gap`` with ``gap`` a power of two above twice the search bound:
    exact in float64, zero between a point and its owner's candidates, and more than the bound
    between any other pair, so a query never proposes another owner's candidate. Rows whose last
    proposal is as near as their minimum may have more exact ties than proposals: they are asked
    again with four times as many, until the last proposal is farther or every candidate is in."""
    from scipy.spatial import cKDTree

    n = len(points)
    j, best = np.full(n, -1, dtype=np.int64), np.full(n, np.inf)
    if n == 0 or len(cand) == 0:
        return j, best
    centres = (cand + 0.5) * res
    bound = r * (1 + 1e-9) + 1e-9
    if cand_owner is not None and not np.any(cand_owner != cand_owner[0]):
        # one owner: a 3-D tree for its points; the others find nothing
        mine = np.flatnonzero(np.asarray(point_owner) == cand_owner[0])
        j[mine], best[mine] = _nearest_many(points[mine], cand, res, r)
        return j, best
    if cand_owner is not None:
        gap = float(2 ** math.ceil(math.log2(2 * bound + 2)))
        tree = cKDTree(np.column_stack([centres, np.asarray(cand_owner, np.float64) * gap]))
        query = np.column_stack([points, np.asarray(point_owner, np.float64) * gap])
    else:
        tree, query = cKDTree(centres), points
    rows, k = np.arange(n), min(8, len(cand))
    while rows.size:
        _, idx = tree.query(query[rows], k=k, distance_upper_bound=bound)
        idx = idx.reshape(len(rows), k)
        valid = idx < len(cand)
        diff = centres[np.where(valid, idx, 0)] - points[rows][:, None, :]
        d2 = np.where(valid, (diff * diff).sum(axis=2), np.inf)
        d2 = np.where(d2 <= r * r, d2, np.inf)
        m = d2.min(axis=1)
        found = np.isfinite(m)
        tied = np.where((d2 == m[:, None]) & found[:, None], idx, np.iinfo(np.int64).max)
        j[rows[found]], best[rows[found]] = tied.min(axis=1)[found], m[found]
        # a row is settled when fewer than k candidates are within reach (all were proposed) or
        # its last proposal is strictly farther than its minimum
        full = valid.all(axis=1)
        farther = d2[:, -1] > m
        if k >= len(cand):
            break
        rows = rows[found & full & ~farther]
        k = min(k * 4, len(cand))
    return j, best
