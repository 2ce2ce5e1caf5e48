"""Structural checks of a generated dataset's chunked graph, from first principles.

The expected chunk of every node is computed from the voxel positions of its supervoxels (their
recorded anchors, each one of the supervoxel's own voxels) and the PyChunkedGraph rule: a layer-2
chunk is ``(voxel - voxel_offset) // graph_chunk``, and the chunk of a layer-``L`` node is its
layer-2 chunk ``// 2 ** (L - 2)`` (the root layer is the single chunk (0, 0, 0)). Nothing here
uses the sources, the ``parent_chunk`` helper or the generator's code paths; node IDs are decoded
by plain bit arithmetic from the graph info's ``spatial_bit_masks``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .layout import load_json

__all__ = ["decode_chunks", "chunk_hierarchy_problems"]


def decode_chunks(ids: np.ndarray, graph: dict) -> tuple[np.ndarray, np.ndarray]:
    """Layer and (x, y, z) chunk of each node ID by plain bit arithmetic (layer: top 8 bits)."""
    ids = np.asarray(ids, dtype=np.uint64)
    layer_bits = int(graph.get("n_bits_for_layer_id", 8))
    masks = {int(k): int(v) for k, v in graph["spatial_bit_masks"].items()}
    layer = (ids >> np.uint64(64 - layer_bits)).astype(np.int64)
    chunk = np.zeros(ids.shape + (3,), dtype=np.int64)
    for L in np.unique(layer).tolist():
        b = masks[L]
        sel = layer == L
        for axis in range(3):
            shift = np.uint64(64 - layer_bits - b * (axis + 1))
            chunk[sel, axis] = ((ids[sel] >> shift) & np.uint64((1 << b) - 1)).astype(np.int64)
    return layer, chunk


def chunk_hierarchy_problems(path, *, limit: int = 20) -> list[str]:
    """Violations (at most ``limit`` messages) of the chunk rules in the dataset at ``path``.

    Checked for every node of the graph: (1) each supervoxel's ID encodes the layer-2 chunk of its
    anchor voxel; (2) each node at layer ``L`` encodes the chunk ``c2 // 2 ** (L - 2)`` of every one
    of its supervoxels (so they all share it); (3) each node's chunk is the parent chunk of each of
    its children's chunks; (4) each child's chunk box lies inside its parent's chunk box."""
    p = Path(path)
    info = load_json(p / "dataset.json")
    graph, params = info["graph"], info["params"]
    n_layers = int(graph["n_layers"])
    gchunk = np.asarray(params["graph_chunk"], np.int64)
    offset = np.asarray(params["voxel_offset"], np.int64)
    svs = np.load(p / "history" / "supervoxels.npy")
    anchor = np.load(p / "history" / "sv_anchor.npy")
    node_ids = np.load(p / "graph" / "node_ids.npy")
    ptr = np.load(p / "graph" / "children_ptr.npy")
    kids = np.load(p / "graph" / "children.npy")
    problems: list[str] = []

    def report(msg: str, bad: np.ndarray, ids: np.ndarray) -> None:
        if bad.any() and len(problems) < limit:
            problems.append(f"{msg}: {int(bad.sum())} nodes, e.g. {ids[bad][:3].tolist()}")

    sv_c2 = (anchor - offset) // gchunk
    sv_layer, sv_chunk = decode_chunks(svs, graph)
    report("supervoxel not at layer 1", sv_layer != 1, svs)
    report("supervoxel ID does not encode its voxels' chunk", np.any(sv_chunk != sv_c2, axis=1), svs)

    layer, chunk = decode_chunks(node_ids, graph)
    n_kids = np.diff(ptr)
    # every node's children by index, and each child's parent index (a tree per root)
    kid_pos = np.searchsorted(node_ids, kids)
    kid_pos = np.minimum(kid_pos, len(node_ids) - 1)
    report("child is not a node", node_ids[kid_pos] != kids, kids)
    parent_of_kid = np.repeat(np.arange(len(node_ids)), n_kids)
    # lowest and highest layer-2 chunk among each node's supervoxels, bottom-up by layer
    lo = np.full((len(node_ids), 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((len(node_ids), 3), np.iinfo(np.int64).min, np.int64)
    is_sv = layer == 1
    sv_idx = np.searchsorted(svs, node_ids[is_sv])
    lo[is_sv] = hi[is_sv] = sv_c2[sv_idx]
    for L in range(2, n_layers + 1):
        sel = layer[parent_of_kid] == L
        np.minimum.at(lo, parent_of_kid[sel], lo[kid_pos[sel]])
        np.maximum.at(hi, parent_of_kid[sel], hi[kid_pos[sel]])
        at = (layer == L) & (n_kids > 0)
        scale = 2 ** (L - 2)
        want_lo = np.zeros_like(lo[at]) if L == n_layers else lo[at] // scale
        want_hi = np.zeros_like(hi[at]) if L == n_layers else hi[at] // scale
        ids = node_ids[at]
        report(f"layer-{L} node's supervoxels span several layer-{L} chunks", np.any(want_lo != want_hi, axis=1), ids)
        report(f"layer-{L} node's chunk is not its supervoxels' chunk // {scale}",
               np.any(chunk[at] != want_lo, axis=1), ids)

    # each node's chunk is the parent chunk of its children's chunks, and contains their boxes
    pl, cl = layer[parent_of_kid], np.maximum(layer[kid_pos], 2)
    pc, cc = chunk[parent_of_kid], chunk[kid_pos]
    root = pl == n_layers
    up = (2 ** np.maximum(pl - cl, 0))[:, None]
    expect = np.where(root[:, None], 0, cc // up)
    report("node's chunk is not its child's parent chunk", np.any(pc != expect, axis=1), node_ids[parent_of_kid])
    span_p = gchunk * (2 ** np.maximum(pl - 2, 0))[:, None]
    span_c = gchunk * (2 ** (cl - 2))[:, None]
    inside = np.all((cc * span_c >= pc * span_p) & ((cc + 1) * span_c <= (pc + 1) * span_p), axis=1) | root
    report("child's chunk box is not inside its parent's chunk box", ~inside, kids)
    report("child's layer is not below its parent's", layer[kid_pos] >= pl, kids)
    return problems
