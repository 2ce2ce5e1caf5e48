"""Dedupe, drop zeros, batch and scatter back: the one helper every per-ID operation uses.

An operation over node IDs asks the source once per *unique* ID (0 is never asked: it is
background and answers ``fill``), in batches of at most ``batch_size`` IDs, and scatters the
answers back into the input's shape and order, duplicates included.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["map_unique", "batches"]


def batches(n: int, batch_size: int | None):
    """Slices of ``range(n)`` of at most ``batch_size`` items (None: one slice)."""
    step = max(1, int(batch_size)) if batch_size else max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def map_unique(ids, fn: Callable[[np.ndarray], np.ndarray], *, dtype=np.uint64, fill=0,
               batch_size: int | None = None, drop_zero: bool = True, what: str = "answer") -> np.ndarray:
    """``fn`` over the unique IDs of ``ids``, scattered back into ``ids``' shape and order.

    Parameters
    ----------
    ids : array-like of uint64
        IDs of any shape.
    fn : callable
        Takes a sorted unique uint64 array (at most ``batch_size`` long) and returns one value per ID.
    dtype, fill
        The output's dtype, and the value of a 0 ID (when ``drop_zero``).
    batch_size : int, optional
        Largest array ``fn`` is given (None: all unique IDs at once).
    drop_zero : bool
        0 is not given to ``fn`` and answers ``fill``.
    what : str
        Names ``fn``'s answer in the error raised when it has the wrong length.

    Examples
    --------
    >>> map_unique([[5, 0], [5, 7]], lambda u: u * 10)
    array([[50,  0],
           [50, 70]], dtype=uint64)
    """
    ids = np.asarray(ids, dtype=np.uint64)
    uniq, inverse = np.unique(ids.ravel(), return_inverse=True)
    out = np.full(uniq.shape, fill, dtype=dtype)
    asked = np.flatnonzero(uniq) if drop_zero else np.arange(len(uniq))
    for part in batches(len(asked), batch_size):
        rows = asked[part]
        got = np.asarray(fn(uniq[rows]))
        if got.shape[:1] != rows.shape:
            raise ValueError(f"{what}: {len(got)} values for {len(rows)} IDs")
        out[rows] = got
    return out[inverse.ravel()].reshape(ids.shape)
