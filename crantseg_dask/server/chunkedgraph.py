"""PyChunkedGraph "segmentation" API v1 routes (protocol sections 2.1-2.15 and 3.2).

A thin adapter: each route parses its arguments, calls one documented ``SegmentationSource``
method of the served dataset's ``LocalSource`` and encodes the answer, so the server and the
``local`` source cannot drift apart (no table of the source is read here). What stays here is the
protocol: routes, JSON and binary encodings, status codes. Binary ID arrays are little-endian
uint64 both ways; JSON bodies are parsed whatever their Content-Type (several GET routes carry
one); timestamps arrive as float seconds.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from ._base import ID, NAME, ApiError, ApiHandler
from .info import base_url
from .state import VERSIONS

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["routes"]


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
        many = self.state.source.leaves_many(ids, self.stop_layer_arg() or 1, self.bounds_arg())
        self.send_json({str(n): leaves.tolist() for n, leaves in many.items()})


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
        g = self.state.source.lineage(roots, self.ts_arg("timestamp_past", default="none"),
                                      self.ts_arg("timestamp_future"))
        self.send_json(node_link(g))


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
        past_map, future_map = self.state.source.past_id_mapping(roots, self.ts_arg("timestamp_past", default="none"))
        self.send_json({"past_id_map": {str(r): ids for r, ids in past_map.items()},
                        "future_id_map": {str(p): sink for p, sink in future_map.items()}})


class DeltaRoots(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        past = self.ts_arg("timestamp_past", default="none")
        if past is None:
            raise ApiError(400, "timestamp_past is mandatory")
        old, new = self.state.source.delta_root_lists(past, self.ts_arg("timestamp_future"))
        self.send_json({"old_roots": old.tolist(), "new_roots": new.tolist()})


class ValidNodes(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        ids = self.ids_from_body("node_ids", layers=False)  # answers which IDs are valid
        ok = self.state.source.valid_nodes(ids, self.ts_arg("end_timestamp"))
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
        details = self.state.source.operation_details(ids)
        self.send_json({str(i): _operation(d) for i, d in details.items()})


def _operation(rec: dict) -> dict:
    """PyChunkedGraph's operation record from the source's (timestamps as ``str(datetime)``)."""
    ts = str(rec["timestamp"])
    d = {"user": rec["user"], "roots": rec["roots"], "source_coords": rec["source_coords"],
         "sink_coords": rec["sink_coords"], "operation_status": 0, "operation_exception": "",
         "operation_ts": ts, "timestamp": ts}
    d.update({k: rec[k] for k in ("added_edges", "removed_edges") if k in rec})
    return d


class L2ChunkChildren(ApiHandler):
    def get(self, table: str, chunk: str) -> None:
        self.table_of(table)
        children = self.state.source.l2_chunk_children(self.node_id(chunk), self.ts_arg("timestamp"))
        pairs = [(n, sv) for n, svs in children.items() for sv in svs.tolist()]
        self.send_binary(np.array(pairs, dtype=np.uint64).reshape(-1))


class OldestTimestamp(ApiHandler):
    def get(self, table: str) -> None:
        self.table_of(table)
        self.send_json({"iso": str(self.state.source.oldest_timestamp())})


class Lvl2Graph(ApiHandler):
    def get(self, table: str, node: str) -> None:
        self.table_of(table)
        node, bounds = self.node_id(node), self.bounds_arg()
        edges = self.state.source.l2_graph(node, bounds)
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
