"""Small helpers shared by the graph builders: computing with progress, picking a scheduler."""
from __future__ import annotations

import dask

__all__ = ["compute"]

#: options only Dask's local schedulers understand; dropped under a ``distributed.Client``
_LOCAL_ONLY = ("num_workers", "pool")


def compute(*collections, progress: bool = False, desc: str | None = None, **kwargs):
    """Compute Dask collections for an eager call.

    Uses the active ``distributed.Client`` when there is one (its dashboard shows the work),
    otherwise Dask's default local scheduler. ``progress`` shows a tqdm bar on local schedulers.
    ``kwargs`` go to ``dask.compute`` for this call only (e.g. ``num_workers=``, instead of the
    process-global ``dask.config.set``); local-scheduler options are dropped under a client.
    """
    try:
        from distributed import default_client

        default_client()
        distributed = True
    except (ImportError, ValueError):
        distributed = False
    if distributed:
        kwargs = {k: v for k, v in kwargs.items() if k not in _LOCAL_ONLY}
    if progress and not distributed:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, leave=False):
            return dask.compute(*collections, **kwargs)
    return dask.compute(*collections, **kwargs)
