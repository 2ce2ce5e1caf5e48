"""Planning ``get_voxels``: metadata and the chunked graph only, no voxel reads.

``plan_voxels`` validates the root and the bounds (steps 1 and 2 of ``ops.voxels``), asks the
chunked graph for the root's L2 nodes and supervoxels (step 3) and returns a ``VoxelPlan``: the
voxel boxes to read, which supervoxels to keep in each, and the thinning lookup table. The lazy
builder turns a plan into Dask tasks; ``ops.voxels.voxels_kernel`` runs it in one process.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._chunking import pack_coords
from .._validate import as_bbox, as_ids
from ..errors import InvalidIDError, InvalidInputError
from ..sources import SourceSpec, VolumeMeta, open_source
from .cutouts import check_inside, check_nonempty, voxel_box

__all__ = ["VoxelPlan", "plan_voxels"]


def _root_id(x, meta: VolumeMeta) -> int:
    """``x`` as one root ID; raises "is not a valid root ID" from its layer bits alone."""
    ids = as_ids(x, name="x")
    if ids.size != 1:
        raise InvalidIDError(f"x must be a single root ID, got {ids.size} IDs; call get_voxels once per root")
    if int(meta.layout.layer(ids)[0]) != meta.n_layers:
        raise InvalidIDError(
            f"{int(ids[0])} is not a valid root ID (its layer is {int(meta.layout.layer(ids)[0])}, roots are "
            f"layer {meta.n_layers}); map supervoxels to roots with supervoxels_to_roots first"
        )
    return int(ids[0])


def _mip_factor(meta: VolumeMeta, mip: int) -> np.ndarray:
    f = np.array(meta.resolution[mip]) / np.array(meta.resolution[0])
    fi = np.round(f).astype(np.int64)
    if not np.allclose(f, fi) or (fi < 1).any():
        raise InvalidInputError(f"mip={mip}: resolution {meta.resolution[mip]} is not an integer multiple of "
                                f"mip 0's {meta.resolution[0]}; use a mip whose voxels tile mip 0's")
    return fi


def _chunk_boxes(meta: VolumeMeta, coords: np.ndarray, mip: int, f: np.ndarray) -> np.ndarray:
    """(K, 2, 3) voxel boxes at ``mip`` of graph chunks ``coords`` (K, 3), clipped to the volume.

    The mip-0 box [lo, hi) becomes [floor(lo / f), ceil(hi / f)): every mip voxel that covers a
    mip-0 voxel of the chunk (downsampling takes each label from inside its block)."""
    span = np.array(meta.graph_chunk)
    lo0 = coords * span + (np.array(meta.voxel_offset[0]) if meta.chunks_start_at_voxel_offset else 0)
    b0, bm = meta.bounds(0), meta.bounds(mip)
    lo0, hi0 = np.maximum(lo0, b0[0]), np.minimum(lo0 + span, b0[1])
    lo, hi = np.maximum(lo0 // f, bm[0]), np.minimum(-(-hi0 // f), bm[1])
    return np.stack([lo, hi], axis=1)


def _plan_tasks(meta: VolumeMeta, mip: int, coords: np.ndarray, boxes: np.ndarray, sv_chunk: np.ndarray):
    """Group graph chunks into read tasks: [(box (2, 3), indices into the supervoxels)].

    Chunks whose boxes start in the same storage chunk at ``mip`` share a task reading the union
    box, so a storage chunk holding several graph chunks (at mips > 0, graph chunks shrink) is
    decoded once. Each supervoxel lies in exactly one graph chunk, so no voxel is kept twice."""
    cs = np.array(meta.chunk_size[mip])
    tile = (boxes[:, 0] - meta.bounds(mip)[0]) // cs
    tiles, tile_of = np.unique(tile, axis=0, return_inverse=True)
    tile_of = tile_of.reshape(-1)
    lo = np.minimum(np.min(coords, axis=0, initial=0), np.min(sv_chunk, axis=0, initial=0))
    ch_key, sv_key = pack_coords(coords, lo), pack_coords(sv_chunk, lo)
    order = np.argsort(ch_key)
    pos = np.searchsorted(ch_key[order], sv_key)
    sv_tile = tile_of[order[np.clip(pos, 0, len(order) - 1)]]
    sv_tile[(pos >= len(order)) | (ch_key[order[np.clip(pos, 0, len(order) - 1)]] != sv_key)] = -1
    sv_order = np.argsort(sv_tile, kind="stable")
    starts = np.searchsorted(sv_tile[sv_order], np.arange(len(tiles)), side="left")
    ends = np.searchsorted(sv_tile[sv_order], np.arange(len(tiles)), side="right")
    out = []
    for t in range(len(tiles)):
        mine = boxes[tile_of == t]
        box = np.stack([mine[:, 0].min(axis=0), mine[:, 1].max(axis=0)])
        out.append((box, sv_order[starts[t]:ends[t]]))
    return out


def _x_slabs(boxes: np.ndarray) -> list[np.ndarray]:
    """Partition task boxes into groups with pairwise disjoint x ranges, in increasing x: each
    group's sorted voxels then follow the previous group's (x-major order needs no global sort)."""
    if not len(boxes):
        return []
    order = np.argsort(boxes[:, 0, 0], kind="stable")
    slabs, current, reach = [], [order[0]], boxes[order[0], 1, 0]
    for i in order[1:]:
        if boxes[i, 0, 0] < reach:
            current.append(i)
            reach = max(reach, boxes[i, 1, 0])
        else:
            slabs.append(np.array(current))
            current, reach = [i], boxes[i, 1, 0]
    slabs.append(np.array(current))
    return slabs


def _thin_lut(source, root: int, l2: np.ndarray, svs: np.ndarray):
    """(sorted root supervoxels, L2-node index of each, sorted joined-pair keys, node count)."""
    children = source.leaves_many(l2, stop_layer=1)
    sv_list, grp_list = [], []
    for i, node in enumerate(l2.tolist()):
        c = np.asarray(children.get(node, ()), dtype=np.uint64)
        sv_list.append(c)
        grp_list.append(np.full(len(c), i, np.int64))
    lut_svs = np.concatenate(sv_list + [np.zeros(0, np.uint64)])
    lut_grp = np.concatenate(grp_list + [np.zeros(0, np.int64)])
    orphans = np.setdiff1d(svs, lut_svs)  # under no L2 node (a skip connection): own node, no edges
    lut_svs = np.concatenate([lut_svs, orphans])
    lut_grp = np.concatenate([lut_grp, len(l2) + np.arange(len(orphans))])
    order = np.argsort(lut_svs)
    n = len(l2) + len(orphans)
    edges = np.asarray(source.l2_graph(root), dtype=np.uint64).reshape(-1, 2)
    ia, ib = np.searchsorted(l2, edges[:, 0]), np.searchsorted(l2, edges[:, 1])
    ok = (ia < len(l2)) & (ib < len(l2))
    ok[ok] &= (l2[ia[ok]] == edges[ok, 0]) & (l2[ib[ok]] == edges[ok, 1])
    ia, ib = ia[ok].astype(np.int64), ib[ok].astype(np.int64)
    joined = np.unique(np.minimum(ia, ib) * n + np.maximum(ia, ib))
    return lut_svs[order], lut_grp[order], joined, n


@dataclass(frozen=True)
class VoxelPlan:
    """What to read for one root's voxels at one mip (see ``plan_voxels``)."""

    spec: SourceSpec
    root: int
    mip: int
    box: np.ndarray | None  # the ``bounds`` as a voxel box at ``mip``, or None
    vol: np.ndarray  # (2, 3) the volume at ``mip``
    svs: np.ndarray  # sorted supervoxels of the root (inside the bounds' graph chunks)
    sv_chunk: np.ndarray  # graph chunk of each supervoxel
    coords: np.ndarray  # (K, 3) graph chunks to read
    boxes: np.ndarray  # (K, 2, 3) their voxel boxes at ``mip``, clipped to the bounds, non-empty
    thin: bool  # tasks read one voxel more around their boxes
    lut: tuple | None  # ``_thin_lut`` when thinning a root with supervoxels

    @property
    def key_origin(self) -> np.ndarray:
        return self.vol[0]

    @property
    def key_shape(self) -> np.ndarray:
        return self.vol[1] - self.vol[0]

    def read_box(self, b: np.ndarray) -> np.ndarray:
        """The box a task reads for ``b``: one voxel wider when thinning (clipped to the volume)."""
        if not self.thin:
            return b
        return np.stack([np.maximum(b[0] - 1, self.vol[0]), np.minimum(b[1] + 1, self.vol[1])])

    def cutout_box(self) -> np.ndarray:
        """The one box of cutout mode: the bounds, else the union of the chunk boxes."""
        if self.box is not None:
            return self.box
        return np.stack([self.boxes[:, 0].min(axis=0), self.boxes[:, 1].max(axis=0)])

    def tasks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """L2-chunk mode's read tasks (``_plan_tasks``)."""
        return _plan_tasks(open_source(self.spec).meta, self.mip, self.coords, self.boxes, self.sv_chunk)


