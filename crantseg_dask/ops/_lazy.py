"""Checks shared by the lazy (Dask) builders."""
from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from ..errors import InvalidIDError

__all__ = ["lazy_ids"]


def _nonnegative_uint64(block: np.ndarray, name: str) -> np.ndarray:
    if block.dtype.kind == "i" and block.size and block.min() < 0:
        raise InvalidIDError(f"{name}: negative ID {int(block.min())} (IDs are unsigned)")
    return block.astype(np.uint64)


def lazy_ids(ids, name: str = "ids") -> da.Array:
    """``ids`` (a Dask array of integer IDs) as uint64, same shape and chunks.

    Raises ``InvalidIDError`` now unless the dtype is an integer type: float IDs above 2**53
    cannot be represented exactly, so casting them would silently change IDs. Negative values in
    a signed array raise ``InvalidIDError`` when their block is computed."""
    if isinstance(ids, np.ndarray):
        ids = da.from_array(ids, chunks=ids.shape or (), name=False)
    if not isinstance(ids, da.Array):
        raise InvalidIDError(f"{name} must be a dask.array.Array of integer IDs, "
                             f"got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise InvalidIDError(f"{name} has dtype {ids.dtype}: IDs must be an integer dtype "
                             "(floats cannot hold every 64-bit ID exactly)")
    if ids.dtype.kind == "u":
        return ids.astype(np.uint64)
    return ids.map_blocks(partial(_nonnegative_uint64, name=name), dtype=np.uint64)
