"""Plan point work by storage chunk: key rows, sort, split into partitions, invert (pure numpy).

The location operations answer many points from few chunk reads. On the client, before any
task runs, each row is keyed by the storage chunk holding it (``chunk_keys``); the rows are
sorted by key and split into partitions of at most ``partition_size`` rows that keep one chunk's
rows in one partition whenever the chunk has no more rows than that (``plan_partitions``). One
Dask task answers one partition; ``Plan.order`` maps sorted positions to input rows, so results
go back into input order with ``out[plan.order] = sorted_results`` (or ``sorted[plan.inverse]``).
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["Plan", "chunk_keys", "nm_to_voxels", "pack_coords", "plan_partitions"]

_PACK_BITS = 21  # per axis: three axes fit one int64


def pack_coords(coords: np.ndarray, lo) -> np.ndarray:
    """One int64 per (x, y, z) row, equal iff the rows are equal, ordered like the rows
    lexicographically. Coordinates are taken relative to ``lo`` (e.g. the volume's lower bound,
    which may be negative), and ``coords - lo`` must lie in [0, 2**21) per axis.

    Raises ``ValueError`` when a row falls outside that range (packing would collide)."""
    c = np.asarray(coords, dtype=np.int64).reshape(-1, 3) - np.asarray(lo, dtype=np.int64).reshape(1, 3)
    if c.size and (c.min() < 0 or c.max() >= 1 << _PACK_BITS):
        raise ValueError(f"coordinates span [{c.min()}, {c.max()}] relative to {list(np.ravel(lo))}; "
                         f"packing needs [0, 2**{_PACK_BITS})")
    return (c[:, 0] << 2 * _PACK_BITS) | (c[:, 1] << _PACK_BITS) | c[:, 2]

def nm_to_voxels(locs_nm: np.ndarray, resolution, dtype=np.int64) -> np.ndarray:
    """Voxel index ``floor(nm / resolution)`` of each row, (N, 3) of ``dtype`` (int64 or int32).

    Values beyond the integer range (less a margin) are clipped: they are outside any volume
    anyway, and no float to int cast overflows.
    """
    limit = float(2**62) if np.dtype(dtype).itemsize == 8 else float(2**31 - 2)
    v = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3) / np.asarray(resolution, np.float64)
    np.floor(v, out=v)
    if v.size and (v.min() < -limit or v.max() > limit):
        np.clip(v, -limit, limit, out=v)
    return v.astype(dtype)


def chunk_keys(voxels: np.ndarray, bounds: np.ndarray, chunk_size) -> np.ndarray:
    """Linear storage-chunk key of each voxel, (N,) int64; -1 outside the volume.

    Parameters
    ----------
    voxels : (N, 3) int
        Absolute voxel coordinates at one mip.
    bounds : (2, 3) int
        Half-open voxel box ``[[lo], [hi])`` of the volume at that mip; chunks start at ``lo``.
    chunk_size : (3,) int
        Storage chunk shape at that mip.

    Returns
    -------
    (N,) int64
        ``(cx * gy + cy) * gz + cz`` for chunk grid index ``(cx, cy, cz)`` on a ``(gx, gy, gz)``
        grid, so sorting keys sorts rows x-major by chunk; -1 for rows outside ``bounds``.
    """
    v = np.asarray(voxels).reshape(-1, 3)
    lo, hi = np.asarray(bounds, dtype=np.int64)
    cs = np.asarray(chunk_size, dtype=np.int64)
    grid = -(-(hi - lo) // cs)
    key = np.zeros(len(v), dtype=np.int64)
    inside = np.ones(len(v), dtype=bool)
    for i in range(3):  # column by column: few N-sized temporaries
        col = v[:, i].astype(np.int64)
        inside &= (col >= lo[i]) & (col < hi[i])
        col -= lo[i]
        col //= cs[i]
        key *= grid[i]
        key += col
    key[~inside] = -1
    return key


class Plan:
    """How N rows are ordered and split.

    order : (N,) int64
        Input row at each sorted position (rows sorted by chunk key, stable).
    sizes : tuple of int
        Rows per partition, in sorted order; they sum to N (empty input: ``()``).
    n_outside : int
        Rows with key -1 (outside the volume); they sort first.
    inverse : (N,) int64
        Sorted position of each input row: ``sorted_values[inverse]`` is in input order (computed
        on first use: restoring by ``out[order] = sorted_values`` needs no inverse).
    keys : (N,) int64
        Chunk key at each sorted position (computed on first use).
    """

    def __init__(self, order: np.ndarray, sizes: tuple[int, ...], n_outside: int, row_keys: np.ndarray):
        self.order, self.sizes, self.n_outside = order, sizes, n_outside
        self._row_keys = row_keys

    @property
    def n_partitions(self) -> int:
        return len(self.sizes)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each partition in sorted positions, (P + 1,) with the total last."""
        return np.r_[0, np.cumsum(self.sizes, dtype=np.int64)].astype(np.int64)

    @functools.cached_property
    def inverse(self) -> np.ndarray:
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(len(self.order), dtype=np.int64)
        return inverse

    @functools.cached_property
    def keys(self) -> np.ndarray:
        return self._row_keys[self.order]

    def restore(self, sorted_values: np.ndarray) -> np.ndarray:
        """Values given in sorted order, put back into input order (a new array)."""
        sorted_values = np.asarray(sorted_values)
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out


