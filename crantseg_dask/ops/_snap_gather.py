"""Helpers of the snap kernel around the compiled search: the supervoxel under each row, read from
the encoded chunks (which the kernel keeps for its searches), box enumeration, and the chunks'
words joined into one array.
"""
from __future__ import annotations

import numpy as np

from ..sources import _cseg, _partial

__all__ = ["labels_under"]


def _boxes(a: np.ndarray, b: np.ndarray):
    """Every integer point of the inclusive boxes [a[i], b[i]]: (which box (M,), points (M, 3)),
    box by box, x slowest."""
    ext = np.maximum(b - a + 1, 0)
    n = ext.prod(axis=1)
    which = np.repeat(np.arange(len(a)), n)
    # int32 where it fits (halves the memory traffic)
    t = np.int32 if n.sum() < 2**31 and int(np.abs(np.concatenate([a.ravel(), b.ravel(), [0]])).max()) < 2**30 else np.int64
    k = np.arange(int(n.sum()), dtype=t) - np.repeat((np.cumsum(n) - n).astype(t), n)
    ez, ey = np.repeat(ext[:, 2].astype(t), n), np.repeat(ext[:, 1].astype(t), n)
    rest, z = np.divmod(k, ez)
    x, y = np.divmod(rest, ey)
    pts = np.empty((len(k), 3), dtype=np.int64)
    pts[:, 0], pts[:, 1], pts[:, 2] = x, y, z
    pts += np.repeat(a, n, axis=0)
    return which, pts


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
    c = (vox[idx] - lo) // cs
    span = c.max(axis=0) + 1  # one int64 key per chunk: np.unique(axis=0) sorts rows, ~10x slower
    uniq, ci = np.unique(c[:, 2] + span[2] * (c[:, 1] + span[1] * c[:, 0]), return_inverse=True)
    chunks = np.stack([uniq // (span[1] * span[2]), uniq // span[2] % span[1], uniq % span[2]], axis=1)
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
