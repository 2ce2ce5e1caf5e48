"""Supervoxels to roots and roots to supervoxels, over deduplicated ID batches.

(The eager wrappers ``supervoxels_to_roots`` and ``roots_to_supervoxels`` are added by the
ID-operations work; the kernel and builder below are shared with the location operations.)
"""
from __future__ import annotations

from datetime import datetime

import dask.array as da
import numpy as np

from ..sources import SourceSpec, open_source

__all__ = ["roots_kernel", "roots_graph"]


def roots_kernel(ids: np.ndarray, spec: SourceSpec, timestamp: datetime, stop_layer: int | None = None,
                 batch_size: int = 10_000) -> np.ndarray:
    """Root (or ``stop_layer`` ancestor) of each ID in a block, same shape, uint64.

    The block's IDs are deduplicated and zeros dropped; the unique IDs go to the source in batches
    of at most ``batch_size``; results are scattered back. Pure given the source's state at
    ``timestamp``."""
    ids = np.asarray(ids, dtype=np.uint64)
    uniq, inverse = np.unique(ids.ravel(), return_inverse=True)
    out = np.zeros(uniq.shape, dtype=np.uint64)
    nz = np.flatnonzero(uniq)
    if nz.size:
        source = open_source(spec)
        for start in range(0, nz.size, batch_size):
            sel = nz[start: start + batch_size]
            out[sel] = source.roots(uniq[sel], timestamp, stop_layer)
    return out[inverse].reshape(ids.shape)


def roots_graph(ids: da.Array, spec: SourceSpec, timestamp: datetime, stop_layer: int | None = None,
                batch_size: int = 10_000) -> da.Array:
    """Lazy ``roots_kernel`` over every block of a uint64 Dask array (one task per block)."""
    return ids.map_blocks(roots_kernel, spec=spec, timestamp=timestamp, stop_layer=stop_layer,
                          batch_size=batch_size, dtype=np.uint64, meta=np.empty((0,) * ids.ndim, np.uint64))
