"""Fragments and true objects of the dense world.

The initial agglomeration of a real watershed is over-segmented: besides the proofread neurons'
fragments there are many small unproofread objects. ``assign_fragments`` groups the tissue cells
(each one supervoxel per graph chunk it crosses) into *fragments* of a few touching cells
(multi-source shortest paths over the cell contact graph), and gives every fragment its *true
object* (the ``sv_neuron`` the edit history converges to):

* a few large glia-like bodies: every fragment whose seed cell lies within a few contact hops of a
  glia seed cell belongs to that body (many fragments, merged by later edits);
* fragments touching a neuron are, with probability ``_OWNED``, truly part of it (merging them into
  the neuron is the most common proofreading edit);
* every other fragment is an orphan: its own true object.

Neuron pieces keep the fragments of ``neurons.grow_neurons``.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from .layout import DatasetParams
from .neurons import Skeletons

__all__ = ["assign_fragments"]

_CELLS_PER_FRAGMENT = 6   # mean cells per fragment
_GLIA_HOPS = 4            # reach of a glia body from its seed cell, in cell contacts
_OWNED = 0.4              # share of neuron-touching fragments that truly belong to the neuron


def _grow(n: int, rows: np.ndarray, cols: np.ndarray, seeds: np.ndarray, limit=np.inf) -> np.ndarray:
    """Nearest seed (index into ``seeds``) of each node over unit-weight edges; -1 if none in reach."""
    if not len(seeds):
        return np.full(n, -1, np.int64)
    g = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    _, _, src = dijkstra(g, directed=False, indices=seeds, min_only=True, return_predecessors=True,
                         unweighted=True, limit=limit)
    lookup = np.full(n, -1, np.int64)
    lookup[seeds] = np.arange(len(seeds))
    return np.where(src >= 0, lookup[np.maximum(src, 0)], -1)


def assign_fragments(sk: Skeletons, piece_of: np.ndarray, n_neuron_pieces: int, svs: np.ndarray,
                     contacts: np.ndarray, area: np.ndarray, rng: np.random.Generator,
                     params: DatasetParams) -> tuple[np.ndarray, np.ndarray]:
    """Fragment of each supervoxel (int32) and true object of each fragment (int32).

    ``piece_of`` is each supervoxel's piece: neuron pieces ``1..n_neuron_pieces``, then tissue
    cells. Deterministic given ``rng``."""
    is_cell = piece_of > n_neuron_pieces
    sv_fragment = np.zeros(len(svs), np.int64)
    sv_fragment[~is_cell] = sk.piece_fragment[piece_of[~is_cell]]
    frag_neuron = [sk.fragment_neuron.astype(np.int64)]
    n_frag = len(sk.fragment_neuron)
    if not is_cell.any():
        return sv_fragment.astype(np.int32), frag_neuron[0].astype(np.int32)
    cells, sv_cell = np.unique(piece_of[is_cell], return_inverse=True)
    n_cells = len(cells)
    cell_of_sv = np.full(len(svs), -1, np.int64)
    cell_of_sv[is_cell] = sv_cell
    ia, ib = np.searchsorted(svs, contacts[:, 0]), np.searchsorted(svs, contacts[:, 1])
    ca, cb = cell_of_sv[ia], cell_of_sv[ib]
    cc = (ca >= 0) & (cb >= 0) & (ca != cb)
    rows, cols = ca[cc], cb[cc]

    # fragments: a few touching cells around random seed cells
    seeds = np.flatnonzero(rng.random(n_cells) < 1.0 / _CELLS_PER_FRAGMENT)
    group = _grow(n_cells, rows, cols, seeds)
    lonely = group < 0
    group[lonely] = len(seeds) + np.arange(lonely.sum())
    n_groups = len(seeds) + int(lonely.sum())
    seed_cell = np.r_[seeds, np.flatnonzero(lonely)]
    # glia-like bodies: the fragments whose seed cell lies near a glia seed
    n_glia = max(2, params.n_neurons // 10)
    glia_seeds = rng.choice(n_cells, size=min(n_glia, n_cells), replace=False)
    glia_of_cell = _grow(n_cells, rows, cols, np.sort(glia_seeds), limit=_GLIA_HOPS)
    owner = np.where(glia_of_cell[seed_cell] >= 0, params.n_neurons + glia_of_cell[seed_cell], -1)
    # fragments touching a neuron: some are truly part of it (the one with the largest contact)
    nc = (ca >= 0) & (cb < 0) | (ca < 0) & (cb >= 0)
    frag = group[np.where(ca >= 0, ca, cb)[nc]]
    neuron = sk.fragment_neuron[sv_fragment[np.where(ca < 0, ia, ib)[nc]]].astype(np.int64)
    best = np.full(n_groups, -1, np.int64)
    order = np.lexsort((neuron, -area[nc], frag))
    f_sorted = frag[order]
    first = np.r_[True, f_sorted[1:] != f_sorted[:-1]]
    best[f_sorted[first]] = neuron[order][first]
    owned = (best >= 0) & (owner < 0) & (rng.random(n_groups) < _OWNED)
    owner[owned] = best[owned]
    orphan = owner < 0
    owner[orphan] = params.n_neurons + len(glia_seeds) + np.arange(orphan.sum())
    sv_fragment[is_cell] = n_frag + group[sv_cell]
    return sv_fragment.astype(np.int32), np.r_[frag_neuron[0], owner].astype(np.int32)
