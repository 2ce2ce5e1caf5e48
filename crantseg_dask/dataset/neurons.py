"""Synthetic neurons: branching skeletons, their pieces and fragments, and tube rasterisation.

A neuron is a tree of skeleton segments (capsules with a radius, in nm) grown as persistent random
walks that branch, sometimes steered toward another neuron so that neurons touch. Consecutive
segments are grouped into *pieces*; a piece cut by graph-chunk boundaries becomes one supervoxel per
chunk. Pieces are grouped into *fragments* (connected subtrees): the objects of the initial,
over-segmented agglomeration that the edit history then merges and splits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import DatasetParams

__all__ = ["Skeletons", "grow_neurons", "rasterize_slab"]


@dataclass
class Skeletons:
    """Segments of all neurons. Segment s is a capsule from p0[s] to p1[s] (nm) of radius[s]."""

    p0: np.ndarray            # (S, 3) float64 nm
    p1: np.ndarray            # (S, 3) float64 nm
    radius: np.ndarray        # (S,) float64 nm
    piece: np.ndarray         # (S,) int32, pieces numbered from 1
    piece_fragment: np.ndarray  # (P + 1,) int32, fragment of each piece (index 0 unused)
    fragment_neuron: np.ndarray  # (F,) int32, neuron of each fragment

    @property
    def n_pieces(self) -> int:
        return len(self.piece_fragment) - 1


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([1.0, 0.0, 0.0])


def grow_neurons(params: DatasetParams, rng: np.random.Generator) -> Skeletons:
    """Grow ``params.n_neurons`` branching neurons inside the volume (deterministic given ``rng``)."""
    res = np.asarray(params.resolution, float)
    lo = np.asarray(params.voxel_offset, float) * res
    hi = lo + np.asarray(params.size, float) * res
    extent = hi - lo
    flat = np.array([1.0, 1.0, min(1.0, 0.5 * extent[2] / max(extent[0], extent[1]))])

    p0s, p1s, radii, pieces = [], [], [], []
    piece_fragment = [0]
    fragment_neuron: list[int] = []
    all_nodes: list[np.ndarray] = []   # node positions of earlier neurons, for contacts
    step = params.step_nm

    for n in range(params.n_neurons):
        soma = lo + extent * rng.uniform(0.12, 0.88, 3)
        r0 = rng.uniform(*params.radius_nm)
        frag = len(fragment_neuron)
        fragment_neuron.append(n)
        piece_fragment.append(frag)
        soma_piece = len(piece_fragment) - 1
        p0s.append(soma), p1s.append(soma), radii.append(min(3.0 * r0, 0.2 * extent[2])), pieces.append(soma_piece)
        nodes = [soma]
        target_nodes = np.concatenate(all_nodes) if all_nodes else None
        # branch stack: (start, direction, depth, piece, fragment)
        stack = []
        for _ in range(int(rng.integers(2, 4))):
            stack.append((soma, _unit(rng.normal(size=3) * flat), 0, soma_piece, frag))
        n_cuts_wanted = int(rng.integers(1, 5))
        while stack:
            start, direction, depth, parent_piece, fragment = stack.pop(0)
            radius = r0 * (0.8 ** depth)
            length = rng.exponential(params.branch_length_nm) + 2 * step
            target = None
            if target_nodes is not None and rng.random() < 0.45:
                target = target_nodes[rng.integers(len(target_nodes))]
            p = start
            piece, piece_len = None, 0
            travelled = 0.0
            while travelled < length:
                pull = 0.6 * _unit(target - p) if target is not None else 0.0
                direction = _unit(direction + rng.normal(scale=0.3, size=3) * flat + pull)
                q = p + step * direction
                if np.any(q < lo) or np.any(q > hi):
                    break
                # a new fragment (cut) starts a new piece too; otherwise a piece is 2-4 segments
                if piece is None or piece_len >= 3:
                    if n_cuts_wanted and rng.random() < 0.08 and travelled > 0:
                        fragment_neuron.append(n)
                        fragment = len(fragment_neuron) - 1
                        n_cuts_wanted -= 1
                    piece_fragment.append(fragment)
                    piece, piece_len = len(piece_fragment) - 1, 0
                p0s.append(p), p1s.append(q), radii.append(radius), pieces.append(piece)
                piece_len += 1
                nodes.append(q)
                travelled += step
                p = q
                if depth < 3 and rng.random() < step / (0.45 * params.branch_length_nm):
                    turn = _unit(direction + rng.normal(scale=1.0, size=3) * flat)
                    stack.append((p, turn, depth + 1, piece, fragment))
        all_nodes.append(np.asarray(nodes))

    return Skeletons(
        p0=np.asarray(p0s, float),
        p1=np.asarray(p1s, float),
        radius=np.asarray(radii, float),
        piece=np.asarray(pieces, np.int32),
        piece_fragment=np.asarray(piece_fragment, np.int32),
        fragment_neuron=np.asarray(fragment_neuron, np.int32),
    )


def rasterize_slab(sk: Skeletons, params: DatasetParams, z0: int, z1: int) -> np.ndarray:
    """Piece id of every voxel in local z-slab [z0, z1) (all x, y), 0 for background.

    Shape (X, Y, z1 - z0), int32. A voxel belongs to a capsule when its centre lies within the
    radius; later segments overwrite earlier ones (a fixed order, so the result is deterministic).
    """
    res = np.asarray(params.resolution, float)
    off = np.asarray(params.voxel_offset, float)
    size = np.asarray(params.size)
    out = np.zeros((size[0], size[1], z1 - z0), dtype=np.int32)
    bb_lo = np.minimum(sk.p0, sk.p1) - sk.radius[:, None]
    bb_hi = np.maximum(sk.p0, sk.p1) + sk.radius[:, None]
    vlo = np.floor(bb_lo / res - off - 0.5).astype(np.int64)
    vhi = np.ceil(bb_hi / res - off - 0.5).astype(np.int64) + 1
    slab_lo = np.array([0, 0, z0])
    slab_hi = np.array([size[0], size[1], z1])
    vlo = np.maximum(vlo, slab_lo)
    vhi = np.minimum(vhi, slab_hi)
    hit = np.all(vhi > vlo, axis=1)
    for s in np.flatnonzero(hit):
        a, b = vlo[s], vhi[s]
        cx = (np.arange(a[0], b[0]) + off[0] + 0.5) * res[0]
        cy = (np.arange(a[1], b[1]) + off[1] + 0.5) * res[1]
        cz = (np.arange(a[2], b[2]) + off[2] + 0.5) * res[2]
        p0, d = sk.p0[s], sk.p1[s] - sk.p0[s]
        dd = float(d @ d)
        rx, ry, rz = cx[:, None, None] - p0[0], cy[None, :, None] - p0[1], cz[None, None, :] - p0[2]
        if dd > 0:
            t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / dd, 0.0, 1.0)
            dist2 = (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2
        else:
            dist2 = rx**2 + ry**2 + rz**2
        mask = dist2 <= sk.radius[s] ** 2
        view = out[a[0] : b[0], a[1] : b[1], a[2] - z0 : b[2] - z0]
        view[mask] = sk.piece[s]
    return out
