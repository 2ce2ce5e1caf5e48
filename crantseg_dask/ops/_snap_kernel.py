"""The per-block snapping kernel, working on the sparse foreground of storage chunks.

Neurons are thin: a few percent of voxels are foreground. Each storage chunk read is turned once
into its non-zero voxels (absolute coordinates and labels); a target's voxels near a group of
points are then picked from those lists, eroded by neighbour look-ups, and offered to a KD-tree
over voxel centres. Nothing scales with the volume of the box around the points.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .._chunking import nm_to_voxels, pack_coords
from ..errors import InvalidInputError
from ..sources import SourceSpec, open_source

__all__ = ["STATUS", "_snap_arrays", "_target_leaves", "check_search_radius", "max_search_radius"]

#: status codes of ``snap_table`` rows, by code
STATUS = ("on_target", "snapped", "not_found", "background_skipped", "out_of_bounds")
ON_TARGET, SNAPPED, NOT_FOUND, BACKGROUND, OUT_OF_BOUNDS = range(5)

_LEAVES: OrderedDict = OrderedDict()  # (spec, target) -> sorted leaves, bounded by bytes
_LEAVES_BUDGET = 256 << 20
_leaves_lock = threading.Lock()
_leaves_bytes = 0
#: a search ball may reach this many mip-0 storage chunks (along the axis with the smallest chunks)
MAX_RADIUS_CHUNKS = 4
_NEIGHBOURS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


def max_search_radius(meta) -> float:
    """Largest accepted search radius in nm: ``MAX_RADIUS_CHUNKS`` mip-0 storage chunks along the
    axis whose chunks are smallest in nm (the reads and candidate sets grow with the ball's volume)."""
    return float(MAX_RADIUS_CHUNKS * np.min(np.array(meta.chunk_size[0]) * np.array(meta.resolution[0], float)))


def check_search_radius(search_radius, meta) -> float:
    """``search_radius`` as float nm; ``InvalidInputError`` unless finite, >= 0 and at most
    ``max_search_radius(meta)``."""
    try:
        r = float(search_radius)
    except (TypeError, ValueError):
        r = float("nan")
    if not np.isfinite(r) or r < 0:
        raise InvalidInputError(f"search_radius={search_radius!r} must be a finite number of nm >= 0")
    limit = max_search_radius(meta)
    if r > limit:
        raise InvalidInputError(f"search_radius={search_radius!r} nm is larger than the limit of {limit:g} nm "
                                f"({MAX_RADIUS_CHUNKS} mip-0 storage chunks of this dataset); snap in "
                                "several passes or move points closer first")
    return r


def _target_leaves(spec: SourceSpec, target: int) -> np.ndarray:
    """Sorted supervoxels of ``target`` (itself for a supervoxel). Timeless, so cached per process
    (least recently used first out, about 256 MiB at most)."""
    global _leaves_bytes
    key = (spec, int(target))
    with _leaves_lock:
        if key in _LEAVES:
            _LEAVES.move_to_end(key)
            return _LEAVES[key]
    source = open_source(spec)
    if int(source.meta.layout.layer(np.array([target], np.uint64))[0]) == 1:
        leaves = np.array([target], dtype=np.uint64)
    else:
        leaves = np.sort(np.asarray(source.leaves(int(target)), dtype=np.uint64))
    with _leaves_lock:
        if key not in _LEAVES:
            _LEAVES[key] = leaves
            _leaves_bytes += leaves.nbytes
        while len(_LEAVES) > 1 and _leaves_bytes > _LEAVES_BUDGET:
            _leaves_bytes -= _LEAVES.popitem(last=False)[1].nbytes
    return leaves


class _SparseChunks:
    """Non-zero voxels of mip-0 storage chunks, least recently used first out (~256 MiB)."""

    def __init__(self, source, budget_bytes: int = 256 << 20):
        self.source, self.meta = source, source.meta
        self.budget, self.used = budget_bytes, 0
        self._lru: OrderedDict = OrderedDict()
        lo, hi = self.meta.bounds(0)
        self.lo, self.cs = lo, np.array(self.meta.chunk_size[0])
        self.grid = -(-(hi - lo) // self.cs)

    def chunk(self, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coords (K, 3) absolute, distinct labels, index of each voxel's label) of chunk ``c``."""
        key = tuple(int(v) for v in c)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        block = self.source.read_chunk(key, 0)
        nz = np.nonzero(block)
        coords = np.stack(nz, axis=1).astype(np.int64) + (self.lo + np.array(key) * self.cs)
        labels, inverse = np.unique(block[nz], return_inverse=True)
        entry = self._lru[key] = (coords, labels, inverse.ravel())
        self.used += coords.nbytes + labels.nbytes + entry[2].nbytes
        while len(self._lru) > 1 and self.used > self.budget:
            old = self._lru.popitem(last=False)[1]
            self.used -= sum(a.nbytes for a in old)
        return entry


def _target_voxels(sparse: _SparseChunks, lo: np.ndarray, hi: np.ndarray, leaves: list[np.ndarray]):
    """Foreground voxels inside the boxes [lo, hi] (inclusive, one per row) that belong to a
    target: (coords (M, 3), owner (M,) index into ``leaves``). Every touched chunk is read once;
    a supervoxel in several targets' leaves appears once per target."""
    if len(lo) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    c_lo = (lo - sparse.lo) // sparse.cs
    c_hi = (hi - sparse.lo) // sparse.cs
    pairs = []  # (chunk x, y, z, row)
    rows = np.arange(len(lo))
    for b in range(8):  # a ball is smaller than a chunk: its box touches at most 2 per axis
        pick = np.stack([np.where(b & 1, c_hi[:, 0], c_lo[:, 0]), np.where(b & 2, c_hi[:, 1], c_lo[:, 1]),
                         np.where(b & 4, c_hi[:, 2], c_lo[:, 2])], axis=1)
        pairs.append(np.column_stack([pick, rows]))
    for i in np.flatnonzero((c_hi - c_lo > 1).any(axis=1)):  # wider balls: every chunk in between
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(c_lo[i], c_hi[i])], indexing="ij"), -1)
        pairs.append(np.column_stack([grid.reshape(-1, 3), np.full(grid.size // 3, i)]))
    pairs = np.unique(np.concatenate(pairs), axis=0)  # sorted by chunk, then row
    starts = np.flatnonzero(np.r_[True, np.any(pairs[1:, :3] != pairs[:-1, :3], axis=1)])
    table = np.concatenate(leaves) if leaves else np.zeros(0, np.uint64)
    table_owner = np.repeat(np.arange(len(leaves)), [len(x) for x in leaves])
    order = np.argsort(table, kind="stable")
    table, table_owner = table[order], table_owner[order]
    out_c, out_o = [], []
    for s0, s1 in zip(starts, np.r_[starts[1:], len(pairs)]):
        c = pairs[s0, :3]
        coords, distinct, inverse = sparse.chunk(c)
        left_d = np.searchsorted(table, distinct, side="left")
        count_d = np.searchsorted(table, distinct, side="right") - left_d
        if not count_d.any():
            continue
        # only voxels inside some row's box: a mask of the chunk marks the union of the boxes
        origin = sparse.lo + c * sparse.cs
        near = np.zeros(tuple(sparse.cs), dtype=bool)
        for r in pairs[s0:s1, 3]:
            a, b = np.maximum(lo[r] - origin, 0), np.minimum(hi[r] + 1 - origin, sparse.cs)
            near[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = True
        local = coords - origin
        keep = near[local[:, 0], local[:, 1], local[:, 2]] & (count_d[inverse] > 0)
        idx = np.flatnonzero(keep)
        left, count = left_d[inverse[idx]], count_d[inverse[idx]]
        vox = np.repeat(idx, count)
        pos = np.repeat(left - np.cumsum(np.r_[0, count[:-1]]), count) + np.arange(count.sum())
        out_c.append(coords[vox])
        out_o.append(table_owner[pos])
    if not out_c:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_c), np.concatenate(out_o)


def _erode(coords: np.ndarray) -> np.ndarray:
    """Voxels of the set whose 6 face neighbours are all in the set."""
    if len(coords) == 0:
        return coords
    lo = coords.min(axis=0) - 1  # relative packing: negative coordinates (voxel_offset) are legal
    keys = np.sort(pack_coords(coords, lo))
    keep = np.ones(len(coords), dtype=bool)
    for d in _NEIGHBOURS:
        nb = pack_coords(coords + d, lo)
        pos = np.clip(np.searchsorted(keys, nb), 0, len(keys) - 1)
        keep &= keys[pos] == nb
    return coords[keep]


def _nearest_many(points: np.ndarray, cand: np.ndarray, res: np.ndarray, r: float):
    """For each point (nm), the index into ``cand`` (absolute voxels, lexicographically sorted)
    of the voxel whose centre is nearest within ``r`` nm, first in x, y, z order among ties, and
    its squared distance; (-1, inf) where none is within ``r``.

    A KD-tree over the candidate centres proposes the 8 nearest; their exact squared distances
    decide (so ties resolve by candidate order, as a brute-force scan would). Rows whose last
    proposal is as near as their minimum may have more exact ties than proposals: they are asked
    again with four times as many, until the last proposal is farther or every candidate is in."""
    from scipy.spatial import cKDTree

    n = len(points)
    j, best = np.full(n, -1, dtype=np.int64), np.full(n, np.inf)
    if n == 0 or len(cand) == 0:
        return j, best
    centres = (cand + 0.5) * res
    tree = cKDTree(centres)
    bound = r * (1 + 1e-9) + 1e-9
    rows, k = np.arange(n), min(8, len(cand))
    while rows.size:
        _, idx = tree.query(points[rows], k=k, distance_upper_bound=bound)
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


def _snap_arrays(locs_nm: np.ndarray, targets: np.ndarray, spec: SourceSpec, snap_zero: bool,
                 search_radius: float, erode: bool = True):
    """Snap one block of rows; pure given the dataset. Rows to search go target by target.

    Returns (K, 3) float64 nm coordinates (snapped voxel's minimum corner, else the input), (K,)
    float64 distance in nm from the input to the chosen voxel's centre (0 on target, NaN when not
    snapped), (K,) int8 status codes (``STATUS``), all in block order."""
    locs_nm = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3)
    targets = np.asarray(targets, dtype=np.uint64).ravel()
    n = len(locs_nm)
    out, dist = locs_nm.copy(), np.full(n, np.nan)
    status = np.full(n, NOT_FOUND, dtype=np.int8)
    if n == 0:
        return out, dist, status
    source = open_source(spec)
    meta = source.meta
    check_search_radius(search_radius, meta)
    sparse = _SparseChunks(source)
    res = np.array(meta.resolution[0], dtype=np.float64)
    bounds = meta.bounds(0)
    vox = nm_to_voxels(locs_nm, res)
    inside = np.all((vox >= bounds[0]) & (vox < bounds[1]), axis=1)
    # 1. the supervoxel under each row; rows already on their target stay
    sv = np.asarray(source.supervoxels_at(vox, 0), dtype=np.uint64)
    on = np.zeros(n, dtype=bool)
    uniq, which = np.unique(targets, return_inverse=True)
    for t, m in zip(uniq.tolist(), np.split(np.argsort(which, kind="stable"),
                                            np.cumsum(np.bincount(which))[:-1])):
        on[m] = np.isin(sv[m], _target_leaves(spec, t)) & (sv[m] != 0)
    status[on], dist[on] = ON_TARGET, 0.0
    skip = ~on & (sv == 0) & (not snap_zero)
    status[skip] = np.where(inside[skip], BACKGROUND, OUT_OF_BOUNDS)
    todo = np.flatnonzero(~on & ~skip)
    r = float(search_radius)
    if todo.size:
        # 2. every storage chunk that a search ball (plus one voxel, for the erosion) touches, read
        #    once; its foreground voxels labelled with the target they belong to
        lo_v = np.maximum(np.floor((locs_nm[todo] - r) / res).astype(np.int64) - 1, bounds[0])
        hi_v = np.minimum(np.floor((locs_nm[todo] + r) / res).astype(np.int64) + 1, bounds[1] - 1)
        reach = np.all(hi_v >= lo_v, axis=1)  # balls wholly outside the volume find nothing
        todo, lo_v, hi_v = todo[reach], lo_v[reach], hi_v[reach]
        tuniq, tinv = np.unique(targets[todo], return_inverse=True)
        coords, owner = _target_voxels(sparse, lo_v, hi_v, [_target_leaves(spec, t) for t in tuniq.tolist()])
        # 3. per target: its (eroded) voxels; all of its rows at once: the nearest centre
        row_groups = np.split(todo[np.argsort(tinv.ravel(), kind="stable")], np.cumsum(np.bincount(tinv.ravel()))[:-1])
        by_owner = np.argsort(owner, kind="stable")
        vox_groups = np.split(by_owner, np.cumsum(np.bincount(owner, minlength=len(tuniq)))[:-1])
        for rows, sel in zip(row_groups, vox_groups):
            cand = coords[sel]
            cand = _erode(cand) if erode else cand
            cand = cand[np.lexsort(cand.T[::-1])] if len(cand) else cand
            j, d2 = _nearest_many(locs_nm[rows], cand, res, r)
            hit = j >= 0
            out[rows[hit]] = cand[j[hit]] * res
            dist[rows[hit]], status[rows[hit]] = np.sqrt(d2[hit]), SNAPPED
    missed = np.flatnonzero(status == NOT_FOUND)
    status[missed] = np.where(inside[missed], NOT_FOUND, OUT_OF_BOUNDS)
    return out, dist, status
