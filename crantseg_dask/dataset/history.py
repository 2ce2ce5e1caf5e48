"""The edit history of an embedded dataset, and the chunked graph derived from it.

``simulate_edits`` records what a proofreading history looks like: an over-segmented ingest (each
fragment its own object, plus a few false merges between touching neurons), then timestamped merges
(fragments of one neuron joined, generation after generation; sometimes two neurons joined by
mistake) and splits (false merges undone). Materialization versions fall between edits.

``build_graph`` turns that record into PyChunkedGraph-like tables by epoch snapshots
(cave-protocol.md section 5.2): after each edit the changed objects are rebuilt bottom-up — one L2
node per connected piece of an object inside a graph chunk, one node per object and chunk at layers
3..n-1, one root — reusing the ID of any node whose membership did not change, and appending a
``(time, parent)`` cell for every child whose parent changed.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._ids import IDLayout
from .layout import DatasetParams

__all__ = ["simulate_edits", "build_graph", "INGEST_MS", "ROOT_SEGMENT_BASE"]

INGEST_MS = int(datetime(2025, 6, 2, tzinfo=timezone.utc).timestamp() * 1000)
ROOT_SEGMENT_BASE = 70_000_000  # root segment ids look like CRANT's (8 << 56 | ~1e8)


class _World:
    """Supervoxels, fragments and contacts, indexed for the simulation."""

    def __init__(self, svs, sv_fragment, fragment_neuron, contacts, contact_area, n_neurons: int):
        self.svs = svs
        self.sv_fragment = sv_fragment
        self.fragment_neuron = fragment_neuron
        self.contacts = contacts
        self.n_neurons = n_neurons
        self.fragments = sorted(set(sv_fragment.tolist()))
        # best contact (largest area, then smallest ids) between each pair of fragments
        self.frag_edge: dict[tuple[int, int], tuple[int, int]] = {}
        if len(contacts):
            fa = sv_fragment[np.searchsorted(svs, contacts[:, 0])].astype(np.int64)
            fb = sv_fragment[np.searchsorted(svs, contacts[:, 1])].astype(np.int64)
            a, b = np.minimum(fa, fb), np.maximum(fa, fb)
            order = np.lexsort((contacts[:, 1], contacts[:, 0], -contact_area, b, a))
            order = order[a[order] != b[order]]
            a, b = a[order], b[order]
            first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
            pick = order[first]
            self.frag_edge = dict(zip(zip(a[first].tolist(), b[first].tolist()),
                                      zip(contacts[pick, 0].tolist(), contacts[pick, 1].tolist())))
        # fragments of neuron pieces come first; the rest are tissue cells (see ``bodies``)
        self.same = sorted(k for k in self.frag_edge if self.neuron(k[0]) == self.neuron(k[1]))

    def neuron(self, fragment: int) -> int:
        return int(self.fragment_neuron[fragment])

    def fragment_of(self, sv: int) -> int:
        return int(self.sv_fragment[np.searchsorted(self.svs, np.uint64(sv))])


def simulate_edits(params: DatasetParams, layout: IDLayout, rng, svs, sv_fragment, fragment_neuron,
                   contacts, contact_area, sv_anchor, n_neuron_fragments: int | None = None) -> dict:
    """The recorded history (``edits.json``): ingest objects, operations, materializations.

    Fragments ``0..n_neuron_fragments-1`` are the neurons' own; the others are tissue fragments.
    Merging a single tissue fragment into the neuron it belongs to ("absorb") is the most common
    edit; then merges of two objects of one true object, splits of false merges, false merges."""
    w = _World(svs, sv_fragment, fragment_neuron, contacts, contact_area, params.n_neurons)
    n_nf = len(w.fragments) if n_neuron_fragments is None else n_neuron_fragments
    counter = iter(range(ROOT_SEGMENT_BASE + 1, 1 << 40))

    def mint() -> int:
        return int(layout.encode(layout.n_layers, 0, 0, 0, next(counter)))

    objects: dict[int, dict] = {}  # root -> {"fragments": set, "links": set of (a, b)}
    owner: dict[int, int] = {}     # fragment -> its current root
    mixed: set[int] = set()        # roots holding fragments of several true objects
    # ingest: fragments, with a few false merges between touching neurons
    n_false = max(2, params.n_edits // 8)
    cross = sorted(k for k in w.frag_edge if w.neuron(k[0]) != w.neuron(k[1])
                   and k[1] < n_nf and w.neuron(k[0]) < params.n_neurons and w.neuron(k[1]) < params.n_neurons)
    rng.shuffle(cross)
    used: set[int] = set()
    groups = []
    for a, b in cross:
        if len(groups) >= n_false:
            break
        if a in used or b in used:
            continue
        used |= {a, b}
        groups.append(({a, b}, {w.frag_edge[(a, b)]}))
    groups += [({f}, set()) for f in w.fragments if f not in used]
    groups.sort(key=lambda g: min(g[0]))
    initial = []

    def add(root: int, frags: set, links: set) -> None:
        objects[root] = {"fragments": frags, "links": links}
        owner.update((f, root) for f in frags)
        if len({w.neuron(f) for f in frags}) > 1:
            mixed.add(root)

    def remove(root: int) -> None:
        del objects[root]
        mixed.discard(root)

    for frags, links in groups:
        root = mint()
        add(root, set(frags), set(links))
        initial.append({"root": root, "fragments": sorted(frags), "links": sorted(map(list, links))})

    def merge_candidates(kind: str):
        out = {}
        pairs = w.same if kind != "false_merge" else cross
        for a, b in pairs:
            ra, rb = owner[a], owner[b]
            if ra == rb:
                continue
            if kind == "absorb":  # a lone tissue fragment joins the neuron fragment it touches
                if w.neuron(a) >= params.n_neurons or not (a < n_nf <= b):
                    continue
                if len(objects[rb]["fragments"]) != 1:
                    continue
            out.setdefault((min(ra, rb), max(ra, rb)), w.frag_edge[(a, b)])
        return sorted(out.items())

    def splittable():
        out = []
        for r in sorted(mixed):
            o = objects[r]
            keep = {e for e in o["links"] if w.neuron(w.fragment_of(e[0])) == w.neuron(w.fragment_of(e[1]))}
            parts = _components(o["fragments"], keep, w)
            if len(parts) >= 2:
                out.append((r, keep, parts))
        return out

    ops = []
    t_ms = INGEST_MS
    kinds = ["absorb", "absorb", "absorb", "merge", "split", "false_merge"]
    while len(ops) < params.n_edits:
        order = list(kinds)
        rng.shuffle(order)
        op = None
        for kind in order:
            if kind != "split":
                cands = merge_candidates(kind)
                if not cands:
                    continue
                (ra, rb), edge = cands[int(rng.integers(len(cands)))]
                new_root = mint()
                merged = (objects[ra]["fragments"] | objects[rb]["fragments"],
                          objects[ra]["links"] | objects[rb]["links"] | {edge})
                remove(ra), remove(rb)
                add(new_root, *merged)
                op = {"kind": "merge", "old_roots": [ra, rb], "new": [new_root], "added_edges": [list(edge)]}
                break
            cands = splittable()
            if not cands:
                continue
            r, keep, parts = cands[int(rng.integers(len(cands)))]
            removed = sorted(map(list, objects[r]["links"] - keep))
            remove(r)
            new = []
            for part in parts:
                nr = mint()
                add(nr, part, {e for e in keep if w.fragment_of(e[0]) in part})
                new.append(nr)
            op = {"kind": "split", "old_roots": [r], "new": new, "removed_edges": removed}
            break
        if op is None:
            break
        t_ms += 1000 * int(rng.integers(2 * 3600, 36 * 3600))
        edges = op.get("added_edges") or op.get("removed_edges")
        coords = [sv_anchor[np.searchsorted(svs, np.uint64(e[0]))].tolist() for e in edges]
        sinks = [sv_anchor[np.searchsorted(svs, np.uint64(e[1]))].tolist() for e in edges]
        ops.append({
            "id": len(ops) + 1,
            "ts_ms": t_ms,
            "kind": op["kind"],
            "user": f"user_{int(rng.integers(1, 6))}",
            "old_roots": op["old_roots"],
            "new_roots": [{"root": r, "fragments": sorted(objects[r]["fragments"]),
                           "links": sorted(map(list, objects[r]["links"]))} for r in op["new"]],
            "added_edges": op.get("added_edges", []),
            "removed_edges": op.get("removed_edges", []),
            "source_coords": coords,
            "sink_coords": sinks,
        })

    return {
        "ingest_ms": INGEST_MS,
        "initial_objects": initial,
        "operations": ops,
        "materializations": _materializations(ops, rng),
    }


def _components(fragments: set[int], links, w: _World) -> list[set[int]]:
    """Fragments grouped by the links that join them."""
    parent = {f: f for f in fragments}

    def find(f):
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for a, b in links:
        fa, fb = find(w.fragment_of(a)), find(w.fragment_of(b))
        if fa != fb:
            parent[max(fa, fb)] = min(fa, fb)
    groups = defaultdict(set)
    for f in fragments:
        groups[find(f)].add(f)
    return [groups[k] for k in sorted(groups)]


def _materializations(ops: list[dict], rng) -> list[dict]:
    """Version 1 just after ingest, then one every ~10 edits, strictly between two edits; the last
    few edits come after the last version (so "mat" and "now" differ)."""
    out = [{"version": 1, "ts_ms": INGEST_MS + 1800 * 1000}]
    stops = list(range(6, max(len(ops) - 4, 7), 10))
    for i in stops:
        if i + 1 >= len(ops):
            break
        a, b = ops[i]["ts_ms"], ops[i + 1]["ts_ms"]
        t = (a + b) // 2 // 1000 * 1000
        if a < t < b:
            out.append({"version": len(out) + 1, "ts_ms": t})
    return out


# --------------------------------------------------------------------------------------------------
# the derived chunked graph
# --------------------------------------------------------------------------------------------------

def build_graph(history: dict, layout: IDLayout, svs, sv_fragment, contacts) -> dict[str, np.ndarray]:
    """Node and parent tables of the chunked graph, by epoch snapshots of the edit history."""
    sv_index = {int(s): i for i, s in enumerate(svs.tolist())}
    sv_chunk = layout.chunk_coords(svs)
    frag_svs = defaultdict(list)
    for i, f in enumerate(sv_fragment.tolist()):
        frag_svs[f].append(i)
    # contacts inside one fragment and one graph chunk: the agglomeration edges that L2 nodes follow
    ia = np.searchsorted(svs, contacts[:, 0])
    ib = np.searchsorted(svs, contacts[:, 1])
    same = (sv_fragment[ia] == sv_fragment[ib]) & np.all(sv_chunk[ia] == sv_chunk[ib], axis=1)
    frag_edges = defaultdict(list)
    for a, b in zip(ia[same].tolist(), ib[same].tolist()):
        frag_edges[int(sv_fragment[a])].append((a, b))

    chunk_of = [tuple(c) for c in sv_chunk.tolist()]
    n_layers = layout.n_layers
    registry: dict[tuple, int] = {}
    counters: dict[tuple, int] = defaultdict(int)
    created: dict[int, int] = {}
    children: dict[int, np.ndarray] = {}
    last_parent: dict[int, int] = {}
    cells: list[tuple[int, int, int]] = []  # (child, ms, parent)

    top = 64 - layout.layer_bits

    def encode(layer: int, chunk: tuple, segment: int) -> int:  # layout.encode for one node, in ints
        b = layout.spatial_bits[layer - 1]
        if max(chunk) >= 1 << b or segment >= 1 << (top - 3 * b):
            return int(layout.encode(layer, *chunk, segment))  # raises, naming the part that does not fit
        x, y, z = chunk
        return layer << top | x << (top - b) | y << (top - 2 * b) | z << (top - 3 * b) | segment

    def node(layer: int, chunk: tuple, kids: np.ndarray, ms: int) -> int:
        key = (layer, chunk, kids.tobytes())
        nid = registry.get(key)
        if nid is None:
            counters[(layer, chunk)] += 1
            nid = encode(layer, chunk, counters[(layer, chunk)])
            registry[key] = nid
            created[nid] = ms
            children[nid] = kids
        return nid

    def adopt(kids, parent: int, ms: int) -> None:
        for k in kids.tolist():
            if last_parent.get(k) != parent:
                last_parent[k] = parent
                cells.append((k, ms, parent))

    def build(root: int, fragments, links, ms: int) -> None:
        idx = np.array(sorted(i for f in fragments for i in frag_svs[f]), dtype=np.int64)
        if idx.size == 0:
            created[root], children[root] = ms, np.zeros(0, np.uint64)
            return
        local = {v: k for k, v in enumerate(idx.tolist())}
        ea = [local[a] for f in fragments for a, _ in frag_edges[f]]
        eb = [local[b] for f in fragments for _, b in frag_edges[f]]
        for a, b in links:
            i, j = sv_index[a], sv_index[b]
            if chunk_of[i] == chunk_of[j]:
                ea.append(local[i]), eb.append(local[j])
        n = idx.size
        if ea:
            graph = coo_matrix((np.ones(len(ea)), (ea, eb)), shape=(n, n))
            _, comp = connected_components(graph, directed=False)
        else:
            comp = np.arange(n)
        level = []  # (chunk tuple, node id)
        order = np.lexsort((idx, comp))
        comp_sorted = comp[order]
        starts = np.flatnonzero(np.r_[True, comp_sorted[1:] != comp_sorted[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], n]):
            members = np.sort(svs[idx[order[s:e]]])
            chunk = chunk_of[idx[order[s]]]
            l2 = node(2, chunk, members, ms)
            adopt(members, l2, ms)
            level.append((chunk, l2))
        for layer in range(3, n_layers):
            groups = defaultdict(list)
            for chunk, nid in level:  # ``level`` holds layer-(layer - 1) nodes and their chunks
                parent_chunk = (chunk[0] // 2, chunk[1] // 2, chunk[2] // 2)  # PyChunkedGraph fan-out 2
                groups[parent_chunk].append(nid)
            level = []
            for chunk in sorted(groups):
                kids = np.array(sorted(groups[chunk]), dtype=np.uint64)
                nid = node(layer, chunk, kids, ms)
                adopt(kids, nid, ms)
                level.append((chunk, nid))
        kids = np.array(sorted(n for _, n in level), dtype=np.uint64)
        created[root], children[root] = ms, kids
        adopt(kids, root, ms)

    for obj in history["initial_objects"]:
        build(obj["root"], obj["fragments"], obj["links"], history["ingest_ms"])
    for op in history["operations"]:
        for new in op["new_roots"]:
            build(new["root"], new["fragments"], new["links"], op["ts_ms"])

    for s in svs.tolist():
        created[int(s)] = history["ingest_ms"]
        children[int(s)] = np.zeros(0, np.uint64)
    node_ids = np.array(sorted(created), dtype=np.uint64)
    ptr = np.zeros(len(node_ids) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(children[int(n)]) for n in node_ids.tolist()])
    kids = [children[int(n)] for n in node_ids.tolist()]
    cells.sort()
    return {
        "node_ids": node_ids,
        "node_created_ms": np.array([created[int(n)] for n in node_ids.tolist()], dtype=np.int64),
        "children_ptr": ptr,
        "children": np.concatenate(kids).astype(np.uint64) if kids else np.zeros(0, np.uint64),
        "parent_child": np.array([c[0] for c in cells], dtype=np.uint64),
        "parent_ms": np.array([c[1] for c in cells], dtype=np.int64),
        "parent_id": np.array([c[2] for c in cells], dtype=np.uint64),
    }
