"""The ``local`` source: an embedded dataset read directly, no HTTP.

Voxels come from the precomputed layer on ``file://`` through the shared chunk reader; the chunked
graph comes from the dataset's ``graph/`` tables (node children, time-versioned parent cells) and
its recorded edit log (root lineage, materializations). This is also the state the local CAVE
server serves.
"""
from __future__ import annotations

from collections import defaultdict, deque
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ..dataset.layout import load_json, read_params
from ..errors import InvalidInputError, UnknownIDError
from ._chunks import ChunkReader, ChunkReads, cutout_from_chunks
from .base import SegmentationSource, SourceSpec, VolumeMeta

__all__ = ["LocalSource"]


def _ms(ts: datetime) -> int:
    """Milliseconds, truncated (PCG stores and compares at millisecond resolution)."""
    return int(np.floor(ts.timestamp() * 1000))


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class LocalSource(ChunkReads, SegmentationSource):
    """A dataset directory written by ``crantseg make-dataset``."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.path = Path(spec.path)
        self.params = read_params(self.path)
        self.info = load_json(self.path / "dataset.json")
        self.segmentation_info = load_json(self.path / "segmentation" / "info")
        self._meta = VolumeMeta.from_info(
            self.segmentation_info, self.info["graph"], viewer_resolution=self.params.viewer_resolution,
            chunks_start_at_voxel_offset=self.info.get("chunks_start_at_voxel_offset", True),
        )
        self.cloudpath = f"file://{self.path / 'segmentation'}"
        self._reader = ChunkReader(self.cloudpath, self._meta, fill_missing=False,
                                   scales=self.segmentation_info["scales"], settings=spec.setting)
        g = self.path / "graph"
        self.node_ids = np.load(g / "node_ids.npy")
        self.node_created_ms = np.load(g / "node_created_ms.npy")
        self.children_ptr = np.load(g / "children_ptr.npy")
        self.children_flat = np.load(g / "children.npy")
        self.parent_child = np.load(g / "parent_child.npy")
        self.parent_ms = np.load(g / "parent_ms.npy")
        self.parent_id = np.load(g / "parent_id.npy")
        self.edits = load_json(self.path / "history" / "edits.json")
        self._index_roots()

    # -- metadata -----------------------------------------------------------------------------
    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def __repr__(self) -> str:
        return f"LocalSource({str(self.path)!r})"

    # -- voxels -------------------------------------------------------------------------------
    def cutout(self, box, mip: int) -> np.ndarray:
        return cutout_from_chunks(self, box, mip)

    # -- node tables --------------------------------------------------------------------------
    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each ID in the node table and whether it is known."""
        ids = np.asarray(ids, dtype=np.uint64)
        pos = np.clip(np.searchsorted(self.node_ids, ids), 0, len(self.node_ids) - 1)
        return pos, self.node_ids[pos] == ids

    def _require(self, node: int) -> int:
        pos, known = self._find(np.array([node], dtype=np.uint64))
        if not known[0]:
            raise UnknownIDError(f"node {node} is not in dataset {self.spec.name!r}")
        return int(pos[0])

    @lru_cache(maxsize=8)  # each entry holds two arrays as long as the graph (~30 MB on the dense demo)
    def _parents_at(self, ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(children, parents) of the parent cells in force at ``ms``: the last cell with time <= ms."""
        m = self.parent_ms <= ms
        child, parent = self.parent_child[m], self.parent_id[m]
        if child.size == 0:
            return child, parent
        last = np.r_[child[1:] != child[:-1], True]
        return child[last], parent[last]

    def roots(self, ids, timestamp: datetime, stop_layer: int | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """``SegmentationSource.roots`` from the tables (no requests: ``batch_size`` is unused)."""
        ids = np.asarray(ids, dtype=np.uint64)
        layout = self.meta.layout
        stop = self.meta.n_layers if stop_layer is None else int(stop_layer)
        ms = _ms(timestamp)
        child, parent = self._parents_at(ms)
        cur = ids.copy()
        pos, known = self._find(cur)
        alive = known & (self.node_created_ms[pos] <= ms)
        done = (cur == 0) | (layout.layer(cur) >= stop)
        cur[~done & ~alive] = 0
        todo = ~done & alive
        while todo.any():
            q = cur[todo]
            p = np.clip(np.searchsorted(child, q), 0, max(len(child) - 1, 0))
            hit = (child[p] == q) if len(child) else np.zeros(q.shape, bool)
            nxt = np.where(hit, parent[p] if len(child) else 0, 0).astype(np.uint64)
            cur[todo] = nxt
            todo &= (cur != 0) & (layout.layer(cur) < stop)
        return cur

    def children(self, node: int) -> np.ndarray:
        i = self._require(int(node))
        return self.children_flat[self.children_ptr[i]: self.children_ptr[i + 1]].copy()

    def leaves(self, node: int, stop_layer: int = 1, bounds=None) -> np.ndarray:
        self._require(int(node))
        layout = self.meta.layout
        frontier = np.array([node], dtype=np.uint64)
        out = []
        while frontier.size:
            layers = layout.layer(frontier)
            if bounds is not None:
                frontier = frontier[self._overlaps(frontier, layers, np.asarray(bounds))]
                layers = layout.layer(frontier)
            at = layers <= stop_layer
            out.append(frontier[at])
            expand = frontier[~at]
            if not expand.size:
                break
            pos, _ = self._find(expand)
            frontier = np.concatenate(
                [self.children_flat[self.children_ptr[i]: self.children_ptr[i + 1]] for i in pos]
            ) if len(pos) else np.zeros(0, np.uint64)
        return np.sort(np.concatenate(out)) if out else np.zeros(0, np.uint64)

    def leaves_many(self, nodes, stop_layer: int = 1, bounds=None) -> dict[int, np.ndarray]:
        """``SegmentationSource.leaves_many``, every node's tree walked at once (one frontier of
        (node, origin) pairs per layer instead of one Python walk per node: a snap partition asks
        for the leaves of thousands of roots). ``UnknownIDError`` names the first unknown node."""
        nodes = np.asarray(nodes, dtype=np.uint64).ravel()
        _, first = np.unique(nodes, return_index=True)
        nodes = nodes[np.sort(first)]  # unique, in order of first appearance
        pos, known = self._find(nodes)
        if not known.all():
            raise UnknownIDError(f"node {int(nodes[np.argmin(known)])} is not in dataset {self.spec.name!r}")
        layout = self.meta.layout
        frontier, origin = nodes, np.arange(len(nodes))
        got_leaf, got_origin = [], []
        while frontier.size:
            layers = layout.layer(frontier)
            if bounds is not None:
                keep = self._overlaps(frontier, layers, np.asarray(bounds))
                frontier, origin, layers = frontier[keep], origin[keep], layers[keep]
            at = layers <= stop_layer
            got_leaf.append(frontier[at])
            got_origin.append(origin[at])
            pos, _ = self._find(frontier[~at])
            start, n = self.children_ptr[pos], self.children_ptr[pos + 1] - self.children_ptr[pos]
            idx = np.repeat(start - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            frontier, origin = self.children_flat[idx], np.repeat(origin[~at], n)
        leaf, org = np.concatenate(got_leaf), np.concatenate(got_origin)
        order = np.lexsort((leaf, org))
        leaf, cut = leaf[order], np.searchsorted(org[order], np.arange(len(nodes) + 1))
        return {int(n): leaf[cut[i]:cut[i + 1]].copy() for i, n in enumerate(nodes.tolist())}

    def _overlaps(self, nodes, layers, bounds) -> np.ndarray:
        """Whether each node's chunk (at its layer) overlaps the mip-0 voxel box ``bounds``
        (vectorised: a large root's frontier holds thousands of nodes on a dense dataset)."""
        m = self.meta
        coords = m.layout.chunk_coords(nodes)
        span = np.array(m.graph_chunk, dtype=np.int64) * (2 ** np.maximum(layers.astype(np.int64) - 2, 0))[:, None]
        lo = coords * span + (np.array(m.voxel_offset[0]) if m.chunks_start_at_voxel_offset else 0)
        vol = m.bounds(0)
        lo, hi = np.maximum(lo, vol[0]), np.minimum(lo + span, vol[1])
        hit = np.all(lo < bounds[1], axis=1) & np.all(hi > bounds[0], axis=1)
        return hit | (layers >= m.n_layers)

    # -- roots and history --------------------------------------------------------------------
    def _index_roots(self) -> None:
        e = self.edits
        self.root_created: dict[int, int] = {o["root"]: e["ingest_ms"] for o in e["initial_objects"]}
        self.root_superseded: dict[int, int] = {}
        self.root_ended_by: dict[int, int] = {}
        self.successors: dict[int, list[int]] = defaultdict(list)
        self.predecessors: dict[int, list[int]] = defaultdict(list)
        self.root_links: dict[int, list] = {o["root"]: o["links"] for o in e["initial_objects"]}
        self.operations = {op["id"]: op for op in e["operations"]}
        for op in e["operations"]:
            new = [n["root"] for n in op["new_roots"]]
            for n in op["new_roots"]:
                self.root_created[n["root"]] = op["ts_ms"]
                self.root_links[n["root"]] = n["links"]
            for old in op["old_roots"]:
                self.root_superseded[old] = op["ts_ms"]
                self.root_ended_by[old] = op["id"]
                self.successors[old] += new
                for n in new:
                    self.predecessors[n].append(old)

    def is_latest(self, roots, timestamp: datetime) -> np.ndarray:
        ms = _ms(timestamp)
        out = np.zeros(len(np.atleast_1d(roots)), dtype=bool)
        for k, r in enumerate(np.atleast_1d(np.asarray(roots, dtype=np.uint64)).tolist()):
            c = self.root_created.get(r)
            s = self.root_superseded.get(r)
            out[k] = c is not None and c <= ms and not (s is not None and s <= ms)
        return out

    def root_timestamps(self, roots) -> np.ndarray:
        out = []
        for r in np.atleast_1d(np.asarray(roots, dtype=np.uint64)).tolist():
            if r not in self.root_created:
                raise UnknownIDError(f"{r} is not a root of dataset {self.spec.name!r}")
            out.append(self.root_created[r] / 1000)
        return np.array(out, dtype=float)

    def root_expired(self, roots, timestamp: datetime) -> np.ndarray:
        """Superseding time of each root (unix s), or ``timestamp`` for roots still current then."""
        ms = _ms(timestamp)
        out = []
        for r in np.atleast_1d(np.asarray(roots, dtype=np.uint64)).tolist():
            if r not in self.root_created:
                raise UnknownIDError(f"{r} is not a root of dataset {self.spec.name!r}")
            s = self.root_superseded.get(r)
            out.append((s if s is not None and s <= ms else ms) / 1000)
        return np.array(out, dtype=float)

    def lineage(self, roots, past: datetime | None = None, future: datetime | None = None):
        """PyChunkedGraph's lineage: the query roots, their ancestors (walking back while a node was
        created at or after ``past``) and their descendants (walking forward while a node was
        created at or before ``future``). Siblings are not followed, as in PCG and caveclient.
        Every superseded root carries the ``operation_id`` that ended it."""
        import networkx as nx

        past_ms = _ms(past) if past is not None else 0
        future_ms = _ms(future) if future is not None else 1 << 62
        start = [int(r) for r in np.atleast_1d(np.asarray(roots, dtype=np.uint64))]
        for r in start:
            if r not in self.root_created:
                raise UnknownIDError(f"{r} is not a root of dataset {self.spec.name!r}")
        g = nx.DiGraph()
        g.add_nodes_from(start)
        for step, forward in ((self.predecessors, False), (self.successors, True)):
            todo, seen = deque(start), set()
            while todo:
                r = todo.popleft()
                if r in seen:
                    continue
                seen.add(r)
                created = self.root_created[r]
                if (created <= future_ms) if forward else (created >= past_ms):
                    for n in step.get(r, []):
                        g.add_edge(r, n) if forward else g.add_edge(n, r)
                        todo.append(n)
        for n in g.nodes:
            g.nodes[n]["timestamp"] = self.root_created[n] / 1000
            if n in self.root_ended_by:
                g.nodes[n]["operation_id"] = self.root_ended_by[n]
        return g

    def latest_roots(self, root: int, timestamp: datetime) -> np.ndarray:
        root = int(root)
        if root not in self.root_created:
            raise UnknownIDError(f"{root} is not a root of dataset {self.spec.name!r}")
        ms = _ms(timestamp)
        step = self.successors if self.root_created[root] <= ms else self.predecessors
        out, todo, seen = set(), [root], set()
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if self.is_latest([r], timestamp)[0]:
                out.add(r)
            else:
                todo += step.get(r, [])
        return np.array(sorted(out), dtype=np.uint64)

    def l2_graph(self, root: int, bounds=None) -> np.ndarray:
        l2s = self.leaves(int(root), stop_layer=2)
        sv_to_l2 = {}
        for l2 in l2s.tolist():
            for sv in self.children(l2).tolist():
                sv_to_l2[sv] = l2
        edges = set()
        for a, b in self._agglomeration_edges(int(root)):
            la, lb = sv_to_l2.get(a), sv_to_l2.get(b)
            if la is not None and lb is not None and la != lb:
                edges.add((min(la, lb), max(la, lb)))
        out = np.array(sorted(edges), dtype=np.uint64).reshape(-1, 2)
        if bounds is not None and len(out):
            two, box = np.full(len(out), 2), np.asarray(bounds)
            out = out[self._overlaps(out[:, 0], two, box) & self._overlaps(out[:, 1], two, box)]
        return out

    @cached_property
    def _sv_tables(self):
        h = self.path / "history"
        return np.load(h / "supervoxels.npy"), np.load(h / "sv_fragment.npy"), np.load(h / "contacts.npy")

    def _agglomeration_edges(self, root: int):
        svs, frag, contacts = self._sv_tables
        leaves = self.leaves(root)
        fr = np.unique(frag[np.searchsorted(svs, leaves)])
        fa = frag[np.searchsorted(svs, contacts[:, 0])]
        fb = frag[np.searchsorted(svs, contacts[:, 1])]
        inside = (fa == fb) & np.isin(fa, fr)
        return [tuple(e) for e in contacts[inside].tolist()] + [tuple(e) for e in self.root_links.get(root, [])]

    def delta_roots(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = _ms(past), _ms(future)
        old, new = [], []
        for op in self.edits["operations"]:
            if lo <= op["ts_ms"] <= hi:
                old += op["old_roots"]
                new += [n["root"] for n in op["new_roots"]]
        return np.unique(np.array(old, dtype=np.uint64)), np.unique(np.array(new, dtype=np.uint64))

    def delta_root_lists(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = _ms(past), _ms(future)
        old, new = [], []
        for op in sorted(self.edits["operations"], key=lambda op: op["ts_ms"]):
            if lo <= op["ts_ms"] <= hi:
                for n in op["new_roots"]:
                    new.append(n["root"])
                    old += op["old_roots"]
        return np.array(old, dtype=np.uint64), np.array(new, dtype=np.uint64)

    def operation_details(self, operation_ids) -> dict[int, dict]:
        out = {}
        for i in (int(v) for v in operation_ids):
            op = self.operations.get(i)
            if op is None:
                continue
            edges = "added_edges" if op["kind"] == "merge" else "removed_edges"
            out[i] = {"user": str(op["user"]), "timestamp": _dt(op["ts_ms"]),
                      "roots": [int(n["root"]) for n in op["new_roots"]],
                      "source_coords": op.get("source_coords", []), "sink_coords": op.get("sink_coords", []),
                      edges: op.get(edges, [])}
        return out

    def oldest_timestamp(self) -> datetime:
        ops = self.edits["operations"]
        ms = min(op["ts_ms"] for op in ops) if ops else self.edits["ingest_ms"]
        return _dt(ms) - timedelta(milliseconds=500)

    def valid_nodes(self, ids, end_timestamp: datetime) -> np.ndarray:
        pos, known = self._find(ids)
        return known & (self.node_created_ms[pos] <= _ms(end_timestamp))

    def l2_chunk_children(self, chunk_id: int, timestamp: datetime) -> dict[int, np.ndarray]:
        layout = self.meta.layout
        cid = np.array([chunk_id], dtype=np.uint64)
        if int(layout.layer(cid)[0]) != 2:
            raise InvalidInputError(f"{int(chunk_id)} is not a layer-2 chunk ID")
        ids = self.node_ids
        l2 = ids[(layout.layer(ids) == 2) & (layout.chunk_id(ids) == layout.chunk_id(cid)[0])]
        l2 = l2[self.valid_nodes(l2, timestamp)]
        alive = self.is_latest(self.roots(l2, timestamp), timestamp) if len(l2) else np.zeros(0, bool)
        return {n: self.children(n) for n in l2[alive].tolist()}

    def graphene_info(self) -> dict:
        info = dict(self.segmentation_info)
        info["graph"] = dict(self.info["graph"])
        info["data_dir"] = self.cloudpath
        info["chunks_start_at_voxel_offset"] = self.meta.chunks_start_at_voxel_offset
        return info

    # -- materialization ----------------------------------------------------------------------
    def materialization_versions(self) -> dict[int, datetime]:
        return {m["version"]: _dt(m["ts_ms"]) for m in self.edits["materializations"]}
