"""Edit history of roots: ``get_lineage_graph`` and ``find_common_time``.

Each is one or two batch requests to the source (no per-ID loop), so there is no Dask graph to
build here: these are eager only.
"""
from __future__ import annotations

from datetime import datetime, timezone

import networkx as nx
import numpy as np

from .._validate import as_ids
from ..errors import InvalidIDError
from ..sources import open_source
from ..sources.resolve import resolve_dataset, resolve_timestamp
from .validity import is_valid_root

__all__ = ["get_lineage_graph", "find_common_time", "remap_operation_ids"]


def remap_operation_ids(g: nx.DiGraph) -> nx.DiGraph:
    """Move ``operation_id`` from the node an operation ended to the nodes it created.

    Every node with a predecessor gets its first predecessor's original ``operation_id``; every
    original ``operation_id`` is removed first, so nodes without predecessors have none (crantpy's
    convention, checklist 42). Returns a new graph.

    Examples
    --------
    >>> import networkx as nx
    >>> from crantseg_dask.ops.lineage import remap_operation_ids
    >>> g = nx.DiGraph()
    >>> g.add_node(1, operation_id=7)  # root 1 was ended by operation 7, which created root 2
    >>> g.add_edge(1, 2)
    >>> dict(remap_operation_ids(g).nodes(data=True))
    {1: {}, 2: {'operation_id': 7}}
    """
    out = g.copy()
    ended_by = {n: d.get("operation_id") for n, d in g.nodes(data=True)}
    for n in out.nodes:
        out.nodes[n].pop("operation_id", None)
    for n in out.nodes:
        preds = list(g.predecessors(n))
        if preds and ended_by[preds[0]] is not None:
            out.nodes[n]["operation_id"] = ended_by[preds[0]]
    return out


def get_lineage_graph(x, progress=True, *, dataset=None) -> nx.DiGraph:
    """Lineage graph (edit history) of a root ID.

    Parameters
    ----------
    x : int or str
        A root ID (any root the dataset has known, current or not). A list of roots gives the union
        of their histories.
    progress : bool
        Unused (one request).
    dataset : str or SourceSpec, optional
        Dataset (default: the configured default).

    Returns
    -------
    networkx.DiGraph
        Nodes are root IDs (int) with ``timestamp`` (creation, unix seconds, float); edges point
        from older roots to the roots that replaced them. A node created by an operation carries
        that operation's ``operation_id``; original roots carry none. Includes every ancestor and
        every descendant up to now.

    Raises
    ------
    InvalidIDError (ValueError)
        An ID that is not at the root layer ("... is not a valid root ID").
    UnknownIDError (KeyError) or SourceError
        A root the dataset does not know.

    Examples
    --------
    >>> from crantseg_dask import get_lineage_graph
    >>> g = get_lineage_graph(576460752373423807, dataset="tiny")
    >>> g.number_of_nodes(), g.number_of_edges()
    (10, 9)
    >>> list(g.predecessors(576460752373423807)), list(g.successors(576460752373423807))
    ([576460752373423725, 576460752373423796], [576460752373423813, 576460752373423814])
    >>> sorted(g.nodes[576460752373423813])
    ['operation_id', 'timestamp']
    >>> [n for n in g if g.out_degree(n) == 0]  # current roots
    [576460752373423813, 576460752373423818]
    """
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    ids = as_ids(x, name="x")
    for i in ids.tolist():
        is_valid_root(i, dataset=spec, raise_exc=True)
    now = resolve_timestamp(None, source)
    return remap_operation_ids(source.lineage(ids, past=None, future=now))


def find_common_time(root_ids, progress=True, *, dataset=None) -> datetime:
    """A time at which all given roots existed together.

    Parameters
    ----------
    root_ids : int, str or iterable
        Root IDs (a single ID is accepted; crantpy needs a list).
    progress : bool
        Unused.
    dataset : str or SourceSpec, optional
        Dataset (default: the configured default).

    Returns
    -------
    datetime.datetime
        Aware UTC: the midpoint between the latest creation and the earliest end of life (now, for
        roots still current; the creation of a successor otherwise). When every root is current no
        lineage request is made (the result then moves with the clock, as crantpy's does).

    Raises
    ------
    ValueError
        "Given root IDs never existed at the same time." when the latest creation is not before
        the earliest end of life (a root and its successor, created at the moment the old one ended,
        never co-existed: crantpy accepts that equality; we do not). Also for empty input.
    InvalidIDError (ValueError)
        IDs that are not at the root layer.

    Examples
    --------
    576460752373423725 and 576460752373423796 were merged into one neuron on 2025-06-24 10:55:06 UTC;
    the younger of the two was created on 2025-06-15 14:53:11 UTC:

    >>> from crantseg_dask import find_common_time
    >>> find_common_time([576460752373423725, 576460752373423796], dataset="tiny")
    datetime.datetime(2025, 6, 20, 0, 54, 8, 500000, tzinfo=datetime.timezone.utc)

    576460752373423807 ended when its successor 576460752373423813 was created:

    >>> find_common_time([576460752373423807, 576460752373423813], dataset="tiny")
    Traceback (most recent call last):
        ...
    ValueError: Given root IDs never existed at the same time.
    """
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    ids = np.unique(as_ids(root_ids, name="root_ids"))
    if ids.size == 0:
        raise InvalidIDError("find_common_time needs at least one root ID")
    is_valid_root(ids, dataset=spec, raise_exc=True)
    now = resolve_timestamp(None, source)
    births = np.asarray(source.root_timestamps(ids), dtype=float)
    deaths = np.full(len(ids), now.timestamp())
    outdated = ~np.asarray(source.is_latest(ids, now), dtype=bool)
    if outdated.any():
        g = source.lineage(ids[outdated], past=datetime.fromtimestamp(births.min(), timezone.utc), future=now)
        for k in np.flatnonzero(outdated):
            succ = list(g.successors(int(ids[k])))
            if succ:  # all successors were created by the operation that ended this root
                deaths[k] = min(float(g.nodes[s]["timestamp"]) for s in succ)
    birth, death = births.max(), deaths.min()
    if birth >= death:
        raise ValueError("Given root IDs never existed at the same time.")
    return datetime.fromtimestamp(birth + (death - birth) / 2, tz=timezone.utc)
