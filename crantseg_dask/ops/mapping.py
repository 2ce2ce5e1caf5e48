"""Supervoxels to roots and roots to supervoxels, over deduplicated ID batches.

``roots_kernel``/``roots_graph`` are the shared deduplicated-supervoxel roots code (also used by
the location operations). ``supervoxels_to_roots`` and ``roots_to_supervoxels`` are crantpy's eager
functions; ``supervoxels_to_roots_graph`` and ``roots_to_supervoxels_graph`` their lazy builders.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import dask
import dask.array as da
import numpy as np

from .._cache import LeavesCache, cache_identity
from .._graph import compute
from .._unique import map_unique
from .._validate import as_ids, as_layer, as_positive_int, check_layers
from ..config import data_dir
from ..sources import SourceSpec, open_source
from ..sources.resolve import resolve_dataset, resolve_timestamp
from ._lazy import lazy_ids
from .validity import is_valid_root

__all__ = ["roots_kernel", "roots_graph", "supervoxels_to_roots", "supervoxels_to_roots_graph",
           "leaves_kernel", "roots_to_supervoxels", "roots_to_supervoxels_graph", "parse_root_ids"]

LEAVES_PER_TASK = 16  # roots per leaves_many request (real neurons have ~1e5 supervoxels each)


def _with_retry(fn, retry: float | None):
    """Call ``fn()``; on any exception (not KeyboardInterrupt) wait ``retry`` s and call it once
    more when ``retry`` is not None (crantpy's rule, checklist 16)."""
    try:
        return fn()
    except Exception:
        if retry is None:
            raise
        time.sleep(retry)
        return fn()


def roots_kernel(ids: np.ndarray, spec: SourceSpec, timestamp: datetime, stop_layer: int | None = None,
                 batch_size: int = 10_000, *, retry: float | None = None) -> np.ndarray:
    """Root (or ``stop_layer`` ancestor) of each ID in a block, same shape, uint64.

    The block's IDs are deduplicated and zeros dropped (``_unique.map_unique``); the unique IDs go
    to the source in one call, which sends them in requests of at most ``batch_size`` (and the
    dataset's ``crantseg.batch-size``); results are scattered back. Pure given the source's state
    at ``timestamp``. ``retry``: seconds to wait before the one retry of a failed call (None: no
    retry, the first exception propagates).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.mapping import roots_kernel
    >>> svs = np.array([[72198469099454522, 0], [72198469099454522, 72198469032345652]], dtype=np.uint64)
    >>> roots_kernel(svs, resolve_dataset("tiny"), datetime(2025, 8, 1, tzinfo=timezone.utc))
    array([[576460752373423816,                  0],
           [576460752373423816, 576460752373423813]], dtype=uint64)
    """
    source = open_source(spec)
    return map_unique(ids, lambda u: _with_retry(lambda: source.roots(u, timestamp, stop_layer, batch_size), retry))


def roots_graph(ids: da.Array, spec: SourceSpec, timestamp: datetime, stop_layer: int | None = None,
                batch_size: int = 10_000, *, retry: float | None = None) -> da.Array:
    """Lazy ``roots_kernel`` over every block of a uint64 Dask array (one task per block).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.mapping import roots_graph
    >>> svs = da.from_array(np.array([72198469099454522, 72198469032345652, 0], dtype=np.uint64), chunks=2)
    >>> ts = datetime(2025, 6, 27, tzinfo=timezone.utc)
    >>> roots_graph(svs, resolve_dataset("tiny"), ts).compute()
    array([576460752373423809, 576460752373423807,                  0], dtype=uint64)
    """
    return ids.map_blocks(roots_kernel, spec=spec, timestamp=timestamp, stop_layer=stop_layer,
                          batch_size=batch_size, retry=retry, dtype=np.uint64,
                          meta=np.empty((0,) * ids.ndim, np.uint64))


# -- supervoxels_to_roots ---------------------------------------------------------------------
def _prepare(timestamp, stop_layer, batch_size, retry, dataset):
    """Resolve dataset, timestamp (once), stop layer and retry policy for one call."""
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    stop = as_layer(stop_layer, source.meta.n_layers)
    bs = as_positive_int(batch_size, name="batch_size")
    ts = resolve_timestamp(timestamp, source)
    wait = float(spec.setting("retry-wait", 1.0)) if retry else None
    return spec, ts, stop, bs, wait


def _as_id_array(ids: Any) -> np.ndarray:
    """IDs of any shape as a uint64 array of that shape (1-D for scalars and lists)."""
    if isinstance(ids, np.ndarray) and ids.ndim > 1:
        return as_ids(ids.ravel(), name="ids").reshape(ids.shape)
    return as_ids(ids, name="ids")


def supervoxels_to_roots(ids, timestamp="mat", clear_cache=False, batch_size=10000, stop_layer=8,
                         retry=True, progress=True, *, dataset=None) -> np.ndarray:
    """Root IDs (or ``stop_layer`` ancestors) of supervoxels (or any node IDs) at a time.

    The IDs are deduplicated and zeros dropped on the client; the unique IDs become a Dask array
    with chunks of ``batch_size``, one task (one source request) per chunk, run in parallel; the
    results are scattered back into the input's shape and order.

    Parameters
    ----------
    ids : int, str, array-like
        Node IDs (uint64 range; a numeric string is one ID). Arrays of any shape are accepted.
    timestamp : None, str, int, datetime
        Time of the graph state: "mat" (default, crantpy's) / "mat_latest" = latest
        materialization, "mat_<N>" = version N, None = now, ISO 8601 (naive = UTC), unix seconds
        (any numeric type), datetime. Resolved once per call.
    clear_cache : bool
        Accepted for compatibility; there is no volume to rebuild.
    batch_size : int
        Maximum unique IDs per request (>= 1). The result does not depend on it.
    stop_layer : int
        Layer to stop at (8 = roots for CRANT; 2 gives L2 IDs). IDs already at or above it are
        returned unchanged (outdated root IDs included).
    retry : bool
        Retry a failed batch once after ~1 s (``crantseg.retry-wait``); otherwise the first
        exception propagates.
    progress : bool
        Show a progress bar (local schedulers).
    dataset : str or SourceSpec, optional
        Dataset (default: the configured default).

    Returns
    -------
    numpy.ndarray of int64
        Same shape and order as ``ids``; duplicates preserved; 0 for input 0 and for IDs unknown
        at ``timestamp`` (the server's fail-to-zero).

    Raises
    ------
    InvalidInputError (ValueError)
        ``stop_layer`` outside 1..n_layers, bad ``batch_size``, bad IDs (float IDs without
        the ``crantseg.allow-float-ids`` opt-in, impossible layer bits) or timestamp.

    Examples
    --------
    >>> from crantseg_dask import supervoxels_to_roots
    >>> svs = [72198469099454522, 72198469032345652, 0]
    >>> supervoxels_to_roots(svs, dataset="tiny")  # at the latest materialization
    array([576460752373423809, 576460752373423807,                  0])
    >>> supervoxels_to_roots(svs, timestamp=None, dataset="tiny")  # now
    array([576460752373423816, 576460752373423813,                  0])
    >>> supervoxels_to_roots(svs, stop_layer=2, dataset="tiny")  # L2 IDs
    array([144256063137382421, 144256063070273549,                  0])
    """
    arr = _as_id_array(ids)
    spec, ts, stop, bs, wait = _prepare(timestamp, stop_layer, batch_size, retry, dataset)
    check_layers(arr, open_source(spec).meta.layout, name="ids")

    def lookup(nz):  # one task per batch_size chunk of the unique non-zero IDs, run in parallel
        lazy = roots_graph(da.from_array(nz, chunks=bs, name=False), spec, ts, stop, bs, retry=wait)
        return compute(lazy, progress=progress and nz.size >= bs, desc="supervoxels_to_roots")[0]

    return map_unique(arr, lookup).astype(np.int64)


def supervoxels_to_roots_graph(ids: da.Array, timestamp="mat", batch_size: int = 10000, stop_layer: int = 8,
                               retry: bool = True, *, dataset=None) -> da.Array:
    """Lazy ``supervoxels_to_roots`` over an integer Dask array: int64, same shape and chunks.

    The timestamp is resolved now (once, at build time). Each block is deduplicated inside its
    task and sent in requests of at most ``batch_size`` unique IDs.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.mapping import supervoxels_to_roots_graph
    >>> svs = da.from_array(np.array([72198469099454522, 72198469032345652, 0]), chunks=2)
    >>> supervoxels_to_roots_graph(svs, timestamp=None, dataset="tiny").compute()
    array([576460752373423816, 576460752373423813,                  0])
    """
    spec, ts, stop, bs, wait = _prepare(timestamp, stop_layer, batch_size, retry, dataset)
    return roots_graph(lazy_ids(ids), spec, ts, stop, bs, retry=wait).astype(np.int64)


# -- roots_to_supervoxels ---------------------------------------------------------------------
def parse_root_ids(x: Any) -> np.ndarray:
    """Root IDs from IDs, numeric strings (a single string is ONE ID), neurons (``.id``),
    NeuronLists, or objects with ``get_roots()``; 1-D uint64 (NaN/None -> 0).

    Examples
    --------
    >>> from crantseg_dask.ops.mapping import parse_root_ids
    >>> parse_root_ids("576460752373423560")  # one ID, not its digits
    array([576460752373423560], dtype=uint64)
    >>> parse_root_ids([576460752373423560, None])
    array([576460752373423560,                  0], dtype=uint64)
    """
    if hasattr(x, "get_roots"):
        x = x.get_roots()
    elif hasattr(x, "id") and not isinstance(x, (str, bytes, np.ndarray)):
        x = x.id
    elif isinstance(x, (list, tuple)) and any(hasattr(v, "id") for v in x):
        x = [getattr(v, "id", v) for v in x]
    return as_ids(x, name="neurons", nan="zero")


def leaves_kernel(roots: np.ndarray, spec: SourceSpec) -> dict[int, np.ndarray]:
    """Supervoxels (sorted uint64) of each root in one batch: one ``leaves_many`` request.

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.mapping import leaves_kernel
    >>> leaves = leaves_kernel(np.array([576460752373423493, 576460752373423507]), resolve_dataset("tiny"))
    >>> {root: len(svs) for root, svs in leaves.items()}
    {576460752373423493: 1, 576460752373423507: 9}
    >>> leaves[576460752373423493]
    array([...], dtype=uint64)
    """
    got = open_source(spec).leaves_many(np.asarray(roots, dtype=np.uint64), stop_layer=1)
    return {int(r): np.sort(np.asarray(got[int(r)], dtype=np.uint64)) for r in np.asarray(roots).tolist()}


def roots_to_supervoxels_graph(neurons, *, dataset=None, batch: int = LEAVES_PER_TASK):
    """Lazy leaves of roots: a ``dask.delayed`` dict {int root: uint64 supervoxels}, one task per
    ``batch`` unique roots plus a merge task. No cache is read or written.

    Examples
    --------
    >>> from crantseg_dask.ops.mapping import roots_to_supervoxels_graph
    >>> lazy = roots_to_supervoxels_graph([576460752373423507, 576460752373423493], dataset="tiny")
    >>> {int(root): len(svs) for root, svs in lazy.compute().items()}
    {576460752373423493: 1, 576460752373423507: 9}
    """
    spec = resolve_dataset(dataset)
    roots = np.unique(parse_root_ids(neurons))
    is_valid_root(roots, dataset=spec, raise_exc=True)
    parts = [dask.delayed(leaves_kernel, pure=True)(roots[i: i + batch], spec)
             for i in range(0, len(roots), batch)]
    return dask.delayed(lambda ds: {k: v for d in ds for k, v in d.items()}, pure=True)(parts)


def _leaves_cache(spec: SourceSpec) -> LeavesCache:
    return LeavesCache(data_dir() / "_cache" / "leaves", cache_identity(spec))


def roots_to_supervoxels(neurons, clear_cache=False, progress=True, *, dataset=None) -> dict:
    """Supervoxels making up each root.

    Leaves come from the persistent cache (``<data-dir>/_cache/leaves``, keyed by dataset identity
    and root: a root's leaves never change) or, for misses, from parallel ``leaves_many`` tasks of
    up to 16 roots each; misses are then written to the cache.

    Parameters
    ----------
    neurons : int, str, iterable, neuron(s)
        Root IDs; a single numeric string is ONE ID (crantpy splits it into digits: fixed).
        Duplicates collapse.
    clear_cache : bool
        Bypass the cache for reading and writing (always fetch).
    progress : bool
        Show a progress bar (local schedulers).
    dataset : str or SourceSpec, optional
        Dataset (default: the configured default).

    Returns
    -------
    dict
        ``{numpy.int64 root: numpy.ndarray[uint64] sorted supervoxels}``, keys in ascending root
        order (crantpy: cached first, then misses). Empty input gives ``{}``.

    Raises
    ------
    InvalidIDError (ValueError)
        An ID (0 included) whose layer is not the root layer, before any request.
    UnknownIDError (KeyError) or SourceError
        A root-layer ID the dataset does not know.

    Examples
    --------
    >>> from crantseg_dask import roots_to_supervoxels
    >>> leaves = roots_to_supervoxels([576460752373423816, 576460752373423507], dataset="tiny", progress=False)
    >>> {int(root): len(svs) for root, svs in leaves.items()}
    {576460752373423507: 9, 576460752373423816: 133}
    >>> leaves[576460752373423816][:3]
    array([72057662824513537, 72057662891622403, 72057662891622404], dtype=uint64)
    """
    spec = resolve_dataset(dataset)
    roots = np.unique(parse_root_ids(neurons))
    if roots.size == 0:
        return {}
    is_valid_root(roots, dataset=spec, raise_exc=True)
    cache = _leaves_cache(spec)
    found = {} if clear_cache else {int(r): cache.get(int(r)) for r in roots.tolist()}
    missing = np.array([r for r in roots.tolist() if found.get(r) is None], dtype=np.uint64)
    if missing.size:
        lazy = roots_to_supervoxels_graph(missing, dataset=spec)
        (got,) = compute(lazy, progress=progress, desc="roots_to_supervoxels")
        found.update(got)
        if not clear_cache:
            for r, leaves in got.items():
                cache.put(r, leaves)
    return {np.int64(r): found[int(r)] for r in roots.tolist()}
