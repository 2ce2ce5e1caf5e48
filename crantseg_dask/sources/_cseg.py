"""Random access into neuroglancer ``compressed_segmentation`` chunks (uint64, one channel).

The format (neuroglancer's ``compressed_segmentation`` spec) splits a chunk into blocks of
``block`` voxels (8 x 8 x 8 on CRANT; any positive size is legal), numbered x fastest over the grid
``ceil(shape / block)``. After the channel offset word (1 for one channel) each block has a
two-word header: ``table offset | bits << 24`` and ``values offset`` (32-bit words after the channel
start). A block's voxel ``i = x + bx * (y + by * z)`` holds a ``bits``-wide index (bits in
0, 1, 2, 4, 8, 16, 32; 0 means every voxel is table entry 0) at bit ``i * bits`` of the packed
little-endian values; the label is the uint64 table entry at that index. Edge blocks of a ragged
chunk are encoded at full block size, so positions use full-block strides.

Only what a voxel needs is checked (its block header, values word and table entry), so a
truncated chunk still answers the voxels whose bytes survive, and refuses the others.

The label of one voxel is therefore a few array reads. Everything here is vectorised over many
chunks at once (three gathers per chunk, each from the chunk's own buffer: nothing is copied)
and bounds-checked before every read: corrupt or truncated input raises ``CsegError`` naming
the chunk, never a crash or a read of another chunk.

Which path to take per chunk (``use_blocks``): a chunk is read by random access when it needs
fewer than ``CROSSOVER`` x (its voxel count) voxels (points, or the voxels of the blocks a box
touches), and decoded whole otherwise. Measured with ``python benchmarks/bench_cseg_crossover.py``
(63 demo chunks of 128 x 128 x 32, encoded bytes in memory; numpy random access against the
structural check plus ``compressed_segmentation.decompress``), twice on a 2-core machine shared
with other work (load ~4), after random access stopped concatenating the chunks: full decode
2.44 / 2.06 ns per voxel, random access 163 / 136 ns per point at 256 points per chunk,
crossover 1.50% / 1.52% of a chunk (7.9k / 8.0k voxels). ``CROSSOVER`` is 1.5%.

Point lookups of 65,536 points or more (``COMPILED_MIN_POINTS``), or once the compiled kernel is
loaded, run compiled (``_cseg_numba``), which moves their crossover: the same benchmark on
2026-11-30 (2 cores, helpers running beside it), twice: full decode 2.11 / 2.15 ns per voxel
(``bytes`` copy included, as the read path does it), compiled random access 23.6 / 27.3 ns per point
at 4,096 points per chunk (numpy: 134 / 151), crossover 8.9% / 7.9% of a chunk.
``CROSSOVER_COMPILED`` is 8%.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

__all__ = ["CsegError", "CROSSOVER", "CROSSOVER_COMPILED", "COMPILED_MIN_POINTS", "use_compiled", "divmod_nonneg",
           "decode_points", "decode_positions", "decode_blocks", "decode_box", "block_voxels", "block_positions",
           "blocks_holding", "use_blocks"]

#: random access is chosen while a chunk needs fewer than this fraction of its voxels (measured;
#: the environment variable CRANTSEG_CSEG_CROSSOVER overrides it, 0 meaning always decode whole)
CROSSOVER = float(os.environ.get("CRANTSEG_CSEG_CROSSOVER", 0.015))
#: the same for the compiled point lookup (measured; the same environment variable overrides it)
CROSSOVER_COMPILED = float(os.environ.get("CRANTSEG_CSEG_CROSSOVER", 0.08))
#: a call that reads this many points at once (a partition) loads the compiled kernel
#: (``_cseg_numba``; importing numba costs ~0.5 s once per process); once loaded, every call uses it
COMPILED_MIN_POINTS = 1 << 16
_BITS_OK = np.zeros(256, dtype=bool)  # by a header's 8-bit width field
_BITS_OK[[0, 1, 2, 4, 8, 16, 32]] = True
_MASK = np.array([(1 << b) - 1 if b <= 32 else 0 for b in range(256)], dtype=np.uint64).astype(np.uint32)


class CsegError(ValueError):
    """A chunk's bytes are not valid compressed_segmentation; ``chunk`` is its index in the call."""

    def __init__(self, chunk: int, problem: str):
        super().__init__(f"chunk {chunk}: {problem}")
        self.chunk, self.problem = chunk, problem


