"""Layer checks on node IDs: ``is_valid_root`` and ``is_valid_supervoxel``.

Pure CPU over the graphene bit layout (``IDLayout.layer``), vectorised: no per-ID loop and no
request per ID (anchor-semantics.md section 4.2). The dataset is consulted once, for its layout.
"""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .._ids import IDLayout
from .._validate import as_ids
from ..errors import InvalidIDError
from ..sources import open_source
from ..sources.resolve import resolve_dataset
from ._lazy import lazy_ids

__all__ = ["layer_is_kernel", "is_valid_root", "is_valid_supervoxel", "is_valid_root_graph",
           "is_valid_supervoxel_graph"]


def layer_is_kernel(ids: np.ndarray, layout: IDLayout, layer: int) -> np.ndarray:
    """True where an ID's layer bits equal ``layer``; same shape as ``ids``, bool. 0 is False.

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.sources.resolve import resolve_dataset
    >>> from crantseg_dask.ops.validity import layer_is_kernel
    >>> from crantseg_dask.sources import open_source
    >>> layout = open_source(resolve_dataset("tiny")).meta.layout
    >>> ids = np.array([576460752373423560, 144256063137382402, 72198469099454522, 0], dtype=np.uint64)
    >>> layout.layer(ids)
    array([8, 2, 1, 0]...)
    >>> layer_is_kernel(ids, layout, 2)
    array([False,  True, False, False])
    """
    ids = np.asarray(ids, dtype=np.uint64)
    return (layout.layer(ids) == layer) & (ids != 0)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (str, bytes, int, float, np.generic)) or x is None


def _check(x: Any, dataset, raise_exc: bool, which: str):
    layout = open_source(resolve_dataset(dataset)).meta.layout
    layer = layout.n_layers if which == "root" else 1
    if _is_scalar(x):
        try:
            ok = bool(layer_is_kernel(as_ids(x, name="x"), layout, layer)[0])
        except InvalidIDError:  # a non-numeric string, a negative number ...
            ok = False
        if not ok and raise_exc:
            raise InvalidIDError(f"{x} is not a valid {which} ID")
        return ok
    ids = as_ids(x, name="x", nan="zero")
    ok = layer_is_kernel(ids, layout, layer)
    if raise_exc and not ok.all():
        bad = {int(v) for v in ids[~ok]}
        raise InvalidIDError(f"Invalid {which} IDs found: {bad}")
    return ok


def is_valid_root(x, dataset=None, raise_exc: bool = False):
    """Whether IDs are root IDs: their layer bits equal the dataset's ``n_layers`` (8 for CRANT).

    Only the bit layout is checked; whether the root exists (or is current) is not.

    Parameters
    ----------
    x : int, str or iterable of those
        One ID (a numeric string is one ID) or a 1-D collection; NaN/None count as 0.
    dataset : str or SourceSpec, optional
        Dataset whose layout to use (default: the configured default dataset).
    raise_exc : bool
        Raise instead of returning False.

    Returns
    -------
    bool or numpy.ndarray of bool
        A Python bool for a scalar; otherwise a bool array of the input's length, in input order.
        0, L2 IDs, supervoxels and non-numeric scalars are False.

    Raises
    ------
    InvalidIDError (ValueError)
        With ``raise_exc``: "<x> is not a valid root ID" for a scalar, "Invalid root IDs found:
        {...}" for an iterable. Always: an iterable holding non-numeric or negative values.

    Examples
    --------
    >>> from crantseg_dask import is_valid_root
    >>> is_valid_root(576460752373423560, dataset="tiny")
    True
    >>> is_valid_root([576460752373423560, 72198469099454522, 0], dataset="tiny")
    array([ True, False, False])
    >>> is_valid_root(72198469099454522, dataset="tiny", raise_exc=True)
    Traceback (most recent call last):
        ...
    crantseg_dask.errors.InvalidIDError: 72198469099454522 is not a valid root ID
    """
    return _check(x, dataset, raise_exc, "root")


def is_valid_supervoxel(x, dataset=None, raise_exc: bool = False):
    """Whether IDs are supervoxel IDs (layer bits == 1). Same contract as ``is_valid_root``,
    with messages "<x> is not a valid supervoxel ID" / "Invalid supervoxel IDs found: {...}".

    Examples
    --------
    >>> from crantseg_dask import is_valid_supervoxel
    >>> is_valid_supervoxel("72198469099454522", dataset="tiny")
    True
    >>> is_valid_supervoxel([72198469099454522, 576460752373423560], dataset="tiny")
    array([ True, False])
    """
    return _check(x, dataset, raise_exc, "supervoxel")


def _graph(ids: da.Array, dataset, which: str) -> da.Array:
    layout = open_source(resolve_dataset(dataset)).meta.layout
    layer = layout.n_layers if which == "root" else 1
    return lazy_ids(ids).map_blocks(layer_is_kernel, layout=layout, layer=layer, dtype=bool,
                                            meta=np.empty((0,) * ids.ndim, bool))


def is_valid_root_graph(ids: da.Array, *, dataset=None) -> da.Array:
    """Lazy ``is_valid_root`` over an integer Dask array: a bool array of the same shape/chunks.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.validity import is_valid_root_graph
    >>> ids = da.from_array(np.array([576460752373423560, 72198469099454522, 0]), chunks=2)
    >>> is_valid_root_graph(ids, dataset="tiny").compute()
    array([ True, False, False])
    """
    return _graph(ids, dataset, "root")


def is_valid_supervoxel_graph(ids: da.Array, *, dataset=None) -> da.Array:
    """Lazy ``is_valid_supervoxel`` over an integer Dask array: bool, same shape/chunks.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from crantseg_dask.ops.validity import is_valid_supervoxel_graph
    >>> ids = da.from_array(np.array([576460752373423560, 72198469099454522, 0]), chunks=2)
    >>> is_valid_supervoxel_graph(ids, dataset="tiny").compute()
    array([False,  True, False])
    """
    return _graph(ids, dataset, "supervoxel")
