"""The snap kernel's voxel gathering, vectorised over every chunk a group of rows touches.

For K rows, each with a search box (inclusive mip-0 voxels) and a target (its index into a list of
leaf arrays), ``gather`` returns the target voxels inside the boxes, reading only the
compressed_segmentation blocks the boxes touch, and of those only the blocks whose lookup table
holds one of the row's own target's supervoxels; a voxel's membership is then read from its
block's table entries, so only target voxels' labels are looked up. There is no Python loop per chunk or per row: a
sparse table (a few rows per chunk, spread over the volume) pays for the blocks its balls touch,
not for a per-chunk set-up; the (row, chunk) pairs, their (row, block) pairs and the voxels of
those are enumerated with array arithmetic, and all chunks' encoded bytes are read as one array
of words (``_joined``). A chunk whose needed voxels exceed ``CROSSOVER`` of it is decoded
whole instead (``source.decode_chunk``), one at a time.
"""
from __future__ import annotations

import os

import numpy as np

from ..sources import _cseg, _partial

__all__ = ["gather", "labels_under", "leaf_keys"]

#: a chunk is decoded whole when the voxels its boxes need (summed over rows) exceed this fraction
#: of its voxels, else read by random access. Higher than ``_cseg.CROSSOVER`` (1.5%), which is
#: measured for reading labels: here a voxel's membership comes from its block's table entries
#: (``_Tables``), so random access reads one values word per voxel, while a whole chunk's voxels
#: still need a label search each. Profiled on the sparse 20,000-row demo table (load ~3 on 2
#: cores): random access ~80 ns per voxel (box enumeration included), whole decode plus label
#: search ~300 ns per needed voxel at the 1.5% rule; the kernel took 7.1 s CPU at 1.0 against
#: 7.5 s at 0.015. So only chunks whose boxes overlap more than the chunk's volume (dense
#: partitions at the full radius) are decoded whole. ``CRANTSEG_SNAP_CROSSOVER`` overrides it.
CROSSOVER = float(os.environ.get("CRANTSEG_SNAP_CROSSOVER", 1.0))
#: entry flag of a table entry that would lie past its chunk's end
_PAST_END = 2
#: lookup-table entries read per block to decide whether it may hold a target (2**bits of them;
#: wider blocks are read without that test)
_TABLE_BITS = 8


def leaf_keys(leaves: list[np.ndarray]):
    """(labels, keys): the sorted distinct supervoxels of all ``leaves``, and one sorted int64
    ``owner * len(labels) + rank`` per (owner, leaf) pair, owner being the index into ``leaves``."""
    flat = np.concatenate(leaves).astype(np.uint64, copy=False) if leaves else np.zeros(0, np.uint64)
    labels, rank = np.unique(flat, return_inverse=True)
    owner = np.repeat(np.arange(len(leaves), dtype=np.int64), [len(x) for x in leaves])
    return labels, np.sort(owner * len(labels) + rank.ravel())


