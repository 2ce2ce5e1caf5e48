"""The refresh's pure kernels on plain numpy: which rows hold one of a set of IDs, unique
(root, supervoxel) pairs, a root column's order-free checksum, and which chunks' value ranges can
hold an ID. ``ops/refresh.py`` builds the refresh on them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._zarr_chunks import leaf_pool

__all__ = ["rows_holding", "roots_checksum", "chunks_in_range"]


def _chunk_runs(chunks: np.ndarray) -> list[tuple[int, int]]:
    """Sorted chunk indices as half-open runs of consecutive chunks."""
    if not len(chunks):
        return []
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    return [(int(c[0]), int(c[-1]) + 1) for c in np.split(chunks, breaks)]


def rows_holding(values: np.ndarray, ids: np.ndarray, bits: int = 20, block: int = 1 << 20) -> np.ndarray:
    """Sorted indices of the entries of ``values`` (uint64) that are in ``ids``.

    A few vectorised passes, no hash table over ``values``: a lookup table on the low ``bits``
    bits of each value picks candidates (every hit, and about ``len(values) * len(ids) / 2**bits``
    others), which an exact ``isin`` then checks. Blocks of ``block`` values in parallel threads
    (numpy releases the GIL; small temporaries stay in cache instead of 10^7-entry ones)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if not len(ids) or not len(values):
        return np.zeros(0, np.int64)
    mask = (1 << bits) - 1
    lut = np.zeros(1 << bits, bool)
    lut[ids.view(np.int64) & mask] = True
    flat = values.view(np.int64)

    def one(lo: int) -> np.ndarray:
        part = flat[lo: lo + block]
        cand = np.flatnonzero(lut[part & mask])
        return cand[np.isin(part[cand], ids.view(np.int64))] + lo

    starts = range(0, len(values), block)
    if len(starts) == 1:
        return one(0)
    return np.concatenate(list(leaf_pool().map(one, starts)))


def _unique_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of an (N, 2) uint64 array and the index of each row among them (hash-based;
    ``np.unique(axis=0)`` sorts structured rows, seconds per million)."""
    ca, ua = pd.factorize(pairs[:, 0])
    cb, ub = pd.factorize(pairs[:, 1])
    inverse, keys = pd.factorize(ca.astype(np.int64) * max(len(ub), 1) + cb)
    keys = np.asarray(keys, dtype=np.int64)
    uniq = np.stack([np.asarray(ua, np.uint64)[keys // max(len(ub), 1)],
                     np.asarray(ub, np.uint64)[keys % max(len(ub), 1)]], axis=1) if len(keys) else pairs[:0]
    return uniq.astype(np.uint64), inverse


def roots_checksum(values: np.ndarray) -> list[int]:
    """An order-free fingerprint of a root column: row count, sum and xor of its values (mod
    2**64). A table edited after its last refresh (rows added, roots replaced) almost surely
    fails to match, so its roots are checked again; reordering rows (harmless) matches."""
    v = np.ascontiguousarray(values).view(np.uint64)
    return [len(v), int(np.add.reduce(v, dtype=np.uint64)), int(np.bitwise_xor.reduce(v)) if len(v) else 0]


def chunks_in_range(ranges: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices of the chunks whose [smallest, largest] value range (rows of ``ranges``,
    uint64) holds at least one of ``ids``."""
    ids = np.sort(np.asarray(ids, dtype=np.uint64))
    ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
    if not len(ids):
        return np.zeros(0, np.int64)
    first = np.searchsorted(ids, ranges[:, 0], side="left")  # the first id >= each chunk's smallest
    return np.flatnonzero((first < len(ids)) & (ids[np.minimum(first, len(ids) - 1)] <= ranges[:, 1]))
