"""Is a root current at a time: ``is_latest_roots``.

The kernel works on one batch of unique root IDs (one ``is_latest`` request); the builder maps it
over a Dask array; the eager wrapper deduplicates on the client, runs one task per batch and
scatters results back in input order.
"""
from __future__ import annotations

from datetime import datetime

import dask.array as da
import numpy as np

from .._graph import compute
from .._unique import map_unique
from .._validate import as_ids
from ..sources import SourceSpec, open_source
from ..sources.resolve import resolve_dataset, resolve_timestamp
from ._lazy import lazy_ids
from .validity import is_valid_root

__all__ = ["is_latest_kernel", "is_latest_roots", "is_latest_roots_graph"]


def is_latest_kernel(ids: np.ndarray, spec: SourceSpec, timestamp: datetime) -> np.ndarray:
    """Whether each root is current at ``timestamp`` (bool, same shape). 0 is False; unknown IDs
    and roots created after ``timestamp`` are False, and so are non-root IDs (PCG reports existing
    L2 nodes as "latest"; only root semantics are meaningful). One request per block.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.latest import is_latest_kernel
    >>> ids = np.array([576460752373423813, 576460752373423807, 0], dtype=np.uint64)
    >>> is_latest_kernel(ids, resolve_dataset("tiny"), datetime(2025, 8, 1, tzinfo=timezone.utc))
    array([ True, False, False])
    """
    def latest(uniq: np.ndarray) -> np.ndarray:
        source = open_source(spec)
        layout = source.meta.layout
        return source.is_latest(uniq, timestamp) & (layout.layer(uniq) == layout.n_layers)

    return map_unique(ids, latest, dtype=bool, fill=False)



def is_latest_roots_graph(ids: da.Array, timestamp=None, *, dataset=None) -> da.Array:
    """Lazy ``is_latest_roots`` over a Dask array of root IDs: bool, same shape and chunks.
    The timestamp is resolved once, now.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.latest import is_latest_roots_graph
    >>> ids = da.from_array(np.array([576460752373423813, 576460752373423807]), chunks=1)
    >>> is_latest_roots_graph(ids, dataset="tiny").compute()
    array([ True, False])
    """
    spec = resolve_dataset(dataset)
    ts = resolve_timestamp(timestamp, open_source(spec))
    return lazy_ids(ids).map_blocks(is_latest_kernel, spec=spec, timestamp=ts, dtype=bool,
                                            meta=np.empty((0,) * ids.ndim, bool))


def is_latest_roots(x, timestamp=None, dataset=None, progress=True, batch_size=100_000,
                    validate_ids=True, use_http_session=True) -> np.ndarray:
    """Whether root IDs are current (not superseded) at a time.

    Parameters
    ----------
    x : int, str or iterable
        Root IDs (a numeric string is one ID); NaN/None count as 0.
    timestamp : None, str, int, datetime
        None = now; "mat"/"mat_latest"/"mat_<N>"; ISO 8601 (naive = UTC); unix seconds; datetime.
        Resolved once and sent as an aware UTC time (crantpy sends a naive ISO string that the
        server rejects, so every timestamped call fails there: fixed).
    progress : bool
        Show a progress bar (local schedulers).
    batch_size : int
        Unique IDs per request; one Dask task per batch.
    validate_ids : bool
        Raise if a non-zero ID is not at the root layer, before any request.
    use_http_session : bool
        Accepted for compatibility; the source owns its session.

    Returns
    -------
    numpy.ndarray of bool
        Input length and order. True iff the root exists at ``timestamp`` and has not been
        superseded at or before it. Zeros are always False (crantpy: True in mixed input, False
        when all are zero: fixed); unknown IDs are False.

    Raises
    ------
    InvalidIDError (ValueError)
        With ``validate_ids``: "Invalid root IDs found: {...}".
    InvalidTimestampError (ValueError)
        "Invalid materialization timestamp format" for e.g. "mat_x".

    Examples
    --------
    576460752373423807 was split into 576460752373423813 and 576460752373423814 on 2025-06-27,
    after the latest materialization:

    >>> from crantseg_dask import is_latest_roots
    >>> is_latest_roots([576460752373423813, 576460752373423807, 0], dataset="tiny", progress=False)
    array([ True, False, False])
    >>> is_latest_roots([576460752373423813, 576460752373423807], timestamp="mat", dataset="tiny",
    ...                 progress=False)
    array([False,  True])
    """
    ids = as_ids(x, name="x", nan="zero")
    spec = resolve_dataset(dataset)
    if validate_ids and ids.any():
        is_valid_root(ids[ids != 0], dataset=spec, raise_exc=True)
    ts = resolve_timestamp(timestamp, open_source(spec))

    def latest(uniq: np.ndarray) -> np.ndarray:  # one task per batch of unique IDs
        lazy = da.from_array(uniq, chunks=max(int(batch_size), 1), name=False).map_blocks(
            is_latest_kernel, spec=spec, timestamp=ts, dtype=bool, meta=np.empty((0,), bool))
        return compute(lazy, progress=progress, desc="is_latest_roots")[0]

    return map_unique(ids, latest, dtype=bool, fill=False)
