"""The per-block snapping kernel: reads only the blocks inside each search ball.

On compressed_segmentation (``_partial._random_access_ok``, the CRANT layout) every row is searched
by compiled code (``_snap_numba``): the labels of its search box are decoded straight from the
encoded words of the chunks it touches (blocks whose table holds none of the target's leaves
skipped), marked by membership in its own target's leaves, and the marked voxels searched for the
nearest eroded voxel centre, at a few ns per box voxel; rows sorted by chunk go in
groups of bounded box volume, and a chunk's encoded bytes are fetched once per call. Rows are
searched at growing radii (``_radii``: r/4 and r/2 where over a voxel, then r): a row whose nearest
voxel lies in a smaller ball is settled there exactly, so rows near their target (most synapses)
never read the full ball (on the demo's partitions this is 1.3-1.5x faster than one pass at r).

Other encodings keep the numpy pipeline (``_target_voxels``): each touched mip-0 storage chunk is
visited once per pass, searched only for the targets of the rows that touch it, read by blocks or
decoded whole (``sources._cseg``, ``sources._partial``); the voxels of all targets are eroded by
neighbour look-ups and offered to one KD-tree over voxel centres, each keyed by its target
(``_snap_nearest``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .._chunking import nm_to_voxels
from ..errors import InvalidInputError
from ..sources import SourceSpec, _cseg, _partial, open_source
from . import _snap_numba
from ._snap_gather import labels_under
from ._snap_stream import box_chunks, in_background, stream_groups
from ._snap_nearest import _nearest_many, member, sorted_voxels

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


def _target_voxels(source, lo: np.ndarray, hi: np.ndarray, leaves: list[np.ndarray], with_labels: bool = False,
                   row_owner: np.ndarray | None = None, encoded: dict | None = None):
    """Voxels inside the boxes [lo, hi] (inclusive, one per row) that belong to a target:
    (coords (M, 3), owner (M,) index into ``leaves``) and with ``with_labels`` also (M,) their
    supervoxels; a supervoxel in several targets' leaves appears once per target.

    ``row_owner`` (K,), each row's index into ``leaves``: then a chunk is searched only for the
    targets of the rows whose box touches it, and a target's voxels are kept only inside the hull of
    its own rows' boxes in that chunk (every voxel inside one of its rows' boxes is returned; some
    others may be). Without it every box is searched for every target. On a dense world this is
    what bounds memory: a partition of 50,000 rows has tens of thousands of targets, and nearly
    every voxel near any row belongs to one of them.

    ``encoded``: a dict of chunk key -> encoded bytes, read from and filled (one kernel call's
    passes read each chunk once).

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
    flat = np.concatenate(leaves) if leaves else np.zeros(0, np.uint64)
    n_leaves = np.array([len(x) for x in leaves], dtype=np.int64)
    first_leaf = np.cumsum(n_leaves) - n_leaves
    if row_owner is None:  # one table for every chunk (else each chunk builds its own)
        table, table_owner = _leaf_table(flat, np.arange(len(leaves)), n_leaves, first_leaf)
    shapes = _partial.chunk_shapes(meta, pairs[starts, :3], 0)
    keys = [tuple(int(v) for v in c) for c in pairs[starts, :3]]
    encoded = {} if encoded is None else encoded
    if ra_ok and (missing := [k for k in keys if k not in encoded]):
        encoded.update(source.read_encoded_many(missing, 0))  # fetched concurrently
    out_c, out_o, out_l = [], [], []
    for s0, s1, shape in zip(starts, np.r_[starts[1:], len(pairs)], shapes):
        c = pairs[s0, :3]
        key = tuple(int(v) for v in c)
        origin = vol_lo + c * cs
        r = pairs[s0:s1, 3]
        a, b = np.maximum(lo[r] - origin, 0), np.minimum(hi[r] - origin, shape - 1)
        if row_owner is not None:  # this chunk's targets only, each inside its own rows' hull
            owners, inv = np.unique(row_owner[r], return_inverse=True)
            table, table_owner = _leaf_table(flat, owners, n_leaves[owners], first_leaf[owners])
            hull_lo = np.full((len(owners), 3), np.iinfo(np.int64).max)
            hull_hi = np.full((len(owners), 3), -1)
            np.minimum.at(hull_lo, inv.ravel(), a)
            np.maximum.at(hull_hi, inv.ravel(), b)
        ids = _needed_blocks(shape, block, a, b)
        data = encoded.get(key)
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
        own = table_owner[at]
        if row_owner is not None:
            h = np.searchsorted(owners, own)
            keep = np.all((pos[vox] >= hull_lo[h]) & (pos[vox] <= hull_hi[h]), axis=1)
            vox, own = vox[keep], own[keep]
        out_c.append(pos[vox] + origin)
        out_o.append(own)
        out_l.append(labels[vox])
    if not out_c:
        return (np.zeros((0, 3), np.int64), np.zeros(0, np.int64)) + ((np.zeros(0, np.uint64),) if with_labels else ())
    found = np.concatenate(out_c), np.concatenate(out_o)
    return found + ((np.concatenate(out_l).astype(np.uint64, copy=False),) if with_labels else ())


