"""The chunk hierarchy of the ground truth, rebuilt from supervoxel positions and the volume.

A mixin of :class:`crantseg_dask.dataset.truth.Truth`. It reads only the stored volume (for the
contacts between supervoxels), each supervoxel's anchor position (for its chunk), its fragment
and the edit log (which fragments and links make each root). Nothing here reads the derived graph
tables (``graph/``), ``history/contacts.npy``, a source, or decodes chunk coordinates out of IDs.

Definitions (PyChunkedGraph's, as the operations promise them):

* the L2 chunk of a supervoxel is ``(anchor - voxel_offset) // graph_chunk``; its layer-``k``
  chunk (3 <= k < n_layers) is that ``// 2 ** (k - 2)``; a layer-``k`` chunk covers the mip-0 box
  ``voxel_offset + c * graph_chunk * 2 ** (k - 2)`` + one such span (layers 1 and 2 share a grid);
* two supervoxels are in contact when a voxel of one shares a face with a voxel of the other at
  mip 0; a root's agglomeration edges are its contacts inside one fragment plus the links the
  edit log recorded for it;
* an L2 node of a root is a connected piece of the root inside one L2 chunk, following the
  agglomeration edges; two L2 nodes are joined in the L2 graph when an agglomeration edge links
  them; a layer-``k`` node (k >= 3) is the root's supervoxels in one layer-``k`` chunk; the root
  is the only node at layer ``n_layers``;
* ``leaves(root, stop_layer=k, bounds=box)`` is every layer-``k`` node of the root (layer 1: every
  supervoxel) whose layer-``k`` chunk box overlaps ``box`` (chunk granular);
* ``thin`` removes a root voxel when one of its 6 face neighbours (at the same mip) belongs to the
  root but to another L2 node that the L2 graph does not join to its own.
"""
from __future__ import annotations

from functools import cached_property, lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["GraphTruth"]

_FACES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


