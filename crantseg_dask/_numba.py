"""numba helpers shared by the compiled kernels (imported on first use, never by ``import crantseg_dask``).

``jit``: ``numba.njit(nogil=True)`` with numba's on-disk cache where it can write one.
``addresses``: where buffers lie, so a kernel reads the encoded chunks of a call in place (no
concatenating copy; the caller keeps the buffers alive).
"""
from __future__ import annotations

import numpy as np

__all__ = ["jit", "addresses"]


def jit(func):
    """``numba.njit(func)`` with ``cache=True`` and ``nogil=True``, or without the cache when numba
    finds no writable cache directory for it (a read-only install): compiled per process then."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(func)


def addresses(datas) -> np.ndarray:
    """(K,) int64 address of each buffer's first byte (bytes, bytearray or any buffer; an empty one
    gives 0, never read). The buffers must outlive every use of the addresses."""
    out = np.zeros(len(datas), dtype=np.int64)
    for k, d in enumerate(datas):
        if len(d):
            out[k] = np.frombuffer(d, dtype=np.uint8).__array_interface__["data"][0]
    return out

