"""The dense world: a tissue mask and watershed-like cells filling it between the neurons.

A real EM watershed labels nearly every voxel of the tissue. Here the space between the neurons'
tubes is cut into *cells* by a jittered-grid Voronoi diagram (Worley cells, distances in nm): one
seed per grid cell of ``params.cell_size`` voxels, jittered inside it; in some places (random blocks of
3x3x3 grid cells) the block are joined into one larger cell, so cell volumes spread over
about 10^3-10^5 voxels. The diagram is evaluated on a grid 2x coarser in x and y (nearest
upsampling) with the 8 nearest grid seeds as candidates. Outside a smooth tissue mask the volume
is 0. Cells, like neuron pieces, become one supervoxel per graph chunk they cross.

Everything is vectorised numpy and deterministic given the random generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import DatasetParams

__all__ = ["CellField", "make_cells", "tissue_mask", "tissue_box", "fill_slab"]

_COARSE = (2, 2, 1)   # evaluation grid step (voxels) of the Voronoi diagram
_BIG_BLOCK = (3, 3, 3)  # grid cells joined into one large cell in "large" regions


@dataclass
class CellField:
    """Seeds of the Worley cells, in voxel units relative to the volume's lower corner."""

    spacing: np.ndarray     # (3,) voxels between grid seeds
    seeds: np.ndarray       # (Gx, Gy, Gz, 3) float32 seed positions (voxels)
    cell_of: np.ndarray     # (Gx, Gy, Gz) int64 cell number of each grid seed (joined blocks share one)
    n_cells: int
    tissue_phase: np.ndarray  # (4,) float64 random phases of the tissue outline


def make_cells(params: DatasetParams, rng: np.random.Generator) -> CellField:
    """Seeds, joined blocks and the tissue outline for ``params`` (deterministic given ``rng``)."""
    s = np.asarray(params.cell_size, np.int64)
    g = -(-np.asarray(params.size) // s) + 1
    u = rng.uniform(0.2, 0.8, size=(*g, 3))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g], indexing="ij"), axis=-1)
    seeds = ((idx + u) * s).astype(np.float32)
    # large cells: where a smooth random field is high, a block of grid seeds is one cell
    b = np.asarray(_BIG_BLOCK)
    nb = -(-g // b)
    big_block = rng.random(nb) < params.large_cell_share
    bi = idx // b
    big = big_block[bi[..., 0], bi[..., 1], bi[..., 2]]
    key = np.where(big, -1 - np.ravel_multi_index(tuple(np.moveaxis(bi, -1, 0)), nb),
                   np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), g))
    _, cell_of = np.unique(key, return_inverse=True)
    cell_of = cell_of.reshape(g).astype(np.int64)
    return CellField(spacing=s, seeds=seeds, cell_of=cell_of, n_cells=int(cell_of.max()) + 1,
                     tissue_phase=rng.uniform(0, 2 * np.pi, 4))


_MASK_STEP = 4  # the tissue outline is evaluated on a 4x4 coarser grid in x and y