def plan_voxels(spec: SourceSpec, x, mip: int, bounds, thin: bool) -> VoxelPlan:
    """Steps 1-3 of ``get_voxels`` for root ``x``: raises on a bad root, mip or bounds before any read."""
    source = open_source(spec)
    meta = source.meta
    root = _root_id(x, meta)  # 1. before anything touches voxels
    mip = meta.check_mip(mip)
    f = _mip_factor(meta, mip)
    box = None
    if bounds is not None:  # 2.
        box = voxel_box(as_bbox(bounds, name="bounds"), meta, mip)
        check_inside(box, meta, mip, problem="Requested bounds exceed volume limits",
                     advice="Clip `bounds` (nm, [[xmin, xmax], [ymin, ymax], [zmin, zmax]]) to the volume, "
                            "or pass bounds=None to cover the whole neuron.")
        check_nonempty(box, meta, mip, name="bounds")
    graph_box = None  # mip-0 box for the chunk-granular leaves queries (one voxel wider for thin)
    if box is not None:
        pad = 1 if thin else 0
        graph_box = np.clip(np.stack([(box[0] - pad) * f, (box[1] + pad) * f]), *meta.bounds(0)[:, None])
    l2 = np.sort(np.asarray(source.leaves(root, stop_layer=2, bounds=graph_box), dtype=np.uint64))  # 3.
    svs = np.sort(np.asarray(source.leaves(root, stop_layer=1, bounds=graph_box), dtype=np.uint64))
    layout = meta.layout
    sv_chunk = layout.chunk_coords(svs)
    coords = np.unique(np.concatenate([layout.chunk_coords(l2), sv_chunk]), axis=0)
    boxes = _chunk_boxes(meta, coords, mip, f)
    if box is not None:
        boxes = np.stack([np.maximum(boxes[:, 0], box[0]), np.minimum(boxes[:, 1], box[1])], axis=1)
    nonempty = np.all(boxes[:, 1] > boxes[:, 0], axis=1)
    lut = _thin_lut(source, root, l2, svs) if thin and len(svs) else None
    return VoxelPlan(spec, root, mip, box, meta.bounds(mip), svs, sv_chunk, coords[nonempty], boxes[nonempty],
                     bool(thin), lut)
