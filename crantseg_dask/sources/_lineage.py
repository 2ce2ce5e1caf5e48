"""What PyChunkedGraph derives from a root's lineage graph: its past-ID mapping.

Pure functions over the ``networkx.DiGraph`` a source's ``lineage`` returns (edges old -> new), so
every source answers ``past_id_mapping`` the same way, whatever serves its lineage.
"""
from __future__ import annotations

from datetime import datetime

import networkx as nx
import numpy as np

__all__ = ["merge_only_sink", "past_id_mapping", "past_ids"]


def past_ids(g: nx.DiGraph, root: int) -> list[int]:
    """The oldest ancestors of ``root`` in ``g`` (sorted), or ``[root]`` when it has none."""
    anc = [a for a in nx.ancestors(g, root) if g.in_degree(a) == 0]
    return sorted(int(a) for a in anc) if anc else [int(root)]


def merge_only_sink(g: nx.DiGraph, p: int) -> int | None:
    """The single descendant sink of ``p`` if every step down from it is a merge (PCG's rule), else None.

    >>> g = nx.DiGraph([(1, 3), (2, 3)])
    >>> merge_only_sink(g, 1), merge_only_sink(nx.DiGraph([(1, 2), (1, 3)]), 1)
    (3, None)
    """
    desc = nx.descendants(g, p) | {p}
    if any(g.out_degree(d) >= 2 for d in desc):
        return None
    sinks = [d for d in desc if g.out_degree(d) == 0]
    if len(sinks) != 1:
        return None
    for d in desc:
        if g.out_degree(d) == 1 and g.in_degree(next(iter(g.successors(d)))) < 2:
            return None
    return int(sinks[0])


def past_id_mapping(source, roots, past: datetime | None) -> tuple[dict[int, list[int]], dict[int, int]]:
    """``(past_id_map, future_id_map)`` of ``roots`` from one ``source.lineage`` call per root.

    See ``SegmentationSource.past_id_mapping``."""
    past_map: dict[int, list[int]] = {}
    future_map: dict[int, int] = {}
    for r in dict.fromkeys(int(v) for v in np.atleast_1d(np.asarray(roots, dtype=np.uint64))):
        g = source.lineage(np.array([r], dtype=np.uint64), past, None)  # PCG ignores a future time
        past_map[r] = past_ids(g, r)
        for p in past_map[r]:
            sink = merge_only_sink(g, p)
            if sink is not None:
                future_map[p] = sink
    return past_map, future_map