def _outline(params: DatasetParams, phases: np.ndarray, x: np.ndarray, y: np.ndarray, z: int) -> np.ndarray:
    """Inside-tissue test at local voxels x (column), y (row) of plane z: a rounded, wavy outline
    that drifts with z, evaluated at the centre of each voxel's 4x4 coarse cell."""
    X, Y, Z = params.size
    xc = ((x // _MASK_STEP) * _MASK_STEP + _MASK_STEP / 2) / X * 2 - 1
    yc = ((y // _MASK_STEP) * _MASK_STEP + _MASK_STEP / 2) / Y * 2 - 1
    zz = (z + 0.5) / Z
    ang = np.arctan2(yc, xc)
    r = (np.abs(xc) ** 4 + np.abs(yc) ** 4) ** 0.25
    wave = 0.06 * np.sin(3 * ang + phases[0] + 2 * zz) + 0.04 * np.sin(5 * ang + phases[1] - 3 * zz)
    return r < 0.93 + wave + 0.03 * np.sin(phases[2] + 4 * zz)


def tissue_mask(params: DatasetParams, field: CellField, z0: int, z1: int) -> np.ndarray:
    """(X, Y, z1 - z0) bool: inside the tissue, for the local z-slab [z0, z1)."""
    X, Y, _ = params.size
    xs = np.arange(0, X, _MASK_STEP)[:, None]
    ys = np.arange(0, Y, _MASK_STEP)[None, :]
    xi, yi = np.arange(X) // _MASK_STEP, np.arange(Y) // _MASK_STEP
    out = np.empty((X, Y, z1 - z0), dtype=bool)
    for k, z in enumerate(range(z0, z1)):
        out[:, :, k] = _outline(params, field.tissue_phase, xs, ys, z)[xi][:, yi]
    return out


def tissue_box(params: DatasetParams, phases: np.ndarray, box) -> np.ndarray:
    """Tissue mask of the absolute mip-0 voxel box ``box`` = [(x0, x1), (y0, y1), (z0, z1)]."""
    off = np.asarray(params.voxel_offset)
    (x0, x1), (y0, y1), (z0, z1) = [(a - o, b - o) for (a, b), o in zip(box, off)]
    x = np.arange(x0, x1)[:, None]
    y = np.arange(y0, y1)[None, :]
    return np.stack([_outline(params, phases, x, y, z) for z in range(z0, z1)], axis=2)


def _cells_coarse(params: DatasetParams, field: CellField, z0: int, z1: int) -> np.ndarray:
    """Cell of every coarse sample (x, y step 2, z step 1) covering local slab [z0, z1).

    Each sample's candidates are the 8 grid seeds around the half grid cell it lies in; the samples
    are laid out as (grid x, sample, grid y, sample, grid z, sample) so that every candidate seed
    is a small array broadcast over the samples of its grid cell."""
    X, Y, _ = params.size
    s = field.spacing
    res = np.asarray(params.resolution, np.float32)
    G = np.asarray(field.cell_of.shape)
    n = np.array([-(-X // s[0]), -(-Y // s[1]), 0])
    gz0, gz1 = z0 // s[2], -(-z1 // s[2])
    n[2] = gz1 - gz0
    per = s // np.asarray(_COARSE)       # samples per grid cell along each axis
    half = per // 2
    out = np.empty((n[0], per[0], n[1], per[1], n[2], per[2]), dtype=np.int32)
    g = [np.arange(n[0]), np.arange(n[1]), np.arange(gz0, gz1)]
    for octant in range(8):
        h = [(octant >> 2) & 1, (octant >> 1) & 1, octant & 1]
        # sample coordinates (voxel units), shaped to broadcast: axis a on dims (2a, 2a + 1)
        pos = []
        for a in range(3):
            i = np.arange(h[a] * half[a], (h[a] + 1) * half[a])
            c = g[a][:, None] * s[a] + (i[None, :] + 0.5) * _COARSE[a]
            sh = [1] * 6
            sh[2 * a], sh[2 * a + 1] = c.shape
            pos.append(c.astype(np.float32).reshape(sh))
        best = win = None
        for k in range(8):
            b = [(k >> 2) & 1, (k >> 1) & 1, k & 1]
            gi = [np.clip(g[a] + h[a] - 1 + b[a], 0, G[a] - 1) for a in range(3)]
            sd = field.seeds[np.ix_(*gi)]                                  # (nx, ny, nz, 3)
            sd = sd[:, None, :, None, :, None, :]
            d = ((pos[0] - sd[..., 0]) * res[0]) ** 2 + ((pos[1] - sd[..., 1]) * res[1]) ** 2
            d = d + ((pos[2] - sd[..., 2]) * res[2]) ** 2
            if best is None:
                best, win = d, np.zeros(d.shape, np.uint8)
            else:
                closer = d < best
                np.copyto(best, d, where=closer)
                np.copyto(win, np.uint8(k), where=closer)
        cells = np.empty(win.shape, np.int32)
        for k in range(8):
            b = [(k >> 2) & 1, (k >> 1) & 1, k & 1]
            gi = [np.clip(g[a] + h[a] - 1 + b[a], 0, G[a] - 1) for a in range(3)]
            cand = field.cell_of[np.ix_(*gi)][:, None, :, None, :, None]
            np.copyto(cells, np.broadcast_to(cand, win.shape).astype(np.int32), where=win == k)
        out[:, h[0] * half[0]:(h[0] + 1) * half[0], :, h[1] * half[1]:(h[1] + 1) * half[1],
            :, h[2] * half[2]:(h[2] + 1) * half[2]] = cells
    out = out.reshape(n[0] * per[0], n[1] * per[1], n[2] * per[2])
    return out[:, :, z0 - gz0 * s[2]: z1 - gz0 * s[2]]


def fill_slab(pieces: np.ndarray, params: DatasetParams, field: CellField, z0: int, first_id: int) -> None:
    """Fill the background of ``pieces`` (a local z-slab from ``z0``) inside the tissue with cells.

    Cell ``c`` gets piece id ``first_id + c``; neuron voxels (non-zero) are kept; outside the tissue
    stays 0. In place."""
    X, Y, Z = pieces.shape
    coarse = _cells_coarse(params, field, z0, z0 + Z)
    mask = tissue_mask(params, field, z0, z0 + Z)
    for a in range(_COARSE[0]):
        for b in range(_COARSE[1]):
            view = pieces[a::_COARSE[0], b::_COARSE[1]]
            m = mask[a::_COARSE[0], b::_COARSE[1]] & (view == 0)
            view[m] = coarse[:view.shape[0], :view.shape[1]][m] + first_id
