"""A snap task's chunk reads streamed into its searches, and work run beside them.

The compiled search goes through a partition's rows in groups (rows sorted by the chunk under
them). Reading each group's chunks just before its search cost one storage round trip per group
(17-18 per 50,000-row partition of the demo; 20 ms each over a bucket), which the compiled search no
longer hides. ``stream_groups`` instead asks for the chunks of every group in one concurrent read
(``source.read_encoded_many``: the chunk-read layer's bounded reads in flight, retries and errors),
in group order, and hands over group ``g`` as soon as all of its chunks have arrived: group ``g``
is searched while later groups' chunks are still on the wire (in the libcurl thread, or the read
pool for ``file://``). ``in_background`` runs a call (the targets' leaves request) in a thread
while the caller reads.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ..errors import SourceError
from ._snap_gather import _boxes

__all__ = ["box_chunks", "in_background", "stream_groups"]


def box_chunks(lo: np.ndarray, hi: np.ndarray, vol_lo: np.ndarray, cs: np.ndarray) -> list[tuple]:
    """Keys (mip-0 chunk grid indices) of the chunks that the inclusive voxel boxes [lo, hi] (K, 3)
    touch, each once, in first-touch order; boxes with hi < lo on some axis touch none."""
    lo, hi = np.asarray(lo, np.int64).reshape(-1, 3), np.asarray(hi, np.int64).reshape(-1, 3)
    reach = np.all(hi >= lo, axis=1)
    if not reach.any():
        return []
    _, chunks = _boxes((lo[reach] - vol_lo) // cs, (hi[reach] - vol_lo) // cs)
    span = chunks.max(axis=0) + 1  # one int64 key per chunk: np.unique(axis=0) sorts rows, ~10x slower
    _, first = np.unique(chunks[:, 0] + span[0] * (chunks[:, 1] + span[1] * chunks[:, 2]), return_index=True)
    return [tuple(c) for c in chunks[np.sort(first)].tolist()]


def stream_groups(source, group_keys: list[list[tuple]], encoded: dict) -> Iterator[int]:
    """Yield each group index ``g`` once every chunk in ``group_keys[g]`` is in ``encoded`` (chunk
    key -> encoded bytes, None for a missing chunk read as background), fetching all the chunks
    ``encoded`` lacks in one ``source.read_encoded_many`` call, in group order. The read's errors
    (``SourceError``, ``AuthError``) are raised as they come; reads still pending when the caller
    stops are cancelled."""
    order: list[tuple] = []
    seen = set(encoded)
    for keys in group_keys:
        for k in keys:
            if k not in seen:
                seen.add(k)
                order.append(k)
    reads = iter(source.read_encoded_many(order, 0)) if order else iter(())
    try:
        for g, keys in enumerate(group_keys):
            for k in keys:
                while k not in encoded:
                    got = next(reads, None)
                    if got is None:  # a source that answered fewer chunks than asked
                        raise SourceError(f"chunk {k} (mip 0) was asked for but never read")
                    encoded[got[0]] = got[1]
            yield g
    finally:
        with contextlib.suppress(Exception):
            reads.close()


@contextlib.contextmanager
def in_background(fn, *args):
    """Run ``fn(*args)`` in a thread while the body runs; wait for it at the end and raise its
    exception, if any (the body's own exception wins)."""
    with ThreadPoolExecutor(1, thread_name_prefix="crantseg-snap") as pool:
        fut = pool.submit(fn, *args)
        try:
            yield fut
        except BaseException:
            fut.cancel()
            with contextlib.suppress(BaseException):
                fut.result()
            raise
        fut.result()
