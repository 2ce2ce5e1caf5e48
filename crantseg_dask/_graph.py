"""Small helpers shared by the graph builders: computing with progress, picking a scheduler."""
from __future__ import annotations

import dask

__all__ = ["compute"]


def compute(*collections, progress: bool = False, desc: str | None = None):
    """Compute Dask collections for an eager call.

    Uses the active ``distributed.Client`` when there is one (its dashboard shows the work),
    otherwise Dask's default local scheduler. ``progress`` shows a tqdm bar on local schedulers.
    """
    try:
        from distributed import default_client

        default_client()
        distributed = True
    except (ImportError, ValueError):
        distributed = False
    if progress and not distributed:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, leave=False):
            return dask.compute(*collections)
    return dask.compute(*collections)
