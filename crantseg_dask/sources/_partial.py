"""Per-chunk choice between random access (``_cseg``) and a full chunk decode.

One rule (``_cseg.use_blocks``): a chunk is read by random access when the voxels it must yield
(points, or the voxels of the 8 x 8 x 8 blocks a box touches) are fewer than ``_cseg.CROSSOVER``
of its voxels (``_cseg.CROSSOVER_COMPILED`` for points the compiled kernel reads), and decoded whole
otherwise. Random access needs the encoded bytes
(``source.read_encoded_many``, fetched concurrently): compressed_segmentation only, sharded or
not; anything else (raw, a missing chunk read as background) is decoded in full, and chunks
decoded whole are fetched concurrently too (``source.read_chunks``).
"""
from __future__ import annotations

import numpy as np

from ..errors import SourceError
from . import _cseg

__all__ = ["read_points", "read_box", "read_boxes", "chunk_shapes"]


def chunk_shapes(meta, keys: np.ndarray, mip: int) -> np.ndarray:
    """(K, 3) shape of each storage chunk ``keys`` (K, 3) at ``mip``, clipped at the volume's edge."""
    lo, hi = meta.bounds(mip)
    cs = np.array(meta.chunk_size[mip], dtype=np.int64)
    c_lo = lo + np.asarray(keys, dtype=np.int64).reshape(-1, 3) * cs
    return np.minimum(c_lo + cs, hi) - c_lo


def _encoded(source, keys, mip: int) -> list:
    """Encoded bytes (or None) of each chunk in ``keys``, in order, fetched concurrently."""
    keys = [tuple(int(x) for x in c) for c in keys]
    got = dict(source.read_encoded_many(keys, mip)) if keys else {}
    return [got.get(c) for c in keys]


def _block(meta, mip: int) -> tuple[int, int, int]:
    return tuple(meta.cseg_block_size[mip]) if meta.cseg_block_size else (8, 8, 8)


def _random_access_ok(meta, mip: int) -> bool:
    return meta.encoding[mip] == "compressed_segmentation"


def _source_error(source, key, mip: int, e: Exception) -> SourceError:
    name = f"{source.meta.keys[mip]}/chunk {tuple(int(x) for x in key)}" if source.meta.keys else str(key)
    return SourceError(f"decoding chunk {name} at mip {mip} (compressed_segmentation) failed: {e.problem}")


#: Chunks decoded together by ``read_points`` as their bytes arrive (bounds the encoded bytes held
#: and lets decoding overlap the reads still in flight).
DECODE_BATCH = 64


