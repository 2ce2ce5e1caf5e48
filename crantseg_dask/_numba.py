"""numba helpers shared by the compiled kernels (imported on first use, never by ``import crantseg_dask``).

``jit``: ``numba.njit(nogil=True)`` with numba's on-disk cache where it can write one.
``addresses``: where buffers lie, so a kernel reads the encoded chunks of a call in place (no
concatenating copy; the caller keeps the buffers alive).
"""
from __future__ import annotations

import ctypes

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
    out = []
    for d in datas:
        if not len(d):
            out.append(0)
            continue
        try:  # a writable buffer (libdeflate's bytearray): 0.4 us, against 1.7 us through numpy
            out.append(ctypes.addressof(ctypes.c_char.from_buffer(d)))
        except TypeError:  # read-only (bytes)
            out.append(np.frombuffer(d, dtype=np.uint8).__array_interface__["data"][0])
    return np.array(out, dtype=np.int64)

