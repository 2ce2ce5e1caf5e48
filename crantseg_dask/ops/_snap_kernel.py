"""The per-block snapping kernel: reads only the blocks inside each search ball.

For the rows to search, each touched mip-0 storage chunk is visited once; of it only the
compressed_segmentation blocks (8 x 8 x 8) that a search ball (plus one voxel for the erosion)
touches are looked at, blocks whose lookup table holds none of the targets' supervoxels are
skipped unread, and the rest are read by random access or, when they are many, from one full
decode (``sources._cseg``, ``sources._partial``). Sparse tables pay for what they touch; a dense
world (every voxel labelled) costs at most one decoded chunk at a time. The voxels of all the
block's targets are then eroded by neighbour look-ups and offered to one KD-tree over voxel
centres, each voxel keyed by its target (``_snap_nearest``): no Python loop per target.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .._chunking import nm_to_voxels
from ..errors import InvalidInputError
from ..sources import SourceSpec, _cseg, _partial, open_source
from ._snap_nearest import _erode, _interior, _nearest_many, member, sorted_voxels  # noqa: F401 (re-exported)

__all__ = ["ERODE_MODES", "STATUS", "Snapped", "snap_kernel", "_target_leaves", "check_erode",
           "check_search_radius", "max_search_radius"]

#: status codes of ``snap_table`` rows, by code
STATUS = ("on_target", "snapped", "not_found", "background_skipped", "out_of_bounds", "snapped_uneroded")
ON_TARGET, SNAPPED, NOT_FOUND, BACKGROUND, OUT_OF_BOUNDS, SNAPPED_UNERODED = range(6)
#: ``erode`` values: erode (crantpy), don't, or erode and fall back to the uneroded voxels
ERODE_MODES = (True, False, "fallback")

_LEAVES: OrderedDict = OrderedDict()  # (spec, target) -> sorted leaves, bounded by bytes
_LEAVES_BUDGET = 256 << 20
_leaves_lock = threading.Lock()
_leaves_bytes = 0
#: a search ball may reach this many mip-0 storage chunks (along the axis with the smallest chunks)
MAX_RADIUS_CHUNKS = 4


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
    _remember(key, leaves)
    return leaves


def _remember(key, leaves: np.ndarray) -> None:
    global _leaves_bytes
    with _leaves_lock:
        if key not in _LEAVES:
            _LEAVES[key] = leaves
            _leaves_bytes += leaves.nbytes
        while len(_LEAVES) > 1 and _leaves_bytes > _LEAVES_BUDGET:
            _leaves_bytes -= _LEAVES.popitem(last=False)[1].nbytes


def _prefetch_leaves(spec: SourceSpec, targets: np.ndarray) -> None:
    """Fill the leaves cache for the (unique) ``targets`` above layer 1 that it lacks, with
    batched ``leaves_many`` requests instead of one ``leaves`` request per target (a partition of
    a synapse table has thousands of targets; one request each was a CAVE round trip each)."""
    source = open_source(spec)
    targets = np.asarray(targets, dtype=np.uint64)
    with _leaves_lock:
        missing = np.array([t for t in targets.tolist() if (spec, t) not in _LEAVES], dtype=np.uint64)
    missing = missing[source.meta.layout.layer(missing) > 1] if missing.size else missing
    if missing.size < 2:  # nothing to batch: _target_leaves asks for it alone
        return
    for node, leaves in source.leaves_many(missing, stop_layer=1).items():
        _remember((spec, int(node)), np.sort(np.asarray(leaves, dtype=np.uint64)))


def _needed_blocks(shape: np.ndarray, block: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear ids (x fastest) of the blocks of a chunk that the inclusive local boxes [a, b] touch."""
    need = np.zeros(tuple(-(-shape // block)), dtype=bool)
    for p, q in zip(a // block, b // block + 1):
        need[p[0]:q[0], p[1]:q[1], p[2]:q[2]] = True
    return np.flatnonzero(need.ravel(order="F"))


def _box_positions(shape: np.ndarray, block: np.ndarray, ids: np.ndarray, a: np.ndarray, b: np.ndarray):
    """(M, 3) local positions, x-major, of the voxels inside some inclusive box [a, b] and inside
    one of the blocks ``ids`` (linear, x fastest), clipped to the chunk's ``shape``."""
    grid = -(-shape // block)
    near = np.zeros(tuple(grid * block), dtype=bool)
    for p, q in zip(a, b + 1):
        near[p[0]:q[0], p[1]:q[1], p[2]:q[2]] = True
    keep = np.zeros(int(grid.prod()), dtype=bool)
    keep[ids] = True
    keep = keep.reshape(tuple(grid), order="F")
    m = near.reshape(grid[0], block[0], grid[1], block[1], grid[2], block[2])
    m &= keep[:, None, :, None, :, None]
    flat = np.flatnonzero(near)
    x, rem = np.divmod(flat, int(grid[1] * block[1] * grid[2] * block[2]))
    y, z = np.divmod(rem, int(grid[2] * block[2]))
    return np.stack([x, y, z], axis=1)


def _target_voxels(source, lo: np.ndarray, hi: np.ndarray, leaves: list[np.ndarray], with_labels: bool = False):
    """Voxels inside the boxes [lo, hi] (inclusive, one per row) that belong to a target:
    (coords (M, 3), owner (M,) index into ``leaves``) and with ``with_labels`` also (M,) their
    supervoxels; a supervoxel in several targets' leaves appears once per target.

    Per touched mip-0 storage chunk, only the 8 x 8 x 8 blocks that some box touches are looked
    at, and of those only the blocks whose lookup table holds a target supervoxel
    (``_cseg.blocks_holding``); their voxels inside the boxes are read by random access, or from
    one full decode of the chunk when they are many (``_cseg.use_blocks``). The task's chunks are
    fetched concurrently as encoded bytes (about 20 KiB each on a dense layer); at most one chunk
    is decoded at a time, whatever the foreground density."""
    meta = source.meta
    if len(lo) == 0:
        return (np.zeros((0, 3), np.int64), np.zeros(0, np.int64)) + ((np.zeros(0, np.uint64),) if with_labels else ())
    vol_lo, cs = meta.bounds(0)[0], np.array(meta.chunk_size[0], dtype=np.int64)
    block = np.array(_partial._block(meta, 0), dtype=np.int64)
    ra_ok = _partial._random_access_ok(meta, 0)
    c_lo, c_hi = (lo - vol_lo) // cs, (hi - vol_lo) // cs
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
    shapes = _partial.chunk_shapes(meta, pairs[starts, :3], 0)
    keys = [tuple(int(v) for v in c) for c in pairs[starts, :3]]
    encoded = dict(source.read_encoded_many(keys, 0)) if ra_ok else {}  # fetched concurrently
    out_c, out_o, out_l = [], [], []
    for s0, s1, shape in zip(starts, np.r_[starts[1:], len(pairs)], shapes):
        c = pairs[s0, :3]
        key = tuple(int(v) for v in c)
        origin = vol_lo + c * cs
        r = pairs[s0:s1, 3]
        a, b = np.maximum(lo[r] - origin, 0), np.minimum(hi[r] - origin, shape - 1)
        ids = _needed_blocks(shape, block, a, b)
        data = encoded.pop(key, None)
        try:
            if data is not None:
                ids = ids[_cseg.blocks_holding(data, shape, block, ids, table)]
            if not ids.size:
                continue
            pos = _box_positions(shape, block, ids, a, b)
            if data is not None and _cseg.use_blocks(len(pos), int(shape.prod())):
                labels = _cseg.decode_positions(data, shape, block, pos)
            else:
                whole = source.decode_chunk(key, 0, data) if data is not None else source.read_chunk(key, 0)
                labels = whole[pos[:, 0], pos[:, 1], pos[:, 2]]
        except _cseg.CsegError as e:
            raise _partial._source_error(source, key, 0, e) from e
        left = np.searchsorted(table, labels, side="left")
        hit = table[np.minimum(left, len(table) - 1)] == labels if len(table) else np.zeros(len(labels), bool)
        idx = np.flatnonzero(hit)
        if not idx.size:
            continue
        left = left[idx]
        count = np.searchsorted(table, labels[idx], side="right") - left
        vox = np.repeat(idx, count)
        at = np.repeat(left - np.cumsum(np.r_[0, count[:-1]]), count) + np.arange(count.sum())
        out_c.append(pos[vox] + origin)
        out_o.append(table_owner[at])
        out_l.append(labels[vox])
    if not out_c:
        return (np.zeros((0, 3), np.int64), np.zeros(0, np.int64)) + ((np.zeros(0, np.uint64),) if with_labels else ())
    found = np.concatenate(out_c), np.concatenate(out_o)
    return found + ((np.concatenate(out_l).astype(np.uint64, copy=False),) if with_labels else ())


def check_erode(erode) -> bool | str:
    """``erode`` as one of ``ERODE_MODES``; ``InvalidInputError`` otherwise."""
    if isinstance(erode, (bool, np.bool_)):
        return bool(erode)
    if erode == "fallback":
        return "fallback"
    raise InvalidInputError(f"erode={erode!r} must be True, False or 'fallback'")


class Snapped(NamedTuple):
    """What ``snap_kernel`` returns for K rows, in block order."""

    #: (K, 3) float64 nm: the snapped voxel's minimum corner, else the input location
    xyz: np.ndarray
    #: (K,) float64 nm from the input to the chosen voxel's centre (0 on target, NaN when not snapped)
    distance: np.ndarray
    #: (K,) int8 status codes (``STATUS``)
    status: np.ndarray
    #: (K,) uint64 supervoxel under ``xyz`` (0 on background and outside the volume)
    supervoxel: np.ndarray


def snap_kernel(locs_nm: np.ndarray, targets: np.ndarray, spec: SourceSpec, snap_zero: bool,
                search_radius: float, erode: bool | str = True) -> Snapped:
    """Snap one block of rows, each to its own target; pure given the dataset.

    All targets are served at once (``_snap_nearest``). ``erode``: True keeps only voxels whose 6 face neighbours
    are the target's too (crantpy); False uses every voxel; "fallback" erodes, and for rows whose
    ball holds no eroded voxel (a neurite thinner than 3 voxels) takes the nearest uneroded voxel,
    status ``snapped_uneroded``.

    Returns a ``Snapped`` (coordinates, distances, statuses and the supervoxel under each
    returned location: the one looked up under the input, or the label of the voxel snapped
    to, so no chunk is read again to find it)."""
    locs_nm = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3)
    targets = np.asarray(targets, dtype=np.uint64).ravel()
    n = len(locs_nm)
    out, dist = locs_nm.copy(), np.full(n, np.nan)
    status = np.full(n, NOT_FOUND, dtype=np.int8)
    if n == 0:
        return Snapped(out, dist, status, np.zeros(0, np.uint64))
    source = open_source(spec)
    meta = source.meta
    check_search_radius(search_radius, meta)
    erode = check_erode(erode)
    res = np.array(meta.resolution[0], dtype=np.float64)
    bounds = meta.bounds(0)
    vox = nm_to_voxels(locs_nm, res)
    inside = np.all((vox >= bounds[0]) & (vox < bounds[1]), axis=1)
    # 1. the supervoxel under each row; rows already on their target stay
    sv = np.asarray(source.supervoxels_at(vox, 0), dtype=np.uint64)
    under = sv.copy()  # the supervoxel under each returned location
    uniq, which = np.unique(targets, return_inverse=True)
    which = which.ravel()
    _prefetch_leaves(spec, uniq)
    leaves = [_target_leaves(spec, t) for t in uniq.tolist()]
    on = member(sv, which, leaves) & (sv != 0)
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
        present, tinv = np.unique(which[todo], return_inverse=True)
        tinv = tinv.ravel()
        coords, owner, label = _target_voxels(source, lo_v, hi_v, [leaves[i] for i in present.tolist()],
                                              with_labels=True)
        # 3. all targets at once: the voxels sorted by (target, x, y, z), eroded; the nearest centre
        #    of each row's own target (the first in x, y, z order among equally near ones)
        order, interior = sorted_voxels(coords, owner, len(present), bool(erode))
        rows, rown = todo, tinv
        for code, pick in ((SNAPPED, order[interior] if erode else order),
                           (SNAPPED_UNERODED, order if erode == "fallback" else None)):
            if pick is None or not rows.size:
                break
            cand = coords[pick]
            j, d2 = _nearest_many(locs_nm[rows], cand, res, r, rown, owner[pick])
            hit = j >= 0
            out[rows[hit]] = cand[j[hit]] * res
            under[rows[hit]] = label[pick[j[hit]]]
            dist[rows[hit]], status[rows[hit]] = np.sqrt(d2[hit]), code
            rows, rown = rows[~hit], rown[~hit]  # erosion left nothing in these balls: the fallback's turn
    missed = np.flatnonzero(status == NOT_FOUND)
    status[missed] = np.where(inside[missed], NOT_FOUND, OUT_OF_BOUNDS)
    return Snapped(out, dist, status, under)
