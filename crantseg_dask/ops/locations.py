"""Locations to supervoxels and roots, as chunked Dask graphs.

The steps (DESIGN.md section 2; dask-image's ``map_coordinates`` pattern):

1. validate the locations once, at the boundary (``_validate.as_locations``), before any read;
2. key each point by the storage chunk holding it at the requested mip, sort, and split into
   partitions of at most ``crantseg.partition-size`` rows that keep a chunk's points together
   (``_chunking.plan_partitions``);
3. one task per partition: ``supervoxels_kernel`` reads each touched chunk once
   (``SegmentationSource.supervoxels_at``); roots go through the shared deduplicating
   ``ops.mapping.roots_kernel``;
4. one final task puts the results back into input order.

crantpy reads one voxel per point (about 1 s per point against the real servers) and turns every
error into ID 0; here a failed read raises ``SourceError``.
"""
from __future__ import annotations

import operator
import uuid
import warnings
from datetime import datetime
from typing import Any

import dask.array as da
import numpy as np
from dask import delayed
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .._chunking import Plan, chunk_keys, nm_to_voxels, plan_partitions
from .._graph import compute
from .._validate import as_coordinates, as_locations
from ..config import setting
from ..errors import InvalidLocationError
from ..sources import SourceSpec, open_source
from ..sources.resolve import resolve_dataset, resolve_timestamp
from .extent import OutsideVolumeWarning, outside_message, warn_outside
from .mapping import roots_graph, roots_kernel

__all__ = ["locs_to_segments", "locs_to_segments_graph", "locs_to_supervoxels",
           "locs_to_supervoxels_graph", "plan_locations", "supervoxels_kernel"]


# -- kernels ----------------------------------------------------------------------------------
def _check_finite(locs_nm: np.ndarray) -> None:
    """Only reachable through the lazy API on Dask input (eager input is validated up front)."""
    if not np.isfinite(locs_nm).all():
        row = int(np.argmax(~np.isfinite(locs_nm).all(axis=1)))
        raise InvalidLocationError(f"locs block row {row} = {tuple(locs_nm[row].tolist())!r}: "
                                   "coordinates must be finite")


def supervoxels_kernel(locs_nm: np.ndarray, spec: SourceSpec, mip: int) -> np.ndarray:
    """Supervoxel under each nm location of one block, (K,) uint64 in block order.

    ``floor(nm / resolution[mip])`` gives the voxel; points outside the volume and background give
    0; the source reads each touched storage chunk once. A failed read raises ``SourceError``.
    The roots of these supervoxels come from ``ops.mapping.roots_kernel``.

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.locations import supervoxels_kernel
    >>> supervoxels_kernel(np.array([[4232.0, 4904.0, 1701.0], [0.0, 0.0, 0.0]]), resolve_dataset("tiny"), 0)
    array([72198469099454522,                 0], dtype=uint64)
    """
    locs_nm = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3)
    _check_finite(locs_nm)
    if len(locs_nm) == 0:
        return np.zeros(0, dtype=np.uint64)
    source = open_source(spec)
    return _voxels_block(nm_to_voxels(locs_nm, source.meta.resolution[mip]), spec, mip)


def _voxels_block(voxels: np.ndarray, spec: SourceSpec, mip: int) -> np.ndarray:
    """Supervoxel at each absolute voxel (K, 3) int64 at ``mip``, (K,) uint64; 0 outside."""
    if len(voxels) == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.asarray(open_source(spec).supervoxels_at(voxels, mip), dtype=np.uint64)