def _leaf_table(flat: np.ndarray, owners: np.ndarray, n_leaves: np.ndarray, first_leaf: np.ndarray):
    """(leaves, owner) of the targets ``owners``, sorted by leaf (stable: owners in order among
    equal leaves); ``flat`` holds every target's leaves back to back, target i's ``n_leaves[i]``
    of them from ``first_leaf[i]``."""
    total = int(n_leaves.sum())
    idx = np.repeat(first_leaf - (np.cumsum(n_leaves) - n_leaves), n_leaves) + np.arange(total)
    table, table_owner = flat[idx], np.repeat(owners, n_leaves)
    order = np.argsort(table, kind="stable")
    return table[order], table_owner[order]


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


#: box voxels (summed over rows) searched at once; bounds a task's candidate arrays (~40 B per voxel)
GROUP_VOXELS = 8_000_000


def _radii(r: float, res: np.ndarray) -> list[float]:
    """Search radii of the passes: r/4, r/2, r, skipping those under one voxel's largest side."""
    return [x for x in (r / 4, r / 2) if x >= float(res.max())] + [r]


def _primary(erode):
    """The voxel set a non-final pass may settle rows with: the eroded one when eroding (the
    fallback to uneroded voxels is decided only at the full radius)."""
    return True if erode == "fallback" else erode


def _groups(rows: np.ndarray, radius: float, res: np.ndarray):
    """``rows`` in consecutive groups whose search boxes hold at most ``GROUP_VOXELS`` voxels."""
    per_row = int(np.prod(np.floor(2 * radius / res) + 3))
    step = max(1, GROUP_VOXELS // per_row)
    for a in range(0, len(rows), step):
        yield rows[a:a + step]


def _search(source, locs_nm, which, leaves, rows, radius, erode, res, bounds, encoded):
    """Snap ``rows`` within ``radius`` on the numpy pipeline (encodings other than
    compressed_segmentation), all their targets at once (``which``: each row's index into
    ``leaves``): (rows hit, their xyz nm, distances, status codes, labels)."""
    lo_v = np.maximum(np.floor((locs_nm[rows] - radius) / res).astype(np.int64) - 1, bounds[0])
    hi_v = np.minimum(np.floor((locs_nm[rows] + radius) / res).astype(np.int64) + 1, bounds[1] - 1)
    reach = np.all(hi_v >= lo_v, axis=1)  # balls wholly outside the volume find nothing
    rows, lo_v, hi_v = rows[reach], lo_v[reach], hi_v[reach]
    present, tinv = np.unique(which[rows], return_inverse=True)
    tinv = tinv.ravel()
    chosen = [leaves[i] for i in present.tolist()]
    coords, owner, label = _target_voxels(source, lo_v, hi_v, chosen, with_labels=True, row_owner=tinv,
                                          encoded=encoded)
    # the voxels sorted by (target, x, y, z), eroded; the nearest centre of each row's own target
    # (the first in x, y, z order among equally near ones)
    order, interior = sorted_voxels(coords, owner, len(present), bool(erode))
    hits: list = [[], [], [], [], []]
    grows, rown = rows, tinv
    for code, pick in ((SNAPPED, order[interior] if erode else order),
                       (SNAPPED_UNERODED, order if erode == "fallback" else None)):
        if pick is None or not grows.size:
            break
        cand = coords[pick]
        j, d2 = _nearest_many(locs_nm[grows], cand, res, radius, rown, owner[pick])
        hit = j >= 0
        for acc, v in zip(hits, (grows[hit], cand[j[hit]] * res, np.sqrt(d2[hit]),
                                 np.full(int(hit.sum()), code, np.int8), label[pick[j[hit]]])):
            acc.append(v)
        grows, rown = grows[~hit], rown[~hit]  # erosion left nothing in these balls: the fallback's turn
    if not hits[0]:
        return rows[:0], np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int8), np.zeros(0, np.uint64)
    return tuple(np.concatenate(h) for h in hits)


