"""Per-chunk choice between random access (``_cseg``) and a full chunk decode.

One rule (``_cseg.use_blocks``): a chunk is read by random access when the voxels it must yield
(points, or the voxels of the 8 x 8 x 8 blocks a box touches) are fewer than ``_cseg.CROSSOVER``
of its voxels, and decoded whole otherwise. Random access needs the encoded bytes
(``source.read_encoded``): unsharded compressed_segmentation only; anything else (raw, sharded,
a missing chunk read as background) is decoded in full as before.
"""
from __future__ import annotations

import numpy as np

from ..errors import SourceError
from . import _cseg

__all__ = ["read_points", "read_box", "chunk_shapes"]


def chunk_shapes(meta, keys: np.ndarray, mip: int) -> np.ndarray:
    """(K, 3) shape of each storage chunk ``keys`` (K, 3) at ``mip``, clipped at the volume's edge."""
    lo, hi = meta.bounds(mip)
    cs = np.array(meta.chunk_size[mip], dtype=np.int64)
    c_lo = lo + np.asarray(keys, dtype=np.int64).reshape(-1, 3) * cs
    return np.minimum(c_lo + cs, hi) - c_lo


def _encoded(source, keys, mip: int) -> list:
    read = getattr(source, "read_encoded", None)
    if read is None:
        return [None] * len(keys)
    return [read(tuple(int(x) for x in c), mip) for c in keys]


def _block(meta, mip: int) -> tuple[int, int, int]:
    return tuple(meta.cseg_block_size[mip]) if meta.cseg_block_size else (8, 8, 8)


def _random_access_ok(meta, mip: int) -> bool:
    return meta.encoding[mip] == "compressed_segmentation" and not (meta.sharded and meta.sharded[mip])


def _source_error(source, key, mip: int, e: Exception) -> SourceError:
    name = f"{source.meta.keys[mip]}/chunk {tuple(int(x) for x in key)}" if source.meta.keys else str(key)
    return SourceError(f"decoding chunk {name} at mip {mip} (compressed_segmentation) failed: {e.problem}")


def read_points(source, mip: int, keys: np.ndarray, chunk_of: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Labels at ``local`` (N, 3) positions inside storage chunks ``keys[chunk_of]`` at ``mip``.

    Chunks with few points (``_cseg.use_blocks``) are read by random access, all at once; the
    others are decoded whole, one at a time. ``SourceError`` for failed reads and corrupt chunks."""
    meta = source.meta
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    chunk_of = np.asarray(chunk_of, dtype=np.int64)
    out = np.zeros(len(chunk_of), dtype=np.uint64)
    shapes = chunk_shapes(meta, keys, mip)
    counts = np.bincount(chunk_of, minlength=len(keys))
    ra = _cseg.use_blocks(counts, shapes.prod(axis=1)) & _random_access_ok(meta, mip)
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.r_[0, np.cumsum(counts)]
    ra_keys = np.flatnonzero(ra)
    datas = _encoded(source, keys[ra_keys], mip)
    have = np.array([d is not None for d in datas], dtype=bool)
    ra[ra_keys[~have]] = False
    ra_keys, datas = ra_keys[have], [d for d in datas if d is not None]
    if len(ra_keys):
        renum = np.full(len(keys), -1, dtype=np.int64)
        renum[ra_keys] = np.arange(len(ra_keys))
        rows = np.flatnonzero(ra[chunk_of])
        try:
            out[rows] = _cseg.decode_points(datas, shapes[ra_keys], _block(meta, mip), renum[chunk_of[rows]],
                                            local[rows])
        except _cseg.CsegError as e:
            raise _source_error(source, keys[ra_keys[e.chunk]], mip, e) from e
    for k in np.flatnonzero(~ra & (counts > 0)):
        rows = order[bounds[k]: bounds[k + 1]]
        block = source.read_chunk(tuple(int(x) for x in keys[k]), mip)
        p = local[rows]
        out[rows] = block[p[:, 0], p[:, 1], p[:, 2]]
    return out


def read_box(source, key, mip: int, lo, hi) -> np.ndarray:
    """Labels of the half-open box [lo, hi) local to storage chunk ``key`` at ``mip``: only the
    blocks it touches when they are few (``_cseg.use_blocks``), else from the whole chunk."""
    meta = source.meta
    key = tuple(int(x) for x in key)
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    shape = chunk_shapes(meta, np.array([key]), mip)[0]
    if _random_access_ok(meta, mip) and _cseg.use_blocks(
            _cseg.block_voxels(lo, hi, shape, _block(meta, mip)), int(shape.prod())):
        (data,) = _encoded(source, [key], mip)
        if data is not None:
            try:
                return _cseg.decode_box(data, shape, _block(meta, mip), lo, hi)
            except _cseg.CsegError as e:
                raise _source_error(source, key, mip, e) from e
    block = source.read_chunk(key, mip)
    return block[tuple(slice(a, b) for a, b in zip(lo, hi))]