def _restore(blocks: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """Per-partition values (sorted order) into input order: ``out[order] = values``."""
    out = np.empty(len(order), dtype=blocks[0].dtype if blocks else np.uint64)
    out[order] = np.concatenate(blocks) if blocks else out[:0]
    return out


def _rows(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take(a, index, axis=0)  # rows of a C array: 4-8x a[index]


# -- shuffle kernels (lazy API over Dask arrays) --------------------------------------------------
def _block_keys(locs_nm: np.ndarray, spec: SourceSpec, mip: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 voxels, storage-chunk keys; -1 outside the volume) of one block's rows."""
    locs_nm = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3)
    _check_finite(locs_nm)
    meta = open_source(spec).meta
    vox = nm_to_voxels(locs_nm, meta.resolution[mip], np.int32)
    return vox, chunk_keys(vox, meta.bounds(mip), meta.chunk_size[mip])


def _key_counts(locs_nm: np.ndarray, spec: SourceSpec, mip: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage 0: one block's distinct chunk keys (inside the volume) and their row counts."""
    keys = _block_keys(locs_nm, spec, mip)[1]
    return np.unique(keys[keys >= 0], return_counts=True)


def _bucket_table(counts: list, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct chunk keys, bucket of each): contiguous key ranges holding about equal
    numbers of rows (the data's quantiles, so clustered points still spread over every bucket).
    A chunk is never split, so each chunk is read by one task."""
    keys = np.concatenate([k for k, _ in counts]) if counts else np.zeros(0, np.int64)
    cnt = np.concatenate([c for _, c in counts]) if counts else np.zeros(0, np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    per_key = np.bincount(inv.ravel(), weights=cnt, minlength=len(uniq)).astype(np.int64)
    before = np.cumsum(per_key) - per_key
    total = max(int(per_key.sum()), 1)
    return uniq, np.minimum(before * n_buckets // total, n_buckets - 1)


def _bucket_block(locs_nm: np.ndarray, spec: SourceSpec, mip: int, table, n_buckets: int):
    """Stage 1: one input block -> (its length, per bucket (row positions, int32 voxels)).

    ``table`` (``_bucket_table``) gives each chunk key its bucket. Rows outside the volume are in
    no bucket (their value is 0)."""
    vox, keys = _block_keys(locs_nm, spec, mip)
    uniq, bucket_of = table
    pos = np.clip(np.searchsorted(uniq, keys), 0, max(len(uniq) - 1, 0))
    bucket = np.where(keys >= 0, bucket_of[pos] if len(uniq) else -1, -1)
    order = np.argsort(bucket, kind="stable")
    edges = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
    return len(vox), [(order[a:b], vox[order[a:b]]) for a, b in zip(edges[:-1], edges[1:])]


def _piece(stage1, b: int):
    return stage1[1][b]


def _lookup_bucket(pieces, spec: SourceSpec, mip: int, roots):
    """Stage 2: every block's rows of one bucket -> their values, split back per block."""
    counts = [len(rows) for rows, _ in pieces]
    vox = np.concatenate([v for _, v in pieces]) if pieces else np.zeros((0, 3), np.int32)
    values = _voxels_block(vox, spec, mip)
    if roots is not None:
        values = roots_kernel(values, spec, *roots)
    return np.split(values, np.cumsum(counts)[:-1])


def _gather_block(stage1, parts) -> np.ndarray:
    """Stage 3: one output block in its input order from every bucket's share."""
    out = np.zeros(stage1[0], dtype=np.uint64)
    for (rows, _), values in zip(stage1[1], parts):
        out[rows] = values
    return out


def _shuffle_graph(locs: da.Array, spec: SourceSpec, mip: int, roots, n_buckets: int) -> da.Array:
    """Lookups over a Dask array with each storage chunk read once: blocks -> chunk-range buckets
    -> blocks (two all-to-all stages of small getitem tasks; output chunks follow the input).
    Bucket ranges come from the rows' chunk-key counts (one small task over every block's
    counts), so each bucket gets about N / n_buckets rows however clustered the points are."""
    token = tokenize(locs, spec, mip, roots, n_buckets)
    kc, t, a, ab, b, ba, c = (f"locs-{s}-{token}" for s in ("keys", "edges", "bucket", "piece", "lookup",
                                                            "share", "gather"))
    keys = [k for k in locs.__dask_keys__()]
    n_in = len(keys)
    graph = {(t, 0): (_bucket_table, [(kc, i) for i in range(n_in)], n_buckets)}
    for i, k in enumerate(keys):
        k = k[0] if isinstance(k, list) else k
        graph[(kc, i)] = (_key_counts, k, spec, mip)
        graph[(a, i)] = (_bucket_block, k, spec, mip, (t, 0), n_buckets)
        for j in range(n_buckets):
            graph[(ab, i, j)] = (_piece, (a, i), j)
    for j in range(n_buckets):
        graph[(b, j)] = (_lookup_bucket, [(ab, i, j) for i in range(n_in)], spec, mip, roots)
        for i in range(n_in):
            graph[(ba, j, i)] = (operator.getitem, (b, j), i)
    for i in range(n_in):
        graph[(c, i)] = (_gather_block, (a, i), [(ba, j, i) for j in range(n_buckets)])
    hlg = HighLevelGraph.from_collections(c, graph, dependencies=[locs])
    return da.Array(hlg, c, chunks=(locs.chunks[0],), dtype=np.uint64, meta=np.empty((0,), np.uint64))


def _dask_locs(locs: da.Array) -> da.Array:
    if locs.ndim != 2 or locs.shape[1] != 3:
        raise InvalidLocationError(f"`locs` has shape {locs.shape}; expected (N, 3) rows of [x, y, z]")
    return locs.astype(np.float64).rechunk({1: 3})


def _n_buckets(locs: da.Array, partition_size: int | None) -> int:
    """ceil(N / partition size) buckets; the number of blocks when N is unknown."""
    n = locs.shape[0]
    if np.isnan(n):
        return max(1, locs.numblocks[0])
    return max(1, -(-int(n) // _partition_size(partition_size)))


# -- planning ---------------------------------------------------------------------------------
def _partition_size(value: int | None = None) -> int:
    """Rows per partition: ``value`` or the ``crantseg.partition-size`` setting (>= 1)."""
    v = setting("partition-size", 200_000) if value is None else value
    try:
        v = int(v)
    except (TypeError, ValueError):
        v = 0
    if v < 1:
        raise ValueError(f"partition size {value if value is not None else v!r} must be an integer >= 1 "
                         "(argument partition_size= or setting crantseg.partition-size)")
    return v


def plan_locations(locs_nm: np.ndarray, spec: SourceSpec, mip: int = 0,
                   partition_size: int | None = None) -> tuple[Plan, np.ndarray]:
    """Partition plan of (N, 3) nm locations by storage chunk at ``mip`` (client side, numpy),
    and the (N, 3) int32 voxels at ``mip`` in input order (clipped far outside any volume).

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.locations import plan_locations
    >>> locs = np.array([[4232.0, 4904.0, 1701.0], [1600.0, 2600.0, 400.0], [3800.0, 5192.0, 1659.0]])
    >>> plan, voxels = plan_locations(locs, resolve_dataset("tiny"))
    >>> voxels  # floor(nm / (16, 16, 42)), input order
    array([[264, 306,  40],
           [100, 162,   9],
           [237, 324,  39]], dtype=int32)
    >>> plan.sizes, plan.order  # one partition; rows sorted by storage chunk
    ((3,), array([1, 2, 0]))
    """
    meta = open_source(spec).meta
    voxels = nm_to_voxels(locs_nm, meta.resolution[mip], np.int32)  # half the memory; volumes fit
    keys = chunk_keys(voxels, meta.bounds(mip), meta.chunk_size[mip])
    return plan_partitions(keys, _partition_size(partition_size)), voxels


def _planned_supervoxels(locs_nm: np.ndarray, spec: SourceSpec, mip: int, partition_size: int | None,
                         planned: tuple[Plan, np.ndarray] | None = None) -> tuple[da.Array, Plan]:
    """Supervoxels of validated nm locations, one task per planned partition (sorted order);
    ``planned``: ``plan_locations``' answer when the caller has it already."""
    plan, voxels = planned or plan_locations(locs_nm, spec, mip, partition_size)
    svs = _sorted_array(voxels, plan).map_blocks(
        _voxels_block, spec=spec, mip=mip, drop_axis=1, dtype=np.uint64,
        meta=np.empty((0,), np.uint64))
    return svs, plan


def _sorted_array(a: np.ndarray, plan: Plan) -> da.Array:
    """``a`` (N, ...) in plan order as a Dask array with one block per partition; each block's rows
    are gathered by its own task (in parallel with the others' reads, not before the graph runs)."""
    a = np.ascontiguousarray(a)
    name, src = f"sorted-rows-{uuid.uuid4().hex}", f"rows-{uuid.uuid4().hex}"  # no hashing of (N,) arrays
    off = plan.offsets.tolist()
    graph = {src: a} | {(name, i) + (0,) * (a.ndim - 1): (_rows, src, plan.order[off[i]:off[i + 1]])
                        for i in range(plan.n_partitions)}
    return da.Array(graph, name, chunks=(plan.sizes,) + tuple((n,) for n in a.shape[1:]), dtype=a.dtype)


def _restore_graph(sorted_values: da.Array, plan: Plan) -> da.Array:
    """One task that puts per-partition results (sorted order) back into input order."""
    blocks = sorted_values.to_delayed().ravel().tolist()
    out = delayed(_restore, pure=False)(blocks, plan.order)  # a random key: no hashing of the (N,) order
    return da.from_delayed(out, shape=(len(plan.order),), dtype=sorted_values.dtype)


def _open(dataset: Any) -> tuple[SourceSpec, Any]:
    spec = resolve_dataset(dataset)
    return spec, open_source(spec)


def _warn_planned(locs_nm: np.ndarray, meta, mip: int, coordinates: str, planned) -> None:
    """``warn_outside`` from a plan (rows outside the volume have key -1 and sort first)."""
    plan = planned[0]
    n_out = plan.n_outside
    if n_out:
        inside = np.ones(len(plan.order), dtype=bool)
        inside[plan.order[:n_out]] = False
        warnings.warn(outside_message(locs_nm, meta, mip, coordinates, inside=inside), OutsideVolumeWarning,
                      stacklevel=3)  # the caller of the eager function


def _supervoxels_graph(locs_nm: np.ndarray, spec: SourceSpec, mip: int,
                       partition_size: int | None = None, planned=None) -> da.Array:
    if not len(locs_nm):
        return da.zeros((0,), dtype=np.uint64, chunks=((0,),))
    svs, plan = _planned_supervoxels(locs_nm, spec, mip, partition_size, planned)
    return _restore_graph(svs, plan)


def _segments_graph(locs_nm: np.ndarray, spec: SourceSpec, ts: datetime,
                    partition_size: int | None = None, planned=None) -> da.Array:
    if not len(locs_nm):
        return da.zeros((0,), dtype=np.uint64, chunks=((0,),))
    svs, plan = _planned_supervoxels(locs_nm, spec, 0, partition_size, planned)
    return _restore_graph(roots_graph(svs, spec, ts, None, int(spec.setting("batch-size", 10_000))), plan)


# -- graph builders ---------------------------------------------------------------------------
def locs_to_supervoxels_graph(locs, mip: int = 0, *, dataset=None, partition_size: int | None = None,
                              shuffle: bool = True) -> da.Array:
    """Lazy supervoxel IDs at nm locations: a uint64 Dask array of length N, input order.

    Parameters
    ----------
    locs : dask.array.Array, numpy.ndarray, array-like or pandas.DataFrame
        (N, 3) locations in nm. Anything but a Dask array is validated now, planned by storage
        chunk into partitions and restored to input order in the graph. A Dask array is
        shuffled in the graph: each block's rows go to buckets of contiguous storage chunks, cut
        at the rows' quantiles (one task per bucket reads each of its chunks once), and come
        back to the input's blocks, so the output has the input's chunks; NaN rows raise when
        computed.
    mip : int
        Scale to query.
    dataset : str or SourceSpec, optional
    partition_size : int, optional
        Rows per partition (default: setting ``crantseg.partition-size``); for Dask input,
        ceil(N / partition_size) buckets (the number of blocks when N is unknown).
    shuffle : bool
        Dask input only: False looks up each block on its own (no all-to-all stages; good when
        the blocks are already spatially compact).

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.locations import locs_to_supervoxels_graph
    >>> locs = da.from_array(np.array([[4232, 4904, 1701], [3800, 5192, 1659], [0, 0, 0]]), chunks=2)
    >>> svs = locs_to_supervoxels_graph(locs, dataset="tiny")
    >>> svs.chunks  # the input's blocks
    ((2, 1),)
    >>> svs.compute()
    array([72198469099454522, 72198469032345652,                 0], dtype=uint64)
    """
    spec, source = _open(dataset)
    mip = source.meta.check_mip(mip)
    if isinstance(locs, da.Array):
        locs = _dask_locs(locs)
        if shuffle:
            return _shuffle_graph(locs, spec, mip, None, _n_buckets(locs, partition_size))
        return locs.map_blocks(supervoxels_kernel, spec=spec, mip=mip, drop_axis=1,
                               dtype=np.uint64, meta=np.empty((0,), np.uint64))
    locs_nm = as_locations(locs)
    warn_outside(locs_nm, source.meta, mip)
    return _supervoxels_graph(locs_nm, spec, mip, partition_size)


def locs_to_segments_graph(locs, timestamp: datetime | str | int | None = None, *, dataset=None,
                           partition_size: int | None = None, shuffle: bool = True) -> da.Array:
    """Lazy root IDs at nm locations: a uint64 Dask array of length N, input order.

    ``timestamp`` is resolved once, here (None = now). Supervoxels come from mip 0; each
    partition's supervoxels are deduplicated before the roots request (``roots_kernel``).
    See ``locs_to_supervoxels_graph`` for ``locs``, ``partition_size`` and ``shuffle``.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.locations import locs_to_segments_graph
    >>> locs = da.from_array(np.array([[4232, 4904, 1701], [3800, 5192, 1659], [0, 0, 0]]), chunks=2)
    >>> locs_to_segments_graph(locs, timestamp="mat", dataset="tiny").compute()
    array([576460752373423809, 576460752373423807,                  0], dtype=uint64)
    """
    spec, source = _open(dataset)
    ts = resolve_timestamp(timestamp, source)
    batch = int(spec.setting("batch-size", 10_000))
    if isinstance(locs, da.Array):
        locs = _dask_locs(locs)
        if shuffle:
            return _shuffle_graph(locs, spec, 0, (ts, None, batch), _n_buckets(locs, partition_size))
        return roots_graph(locs_to_supervoxels_graph(locs, 0, dataset=spec, shuffle=False), spec, ts,
                           None, batch)
    locs_nm = as_locations(locs)
    warn_outside(locs_nm, source.meta, 0)
    return _segments_graph(locs_nm, spec, ts, partition_size)


# -- eager API --------------------------------------------------------------------------------
def locs_to_supervoxels(locs, mip: int = 0, coordinates: str = "nm", progress: bool = True, *,
                        dataset=None) -> np.ndarray:
    """Supervoxel IDs at given locations.

    Parameters
    ----------
    locs : array-like (N, 3) or pandas.DataFrame
        x/y/z locations; a DataFrame must have ``x``, ``y``, ``z`` columns. One point ``[x, y, z]``
        is read as (1, 3).
    mip : int
        Scale to query (0 = 16 x 16 x 42 nm). Higher mips read less but small supervoxels may
        vanish there.
    coordinates : {"nm", "voxel"}
        Units of ``locs``: nanometres, or voxels of the viewer grid (8 x 8 x 42 nm), which are
        multiplied by the viewer resolution first. "nanometer(s)" and "voxels" are accepted too.
    progress : bool
        Show a progress bar (local schedulers).
    dataset : str or SourceSpec, optional
        Dataset (default: setting ``crantseg.dataset``).

    Returns
    -------
    numpy.ndarray of uint64, shape (N,)
        Supervoxel at voxel ``floor(nm / resolution[mip])`` of each location, in input order
        (duplicates give identical IDs). Background and locations outside the volume give 0;
        outside locations are also reported (``OutsideVolumeWarning``: the count, the volume's
        extent in nm, and the other unit when most would be inside under it).

    Raises
    ------
    InvalidLocationError
        NaN/inf, a shape other than (N, 3), a DataFrame without x/y/z columns; before any read.
    InvalidInputError
        Unknown ``coordinates`` or ``mip``.
    SourceError
        A chunk could not be read (after retries). Unlike crantpy, a failed read never becomes 0.

    Examples
    --------
    >>> from crantseg_dask import locs_to_supervoxels
    >>> locs_to_supervoxels([[4232, 4904, 1701], [0, 0, 0]], dataset="tiny", progress=False)
    array([72198469099454522,                 0], dtype=uint64)

    The same place on the 8 x 8 x 42 nm viewer grid, and at mip 1 (32 x 32 x 42 nm):

    >>> locs_to_supervoxels([[529, 613, 40]], coordinates="voxel", dataset="tiny", progress=False)
    array([72198469099454522], dtype=uint64)
    >>> locs_to_supervoxels([[4232, 4904, 1701]], mip=1, dataset="tiny", progress=False)
    array([72198469099454522], dtype=uint64)
    """
    as_coordinates(coordinates)
    spec, source = _open(dataset)
    mip = source.meta.check_mip(mip)
    locs_nm = as_locations(locs, coordinates=coordinates, viewer_resolution=source.meta.viewer_resolution)
    if not len(locs_nm):
        return np.zeros(0, dtype=np.uint64)
    planned = plan_locations(locs_nm, spec, mip)
    _warn_planned(locs_nm, source.meta, mip, coordinates, planned)
    (out,) = compute(_supervoxels_graph(locs_nm, spec, mip, planned=planned), progress=progress,
                     desc="locs_to_supervoxels")
    return np.asarray(out, dtype=np.uint64)


def locs_to_segments(locs, timestamp=None, coordinates: str = "nm", progress: bool = True, *,
                     dataset=None) -> np.ndarray:
    """Root IDs at given locations.

    Parameters
    ----------
    locs : array-like (N, 3) or pandas.DataFrame
        x/y/z locations (see ``locs_to_supervoxels``); always looked up at mip 0.
    timestamp : None, str, int, datetime
        Roots at this time, resolved once before any task runs: None = now, "mat"/"mat_latest" =
        latest materialization, "mat_<N>" = version N, ISO 8601 (naive = UTC), unix seconds.
    coordinates : {"nm", "voxel"}
        Units of ``locs`` (voxels are on the 8 x 8 x 42 nm viewer grid).
    progress : bool
        Show a progress bar.
    dataset : str or SourceSpec, optional

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        Root at ``timestamp`` of the supervoxel under each location, in input order; 0 for
        background and locations outside the volume.

    Raises
    ------
    InvalidLocationError, InvalidInputError, InvalidTimestampError
        Bad locations, units or timestamp; before any read.
    SourceError
        A chunk or roots request failed after retries (never turned into 0).

    Examples
    --------
    >>> from crantseg_dask import locs_to_segments
    >>> locs = [[4232, 4904, 1701], [3800, 5192, 1659], [0, 0, 0]]
    >>> locs_to_segments(locs, dataset="tiny", progress=False)  # now
    array([576460752373423816, 576460752373423813,                  0])
    >>> locs_to_segments(locs, timestamp="mat", dataset="tiny", progress=False)  # latest materialization
    array([576460752373423809, 576460752373423807,                  0])
    """
    as_coordinates(coordinates)
    spec, source = _open(dataset)
    ts = resolve_timestamp(timestamp, source)
    locs_nm = as_locations(locs, coordinates=coordinates, viewer_resolution=source.meta.viewer_resolution)
    if not len(locs_nm):
        return np.zeros(0, dtype=np.int64)
    planned = plan_locations(locs_nm, spec, 0)
    _warn_planned(locs_nm, source.meta, 0, coordinates, planned)
    (out,) = compute(_segments_graph(locs_nm, spec, ts, planned=planned), progress=progress,
                     desc="locs_to_segments")
    return np.asarray(out).astype(np.int64)