def use_blocks(n_voxels: int | np.ndarray, chunk_voxels: int | np.ndarray,
               compiled: bool = False) -> np.ndarray | bool:
    """True where reading ``n_voxels`` voxels of a chunk of ``chunk_voxels`` voxels by random
    access is cheaper than decoding it whole (``n_voxels < CROSSOVER * chunk_voxels``;
    ``CROSSOVER_COMPILED`` for points read by the compiled kernel)."""
    return np.asarray(n_voxels) < (CROSSOVER_COMPILED if compiled else CROSSOVER) * np.asarray(chunk_voxels)


def use_compiled(n_points: int) -> bool:
    """Whether ``decode_points`` should run compiled for a call of ``n_points`` points: when the
    compiled kernel is loaded already, or the call is large enough to pay for loading it."""
    return "crantseg_dask.sources._cseg_numba" in sys.modules or n_points >= COMPILED_MIN_POINTS


def divmod_nonneg(a: np.ndarray, d) -> tuple[np.ndarray, np.ndarray]:
    """``(a // d, a % d)`` of a non-negative integer array ``a`` (N, k) by positive divisors ``d``
    (k,), column by column: a shift and a mask for a power of two (block and chunk sizes almost
    always are; several times faster than numpy's integer division), ``np.divmod`` otherwise."""
    q, r = np.empty_like(a), np.empty_like(a)
    for k, dk in enumerate(np.asarray(d, dtype=np.int64).ravel().tolist()):
        q[:, k], r[:, k] = _col_divmod(a[:, k], dk)
    return q, r