def read_points(source, mip: int, keys: np.ndarray, chunk_of: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Labels at ``local`` (N, 3) positions inside storage chunks ``keys[chunk_of]`` at ``mip``.

    Chunks with few points (``_cseg.use_blocks``) are read by random access, fetched all at once
    and decoded in batches of ``DECODE_BATCH`` chunks as their bytes arrive; the others are
    decoded whole, one at a time. Points sorted by ``chunk_of`` (as ``lookup_points``
    gives them) are decoded in place, without gathering. ``SourceError`` for failed reads and
    corrupt chunks."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    chunk_of = np.asarray(chunk_of, dtype=np.int64).ravel()
    local = np.asarray(local, dtype=np.int64).reshape(-1, 3)
    if len(chunk_of) > 1 and (np.diff(chunk_of) < 0).any():
        order = np.argsort(chunk_of, kind="stable")
        out = np.empty(len(chunk_of), dtype=np.uint64)
        out[order] = read_points(source, mip, keys, chunk_of[order], local[order])
        return out
    return _read_sorted(source, mip, keys, chunk_of, local)


def _read_sorted(source, mip, keys, chunk_of, local) -> np.ndarray:
    """``read_points`` for points sorted by chunk: chunk ``k``'s points are rows
    ``b[k]:b[k + 1]``. Chunks are decoded in batches as they arrive (``decode_points``)."""
    meta = source.meta
    out = np.zeros(len(chunk_of), dtype=np.uint64)
    shapes = chunk_shapes(meta, keys, mip)
    bounds = np.searchsorted(chunk_of, np.arange(len(keys) + 1))
    counts = np.diff(bounds)
    compiled = _cseg.use_compiled(len(chunk_of))
    ra = _cseg.use_blocks(counts, shapes.prod(axis=1), compiled) & _random_access_ok(meta, mip)
    block = _block(meta, mip)
    b = bounds.tolist()

    def decode(batch: list) -> None:
        """``batch``: (k, encoded bytes) of chunks read by random access."""
        batch.sort(key=lambda kd: kd[0])
        ks = [k for k, _ in batch]
        if all(b[k1] == b[k0 + 1] for k0, k1 in zip(ks, ks[1:])):  # rows contiguous: no gather
            rows = slice(b[ks[0]], b[ks[-1] + 1])
        else:  # the rows of each chunk, one run after another
            n = counts[ks]
            rows = np.repeat(bounds[ks] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        idx = np.repeat(np.arange(len(ks)), counts[ks])
        try:
            out[rows] = _cseg.decode_points([d for _, d in batch], shapes[ks], block, idx, local[rows],
                                            compiled=compiled)
        except _cseg.CsegError as e:
            raise _source_error(source, keys[ks[e.chunk]], mip, e) from e

    want = np.flatnonzero(ra & (counts > 0)).tolist()
    at = dict(zip(map(tuple, keys[want].tolist()), want))  # chunk -> its index (keys are distinct
    if len(at) < len(want):  # as lookup_points gives them; else chunk -> its indices)
        at = {}
        for c, k in zip(map(tuple, keys[want].tolist()), want):
            at.setdefault(c, []).append(k)
    batch = []
    for c, data in source.read_encoded_many(list(at), mip) if at else ():
        for k in at[c] if isinstance(at[c], list) else (at[c],):
            if data is None:  # decoded whole below (background or a raw scale)
                ra[k] = False
            else:
                batch.append((k, data))
                if len(batch) >= DECODE_BATCH:
                    decode(batch)
                    batch = []
    if batch:
        decode(batch)
    whole = {tuple(int(x) for x in keys[k]): k for k in np.flatnonzero(~ra & (counts > 0))}
    for c, blk in source.read_chunks(list(whole), mip) if whole else ():
        k = whole[c]
        p = local[b[k]: b[k + 1]]
        out[b[k]: b[k + 1]] = blk[p[:, 0], p[:, 1], p[:, 2]]
    return out


def read_boxes(source, mip: int, keys, los, his):
    """``(n, labels)`` of the half-open box ``[los[n], his[n])`` local to storage chunk ``keys[n]`` at
    ``mip``, for every ``n``, in any order: only the blocks a box touches when they are few
    (``_cseg.use_blocks``), else from the whole chunk; all chunks are fetched concurrently."""
    meta = source.meta
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    los, his = np.asarray(los, dtype=np.int64).reshape(-1, 3), np.asarray(his, dtype=np.int64).reshape(-1, 3)
    shapes = chunk_shapes(meta, keys, mip)
    blk = _block(meta, mip)
    few = np.array([_cseg.use_blocks(_cseg.block_voxels(lo, hi, shape, blk), int(shape.prod()))
                    for lo, hi, shape in zip(los, his, shapes)], dtype=bool) & _random_access_ok(meta, mip)
    whole = list(np.flatnonzero(~few))
    for n, data in zip(np.flatnonzero(few), _encoded(source, keys[few], mip)):
        if data is None:
            whole.append(n)
            continue
        try:
            yield int(n), _cseg.decode_box(data, shapes[n], blk, los[n], his[n])
        except _cseg.CsegError as e:
            raise _source_error(source, keys[n], mip, e) from e
    at = {tuple(int(x) for x in keys[n]): [] for n in whole}
    for n in whole:
        at[tuple(int(x) for x in keys[n])].append(n)
    for c, block in source.read_chunks(list(at), mip) if at else ():
        for n in at[c]:
            yield int(n), block[tuple(slice(a, b) for a, b in zip(los[n], his[n]))]


def read_box(source, key, mip: int, lo, hi) -> np.ndarray:
    """Labels of the half-open box [lo, hi) local to storage chunk ``key`` at ``mip``
    (``read_boxes`` for one box)."""
    return next(read_boxes(source, mip, [key], [lo], [hi]))[1]