def _search_compiled(source, locs_nm, which, leaves, todo, r, erode, res, bounds, encoded, results) -> None:
    """Snap rows ``todo`` with the compiled search (``_snap_numba``), in groups of rows sorted by
    the chunk under them (a group's chunks are joined into one array of words), writing into
    ``results`` = (out, dist, status, under)."""
    out, dist, status, under = results
    if not todo.size:
        return
    cs = np.array(source.meta.chunk_size[0], dtype=np.int64)
    c = (np.clip(nm_to_voxels(locs_nm[todo], res), bounds[0], bounds[1] - 1) - bounds[0]) // cs
    span = c.max(axis=0) + 1
    todo = todo[np.argsort(c[:, 0] + span[0] * (c[:, 1] + span[1] * c[:, 2]), kind="stable")]
    present, tinv = np.unique(which[todo], return_inverse=True)
    chosen = [leaves[i] for i in present.tolist()]
    tinv = tinv.ravel()
    radii = _radii(r, res)
    groups = list(_groups(np.arange(len(todo)), r, res))
    vol_lo = np.asarray(bounds[0], np.int64)
    keys = [box_chunks(*_snap_numba.boxes(locs_nm[todo[g]], r, res, bounds), vol_lo, cs) for g in groups]
    for i in stream_groups(source, keys, encoded):  # group i's chunks are here; later groups' on the way
        g = groups[i]
        rows = todo[g]
        vox, d2, code, label = _snap_numba.search(source, locs_nm[rows], tinv[g], chosen, radii, erode, res,
                                                  bounds, encoded)
        hit = code >= 0
        rows = rows[hit]
        out[rows], dist[rows], status[rows], under[rows] = vox[hit] * res, np.sqrt(d2[hit]), code[hit], label[hit]


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
    encoded: dict = {}  # the encoded chunks this call has read, for its searches
    uniq, which = np.unique(targets, return_inverse=True)
    which = which.ravel()
    with in_background(_prefetch_leaves, spec, uniq):  # the leaves request while the chunks are read
        sv = labels_under(source, vox, encoded)
    under = sv.copy()  # the supervoxel under each returned location
    leaves = [_target_leaves(spec, t) for t in uniq.tolist()]
    on = member(sv, which, leaves) & (sv != 0)
    status[on], dist[on] = ON_TARGET, 0.0
    skip = ~on & (sv == 0) & (not snap_zero)
    status[skip] = np.where(inside[skip], BACKGROUND, OUT_OF_BOUNDS)
    todo = np.flatnonzero(~on & ~skip)
    r = float(search_radius)
    if _partial._random_access_ok(meta, 0):  # compiled, row by row, straight from the encoded words
        _search_compiled(source, locs_nm, which, leaves, todo, r, erode, res, bounds, encoded,
                         (out, dist, status, under))
        todo = todo[:0]
    for radius in _radii(r, res):
        # 2.-3. in passes of growing radius: a row whose nearest (eroded) voxel lies within a
        #    smaller ball is settled exactly there (every voxel at least as near is inside it), so
        #    rows near their target, the common case, never read the full ball. Rows go in groups
        #    of bounded box volume (memory stays bounded on a dense world).
        final = radius == r
        left = []
        for rows in _groups(todo, radius, res):
            got = _search(source, locs_nm, which, leaves, rows, radius, erode if final else _primary(erode),
                          res, bounds, encoded)
            hit_rows, xyz, d, code, label = got
            out[hit_rows], under[hit_rows], dist[hit_rows], status[hit_rows] = xyz, label, d, code
            left.append(np.setdiff1d(rows, hit_rows, assume_unique=True))
        todo = np.concatenate(left) if left else todo[:0]
        if not todo.size:
            break
    missed = np.flatnonzero(status == NOT_FOUND)
    status[missed] = np.where(inside[missed], NOT_FOUND, OUT_OF_BOUNDS)
    return Snapped(out, dist, status, under)