def _col_divmod(col: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``divmod`` of one non-negative column by a scalar ``d`` >= 1: shift and mask for a power of two."""
    if d > 0 and d & (d - 1) == 0:
        return col >> (d.bit_length() - 1), col & (d - 1)
    return np.divmod(col, d)


def _pack(datas: Sequence[bytes], shapes: np.ndarray, block: np.ndarray):
    """Each chunk's words (zero-copy views of ``datas``), word count, grid and block count;
    checks the channel offset and that every block header lies inside its chunk."""
    lens = np.fromiter((len(d) for d in datas), dtype=np.int64, count=len(datas))
    bad = np.flatnonzero((lens % 4 != 0) | (lens < 4))
    if bad.size:
        raise CsegError(int(bad[0]), f"{int(lens[bad[0]])} bytes is not a whole number of 32-bit words")
    words = [np.frombuffer(d, dtype="<u4") for d in datas]
    n_words = lens // 4
    grid = -(-shapes // block)
    n_blocks = grid.prod(axis=1)
    first = np.fromiter((w[0] for w in words), dtype=np.int64, count=len(words))
    bad = np.flatnonzero((first != 1) | (1 + 2 * n_blocks > n_words))
    if bad.size:
        k = int(bad[0])
        raise CsegError(k, f"bad header: channel offset {int(first[k])}, {int(n_blocks[k])} blocks, "
                           f"{int(n_words[k])} words (truncated or not compressed_segmentation)")
    return words, n_words, grid, n_blocks


def _gather(words: list, cuts: list, pos: np.ndarray, per: int = 1) -> np.ndarray:
    """``words[k][pos]`` for the positions of each chunk ``k``: rows ``cuts[k] * per`` to
    ``cuts[k + 1] * per`` of ``pos`` (rows sorted by chunk; positions already bounds-checked).
    Reads each chunk's own buffer: no copy of the chunks."""
    out = np.empty(len(pos), dtype=np.uint32)
    for k, w in enumerate(words):
        a, b = cuts[k] * per, cuts[k + 1] * per
        if b > a:  # indexing, not np.take: below 500 items it keeps the GIL (np.take releases it
            out[a:b] = w[pos[a:b]]  # and waits ~50 us for it back while read threads inflate)
    return out


def _lookup(words, n_words, grid, n_blocks, block, chunk_of, local) -> np.ndarray:
    """Labels at ``local`` (N, 3) voxel positions inside chunks ``chunk_of`` (N,); the core.

    Three gathers per chunk (block headers, values words, table entries), each bounds-checked
    for the whole call (per chunk: the smallest table offset, the largest word read) before it
    reads."""
    if len(chunk_of) > 1 and (np.diff(chunk_of) < 0).any():
        order = np.argsort(chunk_of, kind="stable")
        out = np.empty(len(chunk_of), dtype=np.uint64)
        out[order] = _lookup(words, n_words, grid, n_blocks, block, chunk_of[order], local[order])
        return out
    cuts_a = np.searchsorted(chunk_of, np.arange(len(words) + 1))
    cuts = cuts_a.tolist()
    used = np.flatnonzero(np.diff(cuts_a))  # chunks with points; their first rows:
    seg = cuts_a[used]
    (bx, wx), (by, wy), (bz, wz) = (_col_divmod(local[:, k], int(block[k])) for k in range(3))
    g = grid[:1] if (grid == grid[:1]).all() else grid[chunk_of]  # one grid (no ragged chunk): no gather
    blk = bz * g[:, 1]
    blk += by
    blk *= g[:, 0]
    blk += bx
    head = np.empty((len(blk), 2), dtype=np.int64)
    np.multiply(blk, 2, out=head[:, 0])
    head[:, 0] += 1  # channel start 1 (checked) + two header words per block
    np.add(head[:, 0], 1, out=head[:, 1])
    hw = _gather(words, cuts, head.ravel(), 2).reshape(-1, 2)
    bits = hw[:, 0] >> 24
    table = (hw[:, 0] & 0xFFFFFF).astype(np.int64)
    i = wz * int(block[1])
    i += wy
    i *= int(block[0])
    i += wx
    bitpos = i * bits
    vpos = hw[:, 1].astype(np.int64)
    vpos += bitpos >> 5
    vpos += 1
    vpos[bits == 0] = 0  # 0-bit blocks read no values word
    if not (_BITS_OK[bits].all() and (np.minimum.reduceat(table, seg) >= 2 * n_blocks[used]).all()
            and (np.maximum.reduceat(vpos, seg) < n_words[used]).all()):
        ok = _BITS_OK[bits] & (table >= 2 * n_blocks[chunk_of]) & (vpos < n_words[chunk_of])
        _raise_unless(ok, chunk_of, "a block header has a bad bit width, or its table or values lie outside "
                                    "the chunk (truncated or corrupt)")
    word = _gather(words, cuts, vpos)
    idx = ((word >> (bitpos & 31).astype(np.uint32)) & _MASK[bits]).astype(np.int64)  # 0 if bits == 0
    tpos = np.empty((len(idx), 2), dtype=np.int64)
    np.multiply(idx, 2, out=tpos[:, 0])
    tpos[:, 0] += table
    tpos[:, 0] += 1
    np.add(tpos[:, 0], 1, out=tpos[:, 1])
    if not (np.maximum.reduceat(tpos[:, 1], seg) < n_words[used]).all():
        _raise_unless(tpos[:, 1] < n_words[chunk_of], chunk_of,
                      "a voxel's table index lies outside the chunk (truncated or corrupt)")
    tw = _gather(words, cuts, tpos.ravel(), 2)
    if sys.byteorder == "little":  # (low, high) word pairs are the uint64 labels
        return tw.view(np.uint64)
    tw = tw.reshape(-1, 2).astype(np.uint64)
    return tw[:, 0] | (tw[:, 1] << np.uint64(32))


def _raise_unless(ok: np.ndarray, chunk_of: np.ndarray, problem: str) -> None:
    if not ok.all():
        raise CsegError(int(chunk_of[np.argmin(ok)]), problem)


def _beyond(local: np.ndarray, shapes: np.ndarray, chunk_of: np.ndarray) -> bool:
    """Whether a position reaches its chunk's shape: per chunk by ``reduceat`` when the rows are
    sorted by chunk (no (N, 3) gather of shapes), row by row otherwise."""
    if len(chunk_of) > 1 and (np.diff(chunk_of) < 0).any():
        return bool((local >= shapes[chunk_of]).any())
    first = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
    return bool((np.maximum.reduceat(local, first, axis=0) >= shapes[chunk_of[first]]).any())


def decode_points(datas: Sequence[bytes], shapes, block, chunk_of, local, compiled: bool = False) -> np.ndarray:
    """Labels of voxels in many encoded chunks, without decoding the chunks.

    Parameters
    ----------
    datas : sequence of bytes
        The encoded chunks (uint64, one channel).
    shapes : array-like (K, 3)
        Each chunk's shape in voxels (smaller at the volume's far edges).
    block : array-like (3,)
        The block size (``compressed_segmentation_block_size``).
    chunk_of : array-like (N,)
        Index into ``datas`` of each voxel.
    local : array-like (N, 3)
        Position of each voxel inside its chunk.
    compiled : bool
        Use the compiled kernel (``_cseg_numba``: no GIL, about 10x less CPU; imports numba on
        first use) instead of numpy; same answers, same errors.

    Returns
    -------
    numpy.ndarray of uint64, shape (N,)

    Raises
    ------
    CsegError
        A chunk is corrupt or truncated, or a position lies outside its chunk.

    Examples
    --------
    >>> import compressed_segmentation as cseg
    >>> vol = np.arange(6 * 5 * 3, dtype=np.uint64).reshape(6, 5, 3, order="F")
    >>> data = cseg.compress(vol[..., None], (4, 4, 2), order="F")
    >>> decode_points([data], [(6, 5, 3)], (4, 4, 2), [0, 0], [(0, 0, 0), (5, 4, 2)]).tolist()
    [0, 89]
    """
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)
    block = np.asarray(block, dtype=np.int64).reshape(3)
    chunk_of = np.asarray(chunk_of, dtype=np.int64).ravel()
    local = np.asarray(local, dtype=np.int64).reshape(-1, 3)
    if len(shapes) != len(datas) or len(chunk_of) != len(local) or (block < 1).any():
        raise ValueError(f"{len(datas)} chunks with {len(shapes)} shapes, {len(chunk_of)} chunk indices for "
                         f"{len(local)} positions, block {block.tolist()}: lengths must match, block >= 1")
    if len(local) == 0:
        return np.zeros(0, dtype=np.uint64)
    if chunk_of.min() < 0 or chunk_of.max() >= len(datas):
        raise ValueError(f"chunk indices must lie in [0, {len(datas)})")
    if compiled and sys.byteorder == "little":
        return _compiled_points(datas, shapes, block, chunk_of, local)
    if local.min() < 0 or _beyond(local, shapes, chunk_of):
        inside = np.all((local >= 0) & (local < shapes[chunk_of]), axis=1)
        bad = int(np.argmin(inside))
        raise CsegError(int(chunk_of[bad]), f"position {local[bad].tolist()} lies outside the chunk's shape "
                                            f"{shapes[chunk_of[bad]].tolist()}")
    words, n_words, grid, n_blocks = _pack(datas, shapes, block)
    return _lookup(words, n_words, grid, n_blocks, block, chunk_of, local)