class GraphTruth:
    """Layer-k nodes, L2 graph and ``thin`` of the truth (see the module docstring)."""

    # -- supervoxel chunks and contacts (from positions and the volume) ------------------------
    @cached_property
    def sv_chunk(self) -> np.ndarray:
        """L2 chunk (N, 3) of every supervoxel (``self.supervoxels`` order), from its anchor."""
        off = np.asarray(self.params.voxel_offset)
        return (self.sv_anchor - off) // np.asarray(self.params.graph_chunk)

    def chunk_of(self, svs, layer: int) -> np.ndarray:
        """Layer-``layer`` chunk (N, 3) of supervoxels ``svs`` (layers 1 and 2: the L2 chunk)."""
        i = self._sv_pos(svs)
        return self.sv_chunk[i] // (2 ** max(int(layer) - 2, 0))

    def chunk_box(self, chunk, layer: int) -> np.ndarray:
        """(2, 3) mip-0 voxel box (half open, not clipped) of a layer-``layer`` chunk."""
        span = np.asarray(self.params.graph_chunk) * 2 ** max(int(layer) - 2, 0)
        lo = np.asarray(self.params.voxel_offset) + np.asarray(chunk) * span
        return np.stack([lo, lo + span])

    def _sv_pos(self, svs) -> np.ndarray:
        svs = np.asarray(svs, dtype=np.uint64)
        i = np.searchsorted(self.supervoxels, svs)
        if np.any(i >= len(self.supervoxels)) or np.any(self.supervoxels[np.minimum(i, len(self.supervoxels) - 1)] != svs):
            raise KeyError("unknown supervoxel")
        return i

    @cached_property
    def volume_contacts(self) -> np.ndarray:
        """(K, 2) sorted pairs (a < b) of supervoxels sharing a voxel face at mip 0."""
        vol = self.volume(0)
        svs = np.asarray(self.supervoxels, np.uint64)
        n = len(svs)
        if not n:
            return np.zeros((0, 2), np.uint64)
        # each voxel's index into the sorted supervoxels (-1 on background), so that a pair is one
        # int64, (index of a) * n + (index of b), and the unique keys are the unique pairs in
        # lexicographic order (np.unique(axis=0) on the ID pairs is several times slower)
        idx = np.searchsorted(svs, vol)
        fg = vol != 0
        if np.any(idx[fg] >= n) or np.any(svs[np.minimum(idx[fg], n - 1)] != vol[fg]):
            raise ValueError("the volume holds labels that are not supervoxels of the edit log")
        idx[~fg] = -1
        keys = []
        for axis in range(3):
            a = np.moveaxis(idx, axis, 0)
            u, v = a[:-1].ravel(), a[1:].ravel()
            m = (u >= 0) & (v >= 0) & (u != v)
            u, v = u[m], v[m]
            keys.append(np.unique(np.minimum(u, v) * n + np.maximum(u, v)))
        key = np.unique(np.concatenate(keys))
        return np.stack([svs[key // n], svs[key % n]], axis=1)

    @lru_cache(maxsize=4)
    def fragment_volume(self, mip: int = 0) -> np.ndarray:
        """The volume at ``mip`` with each voxel's fragment (-1 outside every supervoxel)."""
        vol = self.volume(mip)
        pos = np.minimum(np.searchsorted(self.supervoxels, vol), len(self.supervoxels) - 1)
        return np.where(self.supervoxels[pos] == vol, self.sv_fragment[pos], -1)

    @cached_property
    def _contact_fragments(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.volume_contacts
        return (self.sv_fragment[self._sv_pos(c[:, 0])], self.sv_fragment[self._sv_pos(c[:, 1])])

    @lru_cache(maxsize=None)
    def _root_graph(self, root: int):
        """(sorted supervoxels, edge ends i, j as indices into them) of ``root``'s agglomeration edges."""
        frags, links = self.objects[root]
        svs = self.leaves(root)
        fa, fb = self._contact_fragments
        inside = (fa == fb) & np.isin(fa, list(frags))
        edges = self.volume_contacts[inside]
        if links:
            edges = np.concatenate([edges, np.array(sorted(links), dtype=np.uint64).reshape(-1, 2)])
        return svs, np.searchsorted(svs, edges[:, 0]), np.searchsorted(svs, edges[:, 1])

    # -- L2 nodes and the L2 graph -------------------------------------------------------------
    @lru_cache(maxsize=None)
    def _l2_labels(self, root: int) -> np.ndarray:
        """L2-node index of each of ``leaves(root)``; nodes numbered by their smallest supervoxel."""
        svs, i, j = self._root_graph(root)
        if not len(svs):
            return np.zeros(0, np.int64)
        ch = self.chunk_of(svs, 2)
        same = np.all(ch[i] == ch[j], axis=1)
        g = coo_matrix((np.ones(int(same.sum())), (i[same], j[same])), shape=(len(svs), len(svs)))
        _, comp = connected_components(g, directed=False)
        first = np.full(comp.max() + 1, len(svs))
        np.minimum.at(first, comp, np.arange(len(svs)))
        rank = np.argsort(np.argsort(first))
        return rank[comp]

    def l2_groups(self, root) -> list[np.ndarray]:
        """The L2 nodes of ``root`` as sorted supervoxel arrays (ordered by smallest member)."""
        svs, lab = self.leaves(int(root)), self._l2_labels(int(root))
        return [svs[lab == k] for k in range(lab.max() + 1)] if len(svs) else []

    def l2_index(self, root) -> dict[int, int]:
        """Supervoxel -> index of its L2 node in ``l2_groups(root)``."""
        return dict(zip(self.leaves(int(root)).tolist(), self._l2_labels(int(root)).tolist()))

    def l2_edges(self, root) -> set[tuple[int, int]]:
        """Pairs (i, j), i < j, of indices into ``l2_groups(root)`` joined by an agglomeration edge."""
        _, i, j = self._root_graph(int(root))
        lab = self._l2_labels(int(root))
        a, b = lab[i], lab[j]
        keep = a != b
        return {(int(min(p, q)), int(max(p, q))) for p, q in zip(a[keep], b[keep])}

    # -- layer-k nodes and bounded leaves -----------------------------------------------------
    def layer_nodes(self, root, layer: int) -> list[np.ndarray]:
        """The layer-``layer`` nodes of ``root`` as sorted supervoxel arrays (by smallest member)."""
        layer, svs = int(layer), self.leaves(int(root))
        if layer == 1:
            return [svs[k:k + 1] for k in range(len(svs))]
        if layer == 2:
            return self.l2_groups(root)
        if layer >= self.layout.n_layers:
            return [svs] if len(svs) else []
        _, lab = np.unique(self.chunk_of(svs, layer), axis=0, return_inverse=True)
        groups = [svs[lab.ravel() == k] for k in range(lab.max() + 1)] if len(svs) else []
        return sorted(groups, key=lambda g: int(g[0]))

    def node_chunk(self, node_svs, layer: int) -> np.ndarray:
        """The layer-``layer`` chunk of a node given by its supervoxels (they all share it)."""
        ch = np.unique(self.chunk_of(node_svs, layer), axis=0)
        assert len(ch) == 1, f"a layer-{layer} node spans chunks {ch.tolist()}"
        return ch[0]

    def bounded_nodes(self, root, layer: int, box) -> list[np.ndarray]:
        """``leaves(root, stop_layer=layer, bounds=box)``: the layer-``layer`` nodes (sorted
        supervoxel arrays) whose chunk box overlaps the mip-0 voxel box ``box`` (2, 3)."""
        lo, hi = np.asarray(box)
        out = []
        for g in self.layer_nodes(root, layer):
            if layer >= self.layout.n_layers:
                out.append(g)
                continue
            c = self.chunk_box(self.node_chunk(g, max(layer, 2)), max(layer, 2))
            if np.all(c[0] < hi) and np.all(c[1] > lo):
                out.append(g)
        return out

    # -- thin: a per-voxel scan of the 6 face neighbours --------------------------------------
    def interface_voxels(self, root, mip: int = 0) -> np.ndarray:
        """Voxels (N, 3, sorted) of ``root`` that ``thin`` removes (see the module docstring):
        each root voxel's 6 face neighbours are looked up one offset at a time."""
        root = int(root)
        vol = self.volume(mip)
        off, size = self.bounds(mip)
        svs, lab = self.leaves(root), self._l2_labels(root)
        local = np.argwhere(np.isin(self.fragment_volume(mip), list(self.objects[root][0])))
        if not len(local):
            return np.zeros((0, 3), np.int64)
        own = lab[np.searchsorted(svs, vol[tuple(local.T)])]
        n = int(lab.max()) + 1
        joined = np.array(sorted(a * n + b for a, b in self.l2_edges(root)), dtype=np.int64)
        removed = np.zeros(len(local), dtype=bool)
        for d in _FACES:  # the neighbour at offset d of every root voxel
            nb = local + d
            ok = np.all((nb >= 0) & (nb < size), axis=1)
            lbl = np.zeros(len(local), np.uint64)
            lbl[ok] = vol[tuple(nb[ok].T)]
            pos = np.minimum(np.searchsorted(svs, lbl), len(svs) - 1)
            other = np.where(svs[pos] == lbl, lab[pos], -1)
            diff = (other >= 0) & (other != own)
            pair = np.minimum(own, other) * n + np.maximum(own, other)
            removed |= diff & ~np.isin(pair, joined)
        hit = local[removed] + off
        return hit[np.lexsort(hit.T[::-1])]

    def self_touching_roots(self, mip: int = 0) -> list[int]:
        """Roots with at least one interface voxel at ``mip`` (candidates for ``thin`` tests)."""
        return [r for r in self.all_roots.tolist() if len(self.interface_voxels(r, mip))]
