"""Which segments a skeleton overlaps: ``neuron_to_segments``.

Node tables (pandas DataFrames with x/y/z and a neuron id column) or navis neurons (when navis is
installed) go through the chunked ``locs_to_segments`` graph; the counts are pivoted into crantpy's
overlap matrix or its short summary (reference section 4.11, checklist items 46-48).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidInputError, InvalidNeuronError
from .locations import locs_to_segments

__all__ = ["InvalidNeuronError", "neuron_to_segments"]


def _navis():
    try:
        import navis  # optional: not a dependency
    except ImportError:
        return None
    return navis


def _nodes(x: Any, neuron_column: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(node table with x, y, z and ``neuron``, neuron ids in input order)."""
    if isinstance(x, pd.DataFrame):
        missing = [c for c in ("x", "y", "z", neuron_column) if c not in x.columns]
        if missing:
            raise InvalidInputError(
                f"node table is missing columns {missing}; it needs x, y, z and a neuron id column "
                f"{neuron_column!r} (name another with neuron_column=, or add one with "
                "df.assign(neuron=<id>))")
        nodes = pd.DataFrame({"x": x["x"], "y": x["y"], "z": x["z"], "neuron": x[neuron_column]})
        return nodes, pd.unique(nodes["neuron"])
    navis = _navis()
    if navis is not None and isinstance(x, navis.TreeNeuron):
        x = navis.NeuronList([x])
    if navis is not None and isinstance(x, navis.NeuronList):
        parts = [pd.DataFrame({"x": n.nodes["x"].to_numpy(), "y": n.nodes["y"].to_numpy(),
                               "z": n.nodes["z"].to_numpy(), "neuron": n.id}) for n in x]
        nodes = pd.concat(parts, ignore_index=True) if parts else \
            pd.DataFrame({"x": [], "y": [], "z": [], "neuron": []})
        return nodes, np.asarray([n.id for n in x])
    raise InvalidNeuronError(
        f"x must be a node table (pandas.DataFrame with x, y, z and {neuron_column!r} columns) or a "
        f"navis TreeNeuron/NeuronList, got {type(x).__name__}"
        + ("" if navis is not None else " (navis is not installed)"))


def overlap_matrix(neuron: np.ndarray, roots: np.ndarray) -> pd.DataFrame:
    """Node counts per (root, neuron): index ``root_id`` ascending (0 dropped), columns ``id``
    (neuron ids, sorted), NaN where a neuron has no node on a root (then the dtype is float).

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.ops.neurons import overlap_matrix
    >>> overlap_matrix(np.array([1, 1, 1, 2]), np.array([7, 7, 0, 9]))
    id         1    2
    root_id
    7        2.0  NaN
    9        NaN  1.0
    """
    df = pd.DataFrame({"id": neuron, "root_id": np.asarray(roots, dtype=np.int64)})
    counts = df[df["root_id"] != 0].groupby(["id", "root_id"]).size().rename("counts").reset_index()
    return counts.pivot(index="root_id", columns="id", values="counts")


def summarize(matrix: pd.DataFrame, ids) -> pd.DataFrame:
    """crantpy's short form: columns ``id, match, confidence``, one row per matrix column.

    ``match`` is the root with most nodes (ties: the smallest root); ``confidence`` is
    (top - second) / column sum, with second = 0 for a one-row matrix (so 1.0). An empty matrix
    gives every neuron in ``ids`` with match None and confidence 0.0.

    Examples
    --------
    >>> import numpy as np
    >>> from crantseg_dask.ops.neurons import overlap_matrix, summarize
    >>> summarize(overlap_matrix(np.array([1, 1, 1, 2]), np.array([7, 7, 8, 9])), [1, 2])
       id  match  confidence
    0   1      7    0.333333
    1   2      9    1.000000
    """
    if matrix.empty:
        return pd.DataFrame({"id": list(ids), "match": [None] * len(ids),
                             "confidence": np.zeros(len(ids))})
    filled = matrix.fillna(0)
    values = -np.sort(-filled.to_numpy(dtype=np.float64), axis=0)
    top = values[0]
    second = values[1] if len(values) > 1 else np.zeros_like(top)
    return pd.DataFrame({"id": matrix.columns.to_numpy(),
                         "match": filled.idxmax(axis=0).to_numpy(dtype=np.int64),
                         "confidence": (top - second) / values.sum(axis=0)})


def neuron_to_segments(x, short: bool = False, coordinates: str = "nm", *, dataset=None,
                       timestamp=None, neuron_column: str = "neuron") -> pd.DataFrame:
    """Root IDs overlapping given neurons, counted in skeleton nodes.

    Parameters
    ----------
    x : pandas.DataFrame, navis.TreeNeuron or navis.NeuronList
        A node table with ``x``, ``y``, ``z`` and a neuron id column (``neuron_column``; one table
        may hold many neurons), or navis neurons (if navis is installed; a TreeNeuron is treated as
        a one-element NeuronList).
    short : bool
        If True return only the top hit per neuron, with a confidence score.
    coordinates : {"nm", "voxel"}
        Units of the nodes; voxels are on the 8 x 8 x 42 nm viewer grid.
    dataset : str or SourceSpec, optional
    timestamp : optional
        Roots at this time (default now, as crantpy); see ``locs_to_segments``.
    neuron_column : str
        Neuron id column of a node table.

    Returns
    -------
    pandas.DataFrame
        ``short=False``: the overlap matrix, index ``root_id`` (int64 ascending, root 0 excluded),
        columns ``id`` (neuron ids, sorted), values = node counts, NaN where a neuron has no node on
        a root (the dtype is then float64). ``short=True``: columns ``id, match, confidence``, one
        row per neuron in the matrix (sorted by id): ``match`` is the root with most nodes (ties:
        the smallest root) and ``confidence = (top - second) / nodes on non-zero roots`` (1.0 for
        one root). As in crantpy, neurons whose nodes are all on background are absent; if no
        neuron hits any root the summary lists every neuron with match None and confidence 0.0.

    Raises
    ------
    InvalidNeuronError
        ``x`` is neither a node table nor a navis neuron (also an AssertionError, as in crantpy).
    InvalidInputError, InvalidLocationError
        Missing columns, NaN coordinates, unknown units; before any read.
    SourceError
        A read failed after retries.

    Examples
    --------
    A node table with two neurons (ids 1 and 2), in nm:

    >>> import pandas as pd
    >>> from crantseg_dask import neuron_to_segments
    >>> nodes = pd.DataFrame({"x": [4232, 4232, 4296, 3800, 3800], "y": [4904, 4968, 4904, 5192, 5200],
    ...                       "z": [1701, 1701, 1701, 1659, 1659], "neuron": [1, 1, 1, 2, 2]})
    >>> neuron_to_segments(nodes, dataset="tiny")
    id                    1    2
    root_id
    576460752373423813  NaN  2.0
    576460752373423816  2.0  NaN
    576460752373423821  1.0  NaN
    >>> neuron_to_segments(nodes, short=True, dataset="tiny")
       id               match  confidence
    0   1  576460752373423816    0.333333
    1   2  576460752373423813    1.000000
    """
    nodes, ids = _nodes(x, neuron_column)
    roots = locs_to_segments(nodes[["x", "y", "z"]], timestamp=timestamp, coordinates=coordinates,
                             progress=False, dataset=dataset)
    matrix = overlap_matrix(nodes["neuron"].to_numpy(), roots)
    return summarize(matrix, ids) if short else matrix
