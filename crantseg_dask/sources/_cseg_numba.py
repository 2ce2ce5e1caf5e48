"""Compiled random access into compressed_segmentation chunks (numba): ``_cseg.decode_points``' core.

Per voxel it reads its block header, its values word and its table entry straight from the chunk's
encoded bytes, in place (the chunks are passed by address, not copied together), without the GIL.
Every read is bounds-checked against its chunk's word count first, with the checks and messages of
the numpy path (``_cseg._lookup``): a corrupt or truncated chunk raises ``CsegError``, never a crash.

numba is imported with this module, which ``_cseg`` imports only when the compiled path is chosen
(``_cseg.decode_points(..., compiled=True)``); the kernel is compiled, or loaded from numba's cache,
on first use. Measured in ``_cseg``'s docstring.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .._numba import addresses, jit

__all__ = ["lookup", "warm_up"]

#: problem per error code of the kernel (``err[1]``); codes 1 and 2 are worded by ``lookup``
PROBLEMS = {3: "a block header has a bad bit width, or its table or values lie outside the chunk (truncated "
               "or corrupt)",
            4: "a voxel's table index lies outside the chunk (truncated or corrupt)"}


@intrinsic
def _words(typingctx, addr):
    """``uint32*`` at the int64 address ``addr`` (the first byte of an encoded chunk)."""
    sig = types.CPointer(types.uint32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint32)))

    return sig, codegen


def _points(addr, n_words, shapes, block, chunk_of, local, out, err):  # pragma: no cover - compiled
    """Labels at ``local`` (N, 3) in chunks ``chunk_of`` into ``out``; the first failure goes to
    ``err`` = (chunk, code, row) and stops: 1 a position outside its chunk, 2 a bad channel header,
    3 a bad block header, 4 a table index outside the chunk."""
    n = len(chunk_of)
    for i in range(n):  # positions first, as the numpy path checks them before any read
        k = chunk_of[i]
        for a in range(3):
            if local[i, a] < 0 or local[i, a] >= shapes[k, a]:
                err[0], err[1], err[2] = k, 1, i
                return
    pow2 = True
    for a in range(3):
        if block[a] & (block[a] - 1) != 0:
            pow2 = False
    sx, sy, sz = 0, 0, 0
    if pow2:
        while (1 << sx) < block[0]:
            sx += 1
        while (1 << sy) < block[1]:
            sy += 1
        while (1 << sz) < block[2]:
            sz += 1
    last = -1
    w = numba.carray(_words(addr[0]), (1,))
    nw = 0
    gx = gy = nb = 0
    for i in range(n):
        k = chunk_of[i]
        if k != last:
            nw = n_words[k]
            w = numba.carray(_words(addr[k]), (nw,))
            gx = (shapes[k, 0] + block[0] - 1) // block[0]
            gy = (shapes[k, 1] + block[1] - 1) // block[1]
            nb = gx * gy * ((shapes[k, 2] + block[2] - 1) // block[2])
            if nw < 1 or w[0] != 1 or 1 + 2 * nb > nw:
                err[0], err[1], err[2] = k, 2, i
                return
            last = k
        x, y, z = local[i, 0], local[i, 1], local[i, 2]
        if pow2:
            b = (x >> sx) + gx * ((y >> sy) + gy * (z >> sz))
            v = (x & (block[0] - 1)) + block[0] * ((y & (block[1] - 1)) + block[1] * (z & (block[2] - 1)))
        else:
            b = x // block[0] + gx * (y // block[1] + gy * (z // block[2]))
            v = x % block[0] + block[0] * (y % block[1] + block[1] * (z % block[2]))
        h0 = np.int64(w[1 + 2 * b])
        bits = h0 >> 24
        table = h0 & 0xFFFFFF
        if (bits != 0 and bits != 1 and bits != 2 and bits != 4 and bits != 8 and bits != 16
                and bits != 32) or table < 2 * nb:
            err[0], err[1], err[2] = k, 3, i
            return
        idx = np.int64(0)
        if bits:
            bitpos = v * bits
            vpos = 1 + np.int64(w[2 + 2 * b]) + (bitpos >> 5)
            if vpos >= nw:
                err[0], err[1], err[2] = k, 3, i
                return
            idx = (np.int64(w[vpos]) >> (bitpos & 31)) & ((np.int64(1) << bits) - 1)
        t = 1 + table + 2 * idx
        if t + 1 >= nw:
            err[0], err[1], err[2] = k, 4, i
            return
        out[i] = np.uint64(w[t]) | (np.uint64(w[t + 1]) << np.uint64(32))


_compiled = None
_lock = threading.Lock()


def _kernel():
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = jit(_points)
        return _compiled


def lookup(datas, n_words: np.ndarray, shapes: np.ndarray, block: np.ndarray, chunk_of: np.ndarray,
           local: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """Labels at ``local`` (N, 3) int64 in chunks ``chunk_of`` (N,) int64 of the encoded ``datas``
    (whole 32-bit words each, ``n_words``), and the first failure ``(chunk, code, row)`` or None
    (codes as ``_points``; the labels are then incomplete). Little-endian hosts only."""
    out = np.zeros(len(chunk_of), dtype=np.uint64)
    err = np.full(3, -1, dtype=np.int64)
    addr = addresses(datas)
    i64 = np.int64
    _kernel()(addr, np.asarray(n_words, i64), np.ascontiguousarray(shapes, i64), np.asarray(block, i64),
              np.ascontiguousarray(chunk_of, i64), np.ascontiguousarray(local, i64), out, err)
    del addr  # the buffers (``datas``, the caller's) were alive throughout
    return out, (None if err[1] < 0 else (int(err[0]), int(err[1]), int(err[2])))


def warm_up() -> None:
    """Load (or compile) the kernel now: one lookup of one voxel in a one-block chunk."""
    data = np.array([1, 2, 0, 7, 0], dtype="<u4").tobytes()  # a 0-bit block, its table at word 1 + 2: 7
    got, err = lookup([data], np.array([5]), np.ones((1, 3), np.int64), np.ones(3, np.int64),
                      np.zeros(1, np.int64), np.zeros((1, 3), np.int64))
    assert err is None and got[0] == 7, (got, err)
