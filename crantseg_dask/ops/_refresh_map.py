"""The steps ``refresh_roots`` maps rows with, on plain numpy and a source: which unique roots
are not alive at a time (``_unique_roots``, ``_not_alive``), which rows hold an expired root and
their supervoxels (``_rows_and_supervoxels``), the successors of (root, supervoxel) pairs
(``_successors``, asked once each over the waves: ``_Memo``) and their application to the root
columns (``_apply``)."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from ..errors import UnknownIDError
from ._refresh_kernel import _chunk_runs, _unique_pairs, rows_holding

class _Memo:
    """``fn`` of unique (root, supervoxel) pairs (an (N, 2) uint64 array, one value per pair),
    each pair computed once over the calls: the pairs known already are looked up."""

    def __init__(self, fn):
        self.fn = fn
        self.pairs = np.zeros((0, 2), np.uint64)
        self.values = np.zeros(0, np.uint64)

    def seed(self, pairs: np.ndarray, values: np.ndarray) -> None:
        """Known answers: ``values`` of the unique ``pairs`` (before any call)."""
        self.pairs, self.values = np.asarray(pairs, np.uint64), np.asarray(values, np.uint64)

    def __call__(self, pairs: np.ndarray) -> np.ndarray:
        k = len(self.pairs)
        # factorized in order of first appearance: a pair known already gets its index among them
        code = _unique_pairs(np.concatenate([self.pairs, pairs]))[1].ravel()[k:] if k else np.full(len(pairs), k)
        out = np.zeros(len(pairs), np.uint64)
        hit = code < k
        out[hit] = self.values[code[hit]]
        if (~hit).any():
            out[~hit] = self.fn(pairs[~hit])
            self.pairs = np.concatenate([self.pairs, pairs[~hit]])
            self.values = np.concatenate([self.values, out[~hit]])
        return out


def _unique_roots(columns: list[np.ndarray]) -> np.ndarray:
    """The sorted unique non-zero values of ``columns`` (one hash pass per column)."""
    if not columns:
        return np.zeros(0, np.uint64)
    allr = np.unique(np.concatenate([np.asarray(pd.unique(c), dtype=np.uint64) for c in columns]))
    return allr[allr != 0]


def _not_alive(allr: np.ndarray, window: np.ndarray, source, t0: datetime, step: int, pool) -> np.ndarray:
    """The roots ``allr`` not in ``window`` that are not alive at ``t0`` (or not roots at all):
    ``is_latest`` in batches on ``pool``."""
    layout = source.meta.layout
    rest = allr[~np.isin(allr, window)]
    bad = rest[layout.layer(rest) != layout.n_layers]  # not root IDs at all
    rest = rest[layout.layer(rest) == layout.n_layers]
    if rest.size:
        alive = np.concatenate(list(pool.map(lambda b: np.asarray(source.is_latest(b, t0), bool),
                                             _pieces(rest, step))))
        bad = np.union1d(bad, rest[~alive])
    return bad


def _apply(roots: dict[str, np.ndarray], found: dict, mapping, inplace) -> tuple[dict, dict]:
    """Give the rows ``found[col] = (rows, supervoxels)`` of each column their new roots:
    ``mapping`` of the unique (root, supervoxel) pairs, once each over every column; in place in
    the writable columns of ``inplace`` (True: every column), in a copy elsewhere."""
    keys = [np.stack([r[found[col][0]], found[col][1]], axis=1) for col, r in roots.items()]
    pairs = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
    uniq_pairs, inverse = _unique_pairs(pairs)  # (root, supervoxel) once each
    mapped = (mapping(uniq_pairs) if len(uniq_pairs) else np.zeros(0, np.uint64))[inverse.ravel()]
    new, touched, changed, before, at = {}, {}, {}, {}, 0
    for col, r in roots.items():
        rows = found[col][0]
        values, old = mapped[at: at + len(rows)], r[rows]
        at += len(rows)
        moved = values != old
        here = inplace is True or col in inplace
        out = r if here and r.flags.writeable else r.copy()
        out[rows] = values
        new[col] = out
        touched[col] = rows
        changed[col], before[col] = rows[moved], old[moved]
    expired = np.unique(pairs[:, 0]) if len(pairs) else np.zeros(0, np.uint64)
    return new, {"touched": touched, "changed": changed, "previous": before, "expired": expired}


def _left(new: dict[str, np.ndarray], touched: dict[str, np.ndarray], outdated: np.ndarray) -> int:
    """Touched rows still on one of the ``outdated`` roots (no successor found)."""
    return sum(int(np.isin(new[c][touched[c]], outdated).sum()) for c in new)


def _pieces(ids: np.ndarray, step: int) -> list[np.ndarray]:
    return [ids[i: i + step] for i in range(0, len(ids), max(int(step), 1))]


def _successors(pairs: np.ndarray, source, spec, t1: datetime, stop_layer: int, pool, step: int) -> np.ndarray:
    """Root at ``t1`` of each (root, supervoxel) pair whose root is outdated at ``t1``:
    ``update_ids``' rule without its current-ness check (the window expired these roots): the
    supervoxel's root at ``t1`` where there is a supervoxel and it has a root, else the root's
    successor by overlap (``overlap_kernel``). Requests in batches, in parallel on ``pool``."""
    from .updates import OVERLAP_BATCH, overlap_kernel

    new = np.zeros(len(pairs), np.uint64)
    sv = pairs[:, 1]
    has = sv != 0
    if has.any():
        svu, at = np.unique(sv[has], return_inverse=True)
        got = list(pool.map(lambda b: np.asarray(source.roots(b, t1), np.uint64), _pieces(svu, step)))
        new[has] = np.concatenate(got)[at.ravel()]
    rest = new == 0
    if rest.any():
        ru, at = np.unique(pairs[rest, 0], return_inverse=True)
        got = list(pool.map(lambda b: overlap_kernel(b, spec, t1, stop_layer), _pieces(ru, OVERLAP_BATCH)))
        new[rest] = np.concatenate(got)["new_id"][at.ravel()]
    return new


def _rows_and_supervoxels(roots: np.ndarray, ids: np.ndarray, supervoxels,
                          within: tuple[int, np.ndarray] | None = None,
                          rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``roots`` holding one of ``ids`` (or the ``rows`` given) and their supervoxels
    (0 without a column); ``within = (size, chunks)``: looked for in those length-``size``
    chunks only."""
    if rows is None and within is None:
        rows = rows_holding(roots, ids)
    elif rows is None:
        size, chunks = within
        parts = [rows_holding(roots[lo * size: hi * size], ids) + lo * size
                 for lo, hi in _chunk_runs(np.asarray(chunks, np.int64))]
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if supervoxels is None:
        return rows, np.zeros(len(rows), np.uint64)
    sv = supervoxels(rows) if callable(supervoxels) else supervoxels[rows]
    return rows, np.asarray(sv, dtype=np.uint64)


def _known(source, root: int) -> bool:
    """Whether the dataset knows ``root`` as a root (one request)."""
    layout = source.meta.layout
    if layout.layer(np.array([root], np.uint64))[0] != layout.n_layers:
        return False
    try:
        source.root_timestamps(np.array([root], np.uint64))
    except UnknownIDError:
        return False
    return True