def _split_sizes(group_sizes: np.ndarray, limit: int) -> list[int]:
    """Greedy packing of consecutive groups into partitions of at most ``limit`` rows.

    A group that fits is never split; a group larger than ``limit`` starts a new partition and
    is cut into pieces of ``limit`` rows (its remainder may share with the next groups)."""
    sizes: list[int] = []
    cur = 0
    for g in group_sizes.tolist():
        if cur and cur + g > limit:
            sizes.append(cur)
            cur = 0
        while g > limit:
            sizes.append(limit)
            g -= limit
        cur += g
    if cur:
        sizes.append(cur)
    return sizes


def _argsort_keys(keys: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Stable argsort of chunk keys, int64 (``lo``, ``hi``: their smallest and largest). Keys of
    fewer than 2**16 chunks (>= -1) sort as uint16, which numpy sorts by radix (about 8x faster
    than int64 for 10^6 rows)."""
    if lo >= -1 and hi < 2**16 - 1:
        return np.argsort((keys + 1).astype(np.uint16), kind="stable").astype(np.int64)
    return np.argsort(keys, kind="stable").astype(np.int64)


def plan_partitions(keys: np.ndarray, partition_size: int) -> Plan:
    """Sort rows by chunk key and split them into partitions of at most ``partition_size`` rows.

    Rows of one chunk stay in one partition unless the chunk alone has more than
    ``partition_size`` rows. Rows with key -1 (outside the volume) sort first and need no read.

    Parameters
    ----------
    keys : (N,) int
        Chunk key per input row (``chunk_keys``).
    partition_size : int
        Maximum rows per partition, >= 1.

    Raises
    ------
    ValueError
        ``partition_size`` < 1 or not an integer.
    """
    if isinstance(partition_size, bool) or not isinstance(partition_size, (int, np.integer)) \
            or partition_size < 1:
        raise ValueError(f"partition_size={partition_size!r} must be an integer >= 1")
    keys = np.asarray(keys, dtype=np.int64).ravel()
    if len(keys) == 0:
        return Plan(np.zeros(0, np.int64), (), 0, keys)
    lo, hi = int(keys.min()), int(keys.max())
    order = _argsort_keys(keys, lo, hi)
    if lo >= -1 and hi < 4 * len(keys) + 2**16:  # keys dense enough: count them (sorted groups)
        counts = np.bincount(keys + 1)
        n_out = int(counts[0])
        group_sizes = counts[counts > 0]
    else:
        ks = keys[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        group_sizes = np.diff(np.r_[starts, len(ks)])
        n_out = int(np.searchsorted(ks, 0))
    return Plan(order, tuple(_split_sizes(group_sizes, int(partition_size))), n_out, keys)
