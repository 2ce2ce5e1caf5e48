"""PyChunkedGraph "segmentation" API v1 routes (protocol sections 2.1-2.15 and 3.2).

Every answer comes from the wrapped ``LocalSource``, so the server and the ``local`` source agree
by construction. Binary ID arrays are little-endian uint64 both ways; JSON bodies are parsed
whatever their Content-Type (several GET routes carry one); timestamps arrive as float seconds.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import networkx as nx
import numpy as np

from ..errors import UnknownIDError
from ._base import ID, NAME, ApiError, ApiHandler
from .info import base_url
from .state import VERSIONS

__all__ = ["routes"]


def _known(src, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each ID in the node table and whether the ID is known."""
    table = src.node_ids
    pos = np.clip(np.searchsorted(table, ids), 0, max(len(table) - 1, 0))
    return pos, (table[pos] == ids) if len(table) else np.zeros(len(ids), bool)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class ApiVersions(ApiHandler):
    def get(self) -> None:
        self.send_json([0, 1])


class ServerVersion(ApiHandler):
    def get(self) -> None:
        self.send_json(VERSIONS["chunkedgraph"])


class TableInfo(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        self.send_json(self.state.graphene_info(base_url(self)))


class RootsBinary(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        body = self.request.body or b""
        if len(body) % 8:
            raise ApiError(400, f"body of {len(body)} bytes is not a whole number of uint64 IDs")
        ids = np.frombuffer(body, dtype="<u8").astype(np.uint64)
        out = self.state.source.roots(ids, self.ts_arg("timestamp"), self.stop_layer_arg())
        self.send_binary(out)


class RootsJson(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids")
        out = self.state.source.roots(ids, self.ts_arg("timestamp"), self.stop_layer_arg())
        self.send_json({"root_ids": out.tolist()})


class NodeRoot(ApiHandler):
    def get(self, table: str, node: str) -> None:
        self.table_of(table)
        nid = self.node_id(node)
        root = self.state.source.roots(np.array([nid], np.uint64), self.ts_arg("timestamp"), self.stop_layer_arg())
        if nid and not root[0]:
            raise ApiError(404, f"cannot find root id for {nid}", error="unknown_id")
        self.send_json({"root_id": int(root[0])})


class NodeLeaves(ApiHandler):
    def get(self, table: str, node: str) -> None:
        self.table_of(table)
        leaves = self.state.source.leaves(self.node_id(node), self.stop_layer_arg() or 1, self.bounds_arg())
        self.send_json({"leaf_ids": leaves.tolist()})


class LeavesMany(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids")
        stop, bounds = self.stop_layer_arg() or 1, self.bounds_arg()
        src = self.state.source
        self.send_json({str(n): src.leaves(n, stop, bounds).tolist() for n in dict.fromkeys(ids.tolist())})


class NodeChildren(ApiHandler):
    def get(self, table: str, node: str) -> None:
        self.table_of(table)
        self.send_json({"children_ids": self.state.source.children(self.node_id(node)).tolist()})


class Lineage(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        roots = self.ids_from_body("root_ids")
        # caveclient <= 8.2.1 sends `name=timestamp_future` instead of a value: unknown
        # parameters are ignored and the future defaults to now.
        g = pcg_lineage(self.state.source, roots.tolist(), self.ts_arg("timestamp_past", default="none"),
                        self.ts_arg("timestamp_future"))
        self.send_json(node_link(g))


def pcg_lineage(src, roots: list[int], past: datetime | None, future: datetime | None) -> nx.DiGraph:
    """PyChunkedGraph's ``lineage_graph``: two frontiers from the query roots, one walking only
    backwards (from nodes created at or after ``past``), one only forwards (from nodes created at
    or before ``future``). Siblings (the other side of a split, the partner of a merge) are not
    followed, so caveclient's ``get_latest_roots`` (out-degree 0) finds only descendants.

    Nodes carry ``timestamp`` (creation, unix s) and, on superseded roots, ``operation_id`` (the
    operation that ended them)."""
    past_ms = -1 if past is None else int(np.floor(past.timestamp() * 1000))
    future_ms = (1 << 62) if future is None else int(np.floor(future.timestamp() * 1000))
    for r in roots:
        if r not in src.root_created:
            raise UnknownIDError(f"{r} is not a root of dataset {src.spec.name!r}")
    g = nx.DiGraph()
    back, fwd = list(dict.fromkeys(roots)), list(dict.fromkeys(roots))
    while back or fwd:
        g.add_nodes_from(back + fwd)
        nxt_back, nxt_fwd = [], []
        for k in back:
            if src.root_created[k] >= past_ms:
                for f in src.predecessors.get(k, []):
                    g.add_edge(f, k)
                    nxt_back.append(f)
        for k in fwd:
            if src.root_created[k] <= future_ms:
                for n in src.successors.get(k, []):
                    g.add_edge(k, n)
                    nxt_fwd.append(n)
        back, fwd = list(dict.fromkeys(nxt_back)), list(dict.fromkeys(nxt_fwd))
    for n in g.nodes:
        g.nodes[n]["timestamp"] = src.root_created[n] / 1000
        if n in src.root_ended_by:
            g.nodes[n]["operation_id"] = src.root_ended_by[n]
    return g


def node_link(g: nx.DiGraph) -> dict:
    """networkx node-link JSON with the edge list under "links" (what caveclient reads)."""
    nodes = []
    for n, attrs in sorted(g.nodes(data=True)):
        d = {"id": int(n), "timestamp": float(attrs["timestamp"])}
        if "operation_id" in attrs:
            d["operation_id"] = int(attrs["operation_id"])
        nodes.append(d)
    links = [{"source": int(a), "target": int(b)} for a, b in sorted(g.edges())]
    return {"directed": True, "multigraph": False, "graph": {}, "nodes": nodes, "links": links}


class IsLatest(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids")
        self.send_json({"is_latest": self.state.source.is_latest(ids, self.ts_arg("timestamp")).tolist()})


class RootTimestamps(ApiHandler):
    def post(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids")
        src = self.state.source
        if self.bool_arg("latest"):
            out = src.root_expired(ids, self.ts_arg("timestamp"))
        else:
            out = src.root_timestamps(ids)
        self.send_json({"timestamp": [float(v) for v in out]})


class PastIdMapping(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        roots = self.ids_from_body("root_ids")
        past = self.ts_arg("timestamp_past", default="none")
        src = self.state.source
        past_map, future_map = {}, {}
        for r in dict.fromkeys(roots.tolist()):
            g = pcg_lineage(src, [r], past, None)  # PCG ignores timestamp_future
            anc = [a for a in nx.ancestors(g, r) if g.in_degree(a) == 0]
            past_ids = sorted(anc) if anc else [r]
            past_map[str(r)] = past_ids
            for p in past_ids:
                sink = _merge_only_sink(g, p)
                if sink is not None:
                    future_map[str(p)] = sink
        self.send_json({"past_id_map": past_map, "future_id_map": future_map})


def _merge_only_sink(g: nx.DiGraph, p: int) -> int | None:
    """The single descendant sink of ``p`` if every step down from it is a merge (PCG's rule)."""
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


class DeltaRoots(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        past = self.ts_arg("timestamp_past", default="none")
        if past is None:
            raise ApiError(400, "timestamp_past is mandatory")
        future = self.ts_arg("timestamp_future")
        # milliseconds, truncated, as the sources compare (PCG's resolution); PCG's format: each
        # new root's former roots, concatenated (duplicates kept)
        lo, hi = (int(np.floor(t.timestamp() * 1000)) for t in (past, future))
        old, new = [], []
        for op in self.state.operations_by_time:
            if lo <= op["ts_ms"] <= hi:
                for n in op["new_roots"]:
                    new.append(int(n["root"]))
                    old += [int(o) for o in op["old_roots"]]
        self.send_json({"old_roots": old, "new_roots": new})


class ValidNodes(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids", layers=False)  # answers which IDs are valid
        end = self.ts_arg("end_timestamp")
        src = self.state.source
        pos, known = _known(src, ids)
        ok = known & (src.node_created_ms[pos] <= end.timestamp() * 1000)
        self.send_json({"valid_roots": ids[ok].tolist()})


class OperationDetails(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        raw = self.get_query_argument("operation_ids", "[]")
        try:
            ids = json.loads(raw)
            if not isinstance(ids, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
                raise ValueError
        except ValueError:
            raise ApiError(400, f"operation_ids={raw[:100]!r} must be a JSON list of integers") from None
        ops = self.state.source.operations
        self.send_json({str(i): _operation(ops[i]) for i in ids if i in ops})


def _operation(op: dict) -> dict:
    ts = str(_utc(op["ts_ms"]))
    d = {
        "user": str(op["user"]),
        "roots": [int(n["root"]) for n in op["new_roots"]],
        "source_coords": op.get("source_coords", []),
        "sink_coords": op.get("sink_coords", []),
        "operation_status": 0,
        "operation_exception": "",
        "operation_ts": ts,
        "timestamp": ts,
    }
    if op["kind"] == "merge":
        d["added_edges"] = op.get("added_edges", [])
    else:
        d["removed_edges"] = op.get("removed_edges", [])
    return d


class L2ChunkChildren(ApiHandler):
    def get(self, table: str, chunk: str) -> None:
        self.table_of(table)
        cid = np.uint64(self.node_id(chunk))
        src = self.state.source
        layout = src.meta.layout
        if int(layout.layer(np.array([cid]))[0]) != 2:
            raise ApiError(400, f"{int(cid)} is not a layer-2 chunk ID")
        ts = self.ts_arg("timestamp")
        cid = layout.chunk_id(np.array([cid]))[0]
        ids = src.node_ids
        l2 = ids[(layout.layer(ids) == 2) & (layout.chunk_id(ids) == cid)]
        pos, _ = _known(src, l2)
        l2 = l2[src.node_created_ms[pos] <= ts.timestamp() * 1000]
        alive = src.is_latest(src.roots(l2, ts), ts) if len(l2) else np.zeros(0, bool)
        pairs = [(n, sv) for n in l2[alive].tolist() for sv in src.children(n).tolist()]
        self.send_binary(np.array(pairs, dtype=np.uint64).reshape(-1))


class OldestTimestamp(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        self.send_json({"iso": str(self.state.oldest_timestamp())})


class Lvl2Graph(ApiHandler):
    def get(self, table: str, node: str) -> None:
        self.table_of(table)
        src = self.state.source
        edges = src.l2_graph(self.node_id(node))
        bounds = self.bounds_arg()
        if bounds is not None and len(edges):
            coords = src.meta.layout.chunk_coords(edges)
            keep = np.ones(len(edges), bool)
            for k in range(len(edges)):
                for c in coords[k]:
                    box = src.meta.graph_chunk_box(c, 2)
                    keep[k] &= bool(np.all(box[0] < bounds[1]) and np.all(box[1] > bounds[0]))
            edges = edges[keep]
        self.set_header("Used-Bounds", "True" if bounds is not None else "False")
        self.send_json({"edge_graph": edges.tolist()})


def routes(state) -> list:
    kw = {"state": state}
    v1 = rf"/segmentation/api/v1/table/{NAME}"
    return [
        (r"/segmentation/api/versions", ApiVersions, kw),
        (r"/segmentation/api/version", ServerVersion, kw),
        (rf"/segmentation/table/{NAME}/info", TableInfo, kw),
        (rf"{v1}/roots_binary", RootsBinary, kw),
        (rf"{v1}/roots", RootsJson, kw),
        (rf"{v1}/node/{ID}/root", NodeRoot, kw),
        (rf"{v1}/node/{ID}/leaves", NodeLeaves, kw),
        (rf"{v1}/node/leaves_many", LeavesMany, kw),
        (rf"{v1}/leaves_many", LeavesMany, kw),
        (rf"{v1}/node/{ID}/children", NodeChildren, kw),
        (rf"{v1}/node/{ID}/lvl2_graph", Lvl2Graph, kw),
        (rf"{v1}/lineage_graph_multiple", Lineage, kw),
        (rf"{v1}/is_latest_roots", IsLatest, kw),
        (rf"{v1}/root_timestamps", RootTimestamps, kw),
        (rf"{v1}/past_id_mapping", PastIdMapping, kw),
        (rf"{v1}/delta_roots", DeltaRoots, kw),
        (rf"{v1}/valid_nodes", ValidNodes, kw),
        (rf"{v1}/operation_details", OperationDetails, kw),
        (rf"{v1}/l2_chunk_children_binary/{ID}", L2ChunkChildren, kw),
        (rf"{v1}/oldest_timestamp", OldestTimestamp, kw),
    ]