def _holds(labels: np.ndarray, keys: np.ndarray, values: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Whether ``values[i]`` is one of ``owner[i]``'s leaves (``leaf_keys``), for every i at once."""
    if not len(values) or not len(labels):
        return np.zeros(len(values), dtype=bool)
    rank = np.minimum(np.searchsorted(labels, values), len(labels) - 1)
    q = owner * len(labels) + rank
    at = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    return (labels[rank] == values) & (keys[at] == q)


def _boxes(a: np.ndarray, b: np.ndarray):
    """Every integer point of the inclusive boxes [a[i], b[i]]: (which box (M,), points (M, 3)),
    box by box, x slowest."""
    ext = np.maximum(b - a + 1, 0)
    n = ext.prod(axis=1)
    which = np.repeat(np.arange(len(a)), n)
    # int32 where it fits (halves the memory traffic of these, the kernel's largest arrays)
    t = np.int32 if n.sum() < 2**31 and int(np.abs(np.concatenate([a.ravel(), b.ravel(), [0]])).max()) < 2**30 else np.int64
    k = np.arange(int(n.sum()), dtype=t) - np.repeat((np.cumsum(n) - n).astype(t), n)
    ez, ey = np.repeat(ext[:, 2].astype(t), n), np.repeat(ext[:, 1].astype(t), n)
    rest, z = np.divmod(k, ez)
    x, y = np.divmod(rest, ey)
    pts = np.empty((len(k), 3), dtype=np.int64)
    pts[:, 0], pts[:, 1], pts[:, 2] = x, y, z
    pts += np.repeat(a, n, axis=0)
    return which, pts


def _pairs(lo, hi, vol_lo, cs):
    """Unique (chunk x, y, z, row) of every storage chunk each box [lo, hi] touches, sorted."""
    row, c = _boxes((lo - vol_lo) // cs, (hi - vol_lo) // cs)
    return np.unique(np.column_stack([c, row]), axis=0)


def labels_under(source, vox: np.ndarray, encoded: dict) -> np.ndarray:
    """Supervoxel at each absolute mip-0 voxel (N, 3), 0 outside the volume, as
    ``source.supervoxels_at`` but reading the chunks' encoded bytes into ``encoded``, so that the
    kernel's searches around the same rows reuse them instead of reading those chunks again. A
    missing chunk read as background (``fill_missing``) gives 0."""
    meta = source.meta
    if not _partial._random_access_ok(meta, 0):
        return np.asarray(source.supervoxels_at(vox, 0), dtype=np.uint64)
    vox = np.asarray(vox, dtype=np.int64).reshape(-1, 3)
    lo, hi = meta.bounds(0)
    out = np.zeros(len(vox), dtype=np.uint64)
    idx = np.flatnonzero(np.all((vox >= lo) & (vox < hi), axis=1))
    if not idx.size:
        return out
    cs = np.array(meta.chunk_size[0], dtype=np.int64)
    chunks, ci = np.unique((vox[idx] - lo) // cs, axis=0, return_inverse=True)
    ci = ci.ravel()
    keys = [tuple(int(v) for v in c) for c in chunks]
    if missing := [k for k in keys if k not in encoded]:
        encoded.update(source.read_encoded_many(missing, 0))  # fetched concurrently
    stored = np.array([encoded.get(k) is not None for k in keys], dtype=bool)
    at = np.cumsum(stored) - 1  # index among the stored chunks
    keep = stored[ci]
    idx, ci = idx[keep], at[ci[keep]]
    keys = [k for k, s in zip(keys, stored.tolist()) if s]
    if not keys:
        return out
    chunks = chunks[stored]
    try:
        out[idx] = _cseg.decode_points([encoded[k] for k in keys], _partial.chunk_shapes(meta, chunks, 0),
                                       _partial._block(meta, 0), ci, vox[idx] - lo - chunks[ci] * cs)
    except _cseg.CsegError as e:
        raise _partial._source_error(source, keys[e.chunk], 0, e) from e
    return out


def _joined(datas: list, shapes: np.ndarray, block: np.ndarray):
    """The chunks' words concatenated, and per chunk (channel start, end, grid, block count),
    after ``_cseg._pack``'s checks (whole words, channel offset, block headers inside the chunk).
    Point lookups gather from each chunk's own buffer; a gather here reads many words per chunk,
    where one array is simpler."""
    words, n_words, grid, n_blocks = _cseg._pack(datas, shapes, block)
    ends = np.cumsum(n_words)
    return np.concatenate(words), ends - n_words + 1, ends, grid, n_blocks


def gather(source, lo: np.ndarray, hi: np.ndarray, leaves: list[np.ndarray], row_owner: np.ndarray,
           encoded: dict):
    """Voxels of each row's own target inside its box [lo, hi] (inclusive, absolute mip-0 voxels).

    Parameters
    ----------
    source : SegmentationSource
        A source whose mip 0 is compressed_segmentation (``_partial._random_access_ok``).
    lo, hi : numpy.ndarray (K, 3) int64
        Each row's box, inside the volume.
    leaves : list of numpy.ndarray
        Sorted supervoxels of each target.
    row_owner : numpy.ndarray (K,)
        Each row's index into ``leaves``.
    encoded : dict
        Chunk key -> encoded bytes; read from and filled (a kernel call's passes share it).

    Returns
    -------
    coords : numpy.ndarray (M, 3) int64
        Absolute voxels: the union over a target's rows of their boxes, a (target, voxel) pair
        repeated where rows of one target overlap (``sorted_voxels`` drops repeats in its sort).
    owner : numpy.ndarray (M,) int64
        Index into ``leaves``.
    label : numpy.ndarray (M,) uint64
        The supervoxel at each voxel.
    """
    meta = source.meta
    empty = np.zeros((0, 3), np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64)
    if len(lo) == 0:
        return empty
    vol_lo, cs = meta.bounds(0)[0], np.array(meta.chunk_size[0], dtype=np.int64)
    block = np.array(_partial._block(meta, 0), dtype=np.int64)
    pairs = _pairs(lo, hi, vol_lo, cs)
    chunks, ci = np.unique(pairs[:, :3], axis=0, return_inverse=True)
    ci, row = ci.ravel(), pairs[:, 3]
    keys = [tuple(int(v) for v in c) for c in chunks]
    if missing := [k for k in keys if k not in encoded]:
        encoded.update(source.read_encoded_many(missing, 0))  # fetched concurrently
    stored = np.array([encoded.get(k) is not None for k in keys], dtype=bool)
    if not stored.all():  # a missing chunk read as background (fill_missing) holds no target voxel
        pairs = pairs[stored[ci]]
        if not len(pairs):
            return empty
        chunks, ci = np.unique(pairs[:, :3], axis=0, return_inverse=True)
        ci, row = ci.ravel(), pairs[:, 3]
        keys = [tuple(int(v) for v in c) for c in chunks]
    shapes = _partial.chunk_shapes(meta, chunks, 0)
    origin = vol_lo + chunks * cs
    try:
        words, start, ends, grid, n_blocks = _joined([encoded[k] for k in keys], shapes, block)
    except _cseg.CsegError as e:
        raise _partial._source_error(source, keys[e.chunk], 0, e) from e
    # each (row, chunk) pair's box in the chunk, and the blocks it touches
    a = np.maximum(lo[row] - origin[ci], 0)
    b = np.minimum(hi[row] - origin[ci], shapes[ci] - 1)
    pair, blk3 = _boxes(a // block, b // block)
    g = grid[ci[pair]]
    blk = blk3[:, 0] + g[:, 0] * (blk3[:, 1] + g[:, 1] * blk3[:, 2])
    labels, lkeys = leaf_keys(leaves)
    owner = np.asarray(row_owner, dtype=np.int64)[row]
    try:
        tab = _Tables(words, start, ends, n_blocks, ci[pair], blk, owner[pair], labels, lkeys, int(block.prod()))
    except _cseg.CsegError as e:
        raise _partial._source_error(source, keys[e.chunk], 0, e) from e
    keep = tab.keep
    pair, blk3, tab = pair[keep], blk3[keep], tab.take(keep)
    # the voxels of each kept (pair, block): the pair's box inside the block, relative to the block
    corner = blk3 * block
    sub_lo, sub_hi = np.maximum(a[pair], corner) - corner, np.minimum(b[pair], corner + block - 1) - corner
    tc = ci[pair]
    sizes = np.bincount(tc, weights=(sub_hi - sub_lo + 1).prod(axis=1), minlength=len(keys))
    whole = (sizes > CROSSOVER * shapes.prod(axis=1)) & (sizes > 0)
    corner += origin[tc]  # absolute from here on
    towner = owner[pair]
    out_c, out_o, out_l = [], [], []
    try:
        part = ~whole[tc]
        if part.any():  # random access: the index into the block's table, whose hits are known
            t = np.flatnonzero(part)
            vt, w = _boxes(sub_lo[t], sub_hi[t])
            vt = t[vt]
            hit, label = tab.voxels(vt, w[:, 0] + block[0] * (w[:, 1] + block[1] * w[:, 2]), towner[vt],
                                    labels, lkeys)
            out_c.append(w[hit] + corner[vt[hit]])
            out_o.append(towner[vt[hit]])
            out_l.append(label[hit])
        for k in np.flatnonzero(whole).tolist():  # one decoded chunk at a time
            t = np.flatnonzero(tc == k)
            vt, w = _boxes(sub_lo[t], sub_hi[t])
            vt = t[vt]
            pos = w + (corner[vt] - origin[k])
            label = source.decode_chunk(keys[k], 0, encoded[keys[k]])[pos[:, 0], pos[:, 1], pos[:, 2]]
            hit = _holds(labels, lkeys, label, towner[vt])
            out_c.append(pos[hit] + origin[k])
            out_o.append(towner[vt[hit]])
            out_l.append(label[hit])
    except _cseg.CsegError as e:
        raise _partial._source_error(source, keys[e.chunk], 0, e) from e
    if not out_c:
        return empty
    coords, own, label = np.concatenate(out_c), np.concatenate(out_o), np.concatenate(out_l)
    return coords, own, label  # rows of one target may overlap: ``sorted_voxels`` drops repeats


class _Tables:
    """The lookup tables of (chunk, block, owner) triples: whether each may hold one of the owner's
    leaves, and which of its entries do. A table is read up to 2**bits entries (its true length is
    not stored: an entry past its end may give a false True for the block, never a false False);
    blocks wider than ``_TABLE_BITS`` bits are kept without that test and their voxels are
    checked by label. ``CsegError`` (``chunk`` = the chunk's index) on a bad header."""

    def __init__(self, words, start, ends, n_blocks, chunk_of, blk, owner, labels, lkeys, block_voxels):
        if words is None:  # an empty copy, filled by ``take``
            return
        s, e = start[chunk_of], ends[chunk_of]
        w0 = words[s + 2 * blk].astype(np.int64)
        bits, table = w0 >> 24, w0 & 0xFFFFFF
        values = s + words[s + 2 * blk + 1].astype(np.int64)
        ok = _cseg._BITS_OK[np.minimum(bits, 32)] & (table >= 2 * n_blocks[chunk_of]) & (s + table + 1 < e)
        if not ok.all():
            raise _cseg.CsegError(int(chunk_of[np.argmin(ok)]), "a block header has a bad bit width or a table "
                                                                "outside the chunk (truncated or corrupt)")
        ok = (bits == 0) | (values + (((block_voxels - 1) * bits) >> 5) < e)  # its last voxel's word
        if not ok.all():
            raise _cseg.CsegError(int(chunk_of[np.argmin(ok)]), "a block's values lie outside the chunk "
                                                                "(truncated or corrupt)")
        small = bits <= _TABLE_BITS
        count = np.where(small, 1 << np.minimum(bits, _TABLE_BITS), 0)
        which = np.repeat(np.arange(len(blk)), count)
        tpos = s[which] + table[which] + 2 * (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
        real = tpos + 1 < e[which]  # entries past the chunk's end cannot be table entries
        flags = np.where(real, 0, _PAST_END).astype(np.int8)
        t = tpos[real]
        vals = words[t].astype(np.uint64) | (words[t + 1].astype(np.uint64) << np.uint64(32))
        flags[real] = _holds(labels, lkeys, vals, owner[which[real]])
        self.keep = ~small | (np.bincount(which[flags == 1], minlength=len(blk)) > 0)
        self.words, self.s, self.e, self.bits, self.table, self.chunk = words, s, e, bits, table, chunk_of
        self.vbase = np.where(bits > 0, values, 0)  # 0-bit blocks read word 0 and mask it all away
        self.mask = (1 << bits) - 1
        self.flags, self.fstart, self.wide = flags, np.cumsum(count) - count, ~small

    def take(self, keep: np.ndarray) -> "_Tables":
        """The triples ``keep`` (a mask); their entry flags stay where they are."""
        out = _Tables(*[None] * 10)
        out.words, out.flags = self.words, self.flags
        for name in ("s", "e", "bits", "table", "vbase", "mask", "fstart", "wide", "chunk"):
            setattr(out, name, getattr(self, name)[keep])
        return out

    def _index(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Table index of voxel ``i`` of triple ``t`` (values checked in bounds at construction)."""
        bitpos = i * self.bits[t]
        word = self.words[self.vbase[t] + (bitpos >> 5)].astype(np.int64)
        return (word >> (bitpos & 31)) & self.mask[t]

    def _label(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        tpos = self.s[t] + self.table[t] + 2 * idx
        bad = tpos + 1 >= self.e[t]
        if bad.any():
            raise _cseg.CsegError(int(self.chunk[t[np.argmax(bad)]]), "a voxel's table index lies outside the "
                                                                       "chunk (truncated or corrupt)")
        return self.words[tpos].astype(np.uint64) | (self.words[tpos + 1].astype(np.uint64) << np.uint64(32))

    def voxels(self, t: np.ndarray, i: np.ndarray, owner: np.ndarray, labels, lkeys):
        """(hit, label) of voxel ``i`` (linear inside its block, x fastest) of triple ``t``: whether
        it holds one of ``owner``'s leaves, and its label (valid where hit). Bounds-checked: a
        table index past the chunk's end raises ``CsegError``."""
        wide = self.wide[t]
        if wide.any():
            hit, label = np.zeros(len(t), dtype=bool), np.zeros(len(t), dtype=np.uint64)
            n, w = np.flatnonzero(~wide), np.flatnonzero(wide)
            hit[n], label[n] = self.voxels(t[n], i[n], owner[n], labels, lkeys)
            label[w] = self._label(t[w], self._index(t[w], i[w]))
            hit[w] = _holds(labels, lkeys, label[w], owner[w])
            return hit, label
        idx = self._index(t, i)
        f = self.flags[self.fstart[t] + idx]
        bad = f == _PAST_END
        if bad.any():
            raise _cseg.CsegError(int(self.chunk[t[np.argmax(bad)]]), "a voxel's table index lies outside the "
                                                                       "chunk (truncated or corrupt)")
        hit = f == 1
        label = np.zeros(len(t), dtype=np.uint64)
        h = np.flatnonzero(hit)
        label[h] = self._label(t[h], idx[h])
        return hit, label