def _compiled_points(datas, shapes, block, chunk_of, local) -> np.ndarray:
    """``decode_points`` by ``_cseg_numba.lookup``, its failures raised as the numpy path words them."""
    from . import _cseg_numba

    lens = np.fromiter((len(d) for d in datas), dtype=np.int64, count=len(datas))
    bad = np.flatnonzero((lens % 4 != 0) | (lens < 4))
    if bad.size:
        raise CsegError(int(bad[0]), f"{int(lens[bad[0]])} bytes is not a whole number of 32-bit words")
    out, err = _cseg_numba.lookup(datas, lens // 4, shapes, block, chunk_of, local)
    if err is None:
        return out
    k, code, row = err
    if code == 1:
        raise CsegError(k, f"position {local[row].tolist()} lies outside the chunk's shape {shapes[k].tolist()}")
    if code == 2:
        _pack([datas[k]], shapes[k:k + 1], block)  # raises the numpy path's "bad header" error (chunk 0)
    raise CsegError(k, _cseg_numba.PROBLEMS.get(code, f"error {code}"))


def block_voxels(lo, hi, shape, block) -> int:
    """Voxels in the blocks that the half-open box [lo, hi) (inside a chunk of ``shape``) touches,
    clipped to the chunk: what ``decode_blocks`` reads."""
    a, b = _block_range(lo, hi, shape, block)
    return int(np.prod(b - a))


def _block_range(lo, hi, shape, block) -> tuple[np.ndarray, np.ndarray]:
    block = np.asarray(block, dtype=np.int64)
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    return lo // block * block, np.minimum(-(-hi // block) * block, np.asarray(shape, dtype=np.int64))


def decode_blocks(datas: Sequence[bytes], shapes, block, chunk_of, lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """The voxels of the blocks each box touches: block-range decode of many boxes at once.

    Box ``j`` is the half-open [lo[j], hi[j]) inside chunk ``chunk_of[j]`` (local voxels). Returns,
    per box, (origin (3,) local to the chunk, (X, Y, Z) uint64 labels) of the block-aligned region
    that covers the box, clipped to the chunk. ``CsegError`` on corrupt input or a box outside
    its chunk."""
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)
    block = np.asarray(block, dtype=np.int64).reshape(3)
    chunk_of = np.asarray(chunk_of, dtype=np.int64).ravel()
    lo, hi = np.asarray(lo, dtype=np.int64).reshape(-1, 3), np.asarray(hi, dtype=np.int64).reshape(-1, 3)
    if len(chunk_of) == 0:
        return []
    bad = np.flatnonzero(np.any((lo < 0) | (hi > shapes[chunk_of]) | (hi <= lo), axis=1))
    if bad.size:
        j = int(bad[0])
        raise CsegError(int(chunk_of[j]), f"box {[lo[j].tolist(), hi[j].tolist()]} is empty or leaves the "
                                          f"chunk's shape {shapes[chunk_of[j]].tolist()}")
    regions = [_block_range(a, b, shapes[k], block) for a, b, k in zip(lo, hi, chunk_of)]
    sizes = np.array([np.prod(b - a) for a, b in regions], dtype=np.int64)
    pos = np.concatenate([np.stack(np.meshgrid(*[np.arange(p, q) for p, q in zip(a, b)], indexing="ij"),
                                   axis=-1).reshape(-1, 3) for a, b in regions])
    words, n_words, grid, n_blocks = _pack(datas, shapes, block)
    labels = _lookup(words, n_words, grid, n_blocks, block, np.repeat(chunk_of, sizes), pos)
    parts = np.split(labels, np.cumsum(sizes)[:-1])
    return [(a, p.reshape(tuple(b - a))) for (a, b), p in zip(regions, parts)]


def decode_box(data: bytes, shape, block, lo, hi) -> np.ndarray:
    """Labels of the half-open box [lo, hi) of one encoded chunk, reading only its blocks."""
    (origin, arr), = decode_blocks([data], [shape], block, [0], [lo], [hi])
    a = np.asarray(lo) - origin
    return arr[tuple(slice(p, p + n) for p, n in zip(a, np.asarray(hi) - np.asarray(lo)))]


def block_positions(shape, block, block_ids) -> np.ndarray:
    """(M, 3) local positions of the voxels of blocks ``block_ids`` (linear, x fastest over the
    chunk's block grid), block by block, clipped to the chunk's ``shape``."""
    shape, block = np.asarray(shape, dtype=np.int64), np.asarray(block, dtype=np.int64)
    grid = -(-shape // block)
    ids = np.asarray(block_ids, dtype=np.int64).ravel()
    b = np.stack([ids % grid[0], ids // grid[0] % grid[1], ids // (grid[0] * grid[1])], axis=1)
    offs = np.stack(np.meshgrid(*[np.arange(n) for n in block], indexing="ij"), axis=-1).reshape(-1, 3)
    pos = (b[:, None, :] * block + offs[None]).reshape(-1, 3)
    return pos[np.all(pos < shape, axis=1)] if (shape % block).any() else pos


def blocks_holding(data: bytes, shape, block, block_ids, labels_sorted: np.ndarray,
                   max_bits: int = 8) -> np.ndarray:
    """Whether each block of ``block_ids`` may hold one of ``labels_sorted`` (sorted uint64), from
    its lookup table alone: the table is read up to ``2**bits`` entries (its true length is not
    stored, so an entry past its end may give a false True, never a false False). Blocks wider
    than ``max_bits`` bits are always True. ``CsegError`` on corrupt input."""
    shape = np.asarray(shape, dtype=np.int64).reshape(1, 3)
    block = np.asarray(block, dtype=np.int64).reshape(3)
    ids = np.asarray(block_ids, dtype=np.int64).ravel()
    (words,), n_words, grid, n_blocks = _pack([data], shape, block)
    s, e = 1, int(n_words[0])
    if len(ids) and (ids.min() < 0 or ids.max() >= n_blocks[0]):
        raise CsegError(0, f"block index outside the chunk's {int(n_blocks[0])} blocks")
    w0 = words[s + 2 * ids].astype(np.int64)
    bits, table = w0 >> 24, w0 & 0xFFFFFF
    zero = np.zeros(len(ids), dtype=np.int64)
    _raise_unless(_BITS_OK[np.minimum(bits, 32)] & (table >= 2 * n_blocks[0]) & (s + table + 1 < e), zero,
                  "a block header has a bad bit width or a table outside the chunk (truncated or corrupt)")
    small = bits <= max_bits
    count = np.where(small, 1 << np.minimum(bits, max_bits), 0)
    which = np.repeat(np.arange(len(ids)), count)
    entry = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    tpos = s + table[which] + 2 * entry
    real = tpos + 1 < e  # entries past the chunk's end cannot be table entries
    tpos, which = tpos[real], which[real]
    vals = words[tpos].astype(np.uint64) | (words[tpos + 1].astype(np.uint64) << np.uint64(32))
    labels_sorted = np.asarray(labels_sorted, dtype=np.uint64)
    at = np.clip(np.searchsorted(labels_sorted, vals), 0, max(len(labels_sorted) - 1, 0))
    hit = labels_sorted[at] == vals if len(labels_sorted) else np.zeros(len(vals), dtype=bool)
    return ~small | (np.bincount(which[hit], minlength=len(ids)) > 0)


def decode_positions(data: bytes, shape, block, local) -> np.ndarray:
    """Labels at ``local`` (M, 3) positions of one encoded chunk (``decode_points`` for one)."""
    local = np.asarray(local, dtype=np.int64).reshape(-1, 3)
    return decode_points([data], [shape], block, np.zeros(len(local), dtype=np.int64), local)
