"""Geometry of a segmentation volume and its chunked graph (``VolumeMeta``).

Its own module so the chunk readers (``_chunks``) and the source interface (``base``) both stand
on it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .._ids import IDLayout
from ..errors import InvalidInputError

__all__ = ["VolumeMeta"]


@dataclass(frozen=True)
class VolumeMeta:
    """Geometry of the supervoxel volume and the chunked graph.

    Per-mip tuples are indexed by mip. Voxel boxes are half-open [lo, hi) in absolute voxels.
    """

    layout: IDLayout
    resolution: tuple[tuple[float, float, float], ...]   # nm per voxel, per mip
    voxel_offset: tuple[tuple[int, int, int], ...]
    size: tuple[tuple[int, int, int], ...]
    chunk_size: tuple[tuple[int, int, int], ...]          # storage chunk, per mip
    encoding: tuple[str, ...]
    graph_chunk: tuple[int, int, int]                     # mip-0 voxels
    viewer_resolution: tuple[float, float, float] = (8.0, 8.0, 42.0)
    chunks_start_at_voxel_offset: bool = True
    cseg_block_size: tuple[tuple[int, int, int], ...] = ()
    keys: tuple[str, ...] = ()
    sharded: tuple[bool, ...] = ()

    @property
    def n_layers(self) -> int:
        return self.layout.n_layers

    @property
    def mips(self) -> range:
        return range(len(self.resolution))

    def check_mip(self, mip: int) -> int:
        if not isinstance(mip, (int, np.integer)) or isinstance(mip, bool) or not 0 <= mip < len(self.resolution):
            raise InvalidInputError(f"mip={mip!r} is not available; this volume has mips 0..{len(self.resolution) - 1}")
        return int(mip)

    def bounds(self, mip: int = 0) -> np.ndarray:
        """(2, 3) int64 [[lo], [hi]) voxel box of the volume at ``mip``."""
        lo = np.array(self.voxel_offset[mip], dtype=np.int64)
        return np.stack([lo, lo + np.array(self.size[mip], dtype=np.int64)])

    def bounds_nm(self, mip: int = 0) -> np.ndarray:
        return self.bounds(mip) * np.array(self.resolution[mip])

    def graph_chunk_of(self, voxels0: np.ndarray) -> np.ndarray:
        """Graph (L1/L2) chunk coordinates of absolute mip-0 voxels, (N, 3) int64."""
        v = np.asarray(voxels0, dtype=np.int64)
        if self.chunks_start_at_voxel_offset:
            v = v - np.array(self.voxel_offset[0])
        return v // np.array(self.graph_chunk)

    def graph_chunk_box(self, chunk: np.ndarray, layer: int = 2) -> np.ndarray:
        """(2, 3) mip-0 voxel box of a layer-``layer`` chunk (clipped to the volume)."""
        scale = 2 ** max(layer - 2, 0)
        span = np.array(self.graph_chunk) * scale
        lo = np.asarray(chunk, dtype=np.int64) * span
        if self.chunks_start_at_voxel_offset:
            lo = lo + np.array(self.voxel_offset[0])
        b = self.bounds(0)
        return np.stack([np.maximum(lo, b[0]), np.minimum(lo + span, b[1])])

    @classmethod
    def from_info(cls, info: Mapping, graph: Mapping | None = None, *, viewer_resolution=(8, 8, 42),
                  chunks_start_at_voxel_offset: bool | None = None) -> "VolumeMeta":
        """From a precomputed (or graphene) info; ``graph`` defaults to ``info["graph"]``."""
        graph = graph if graph is not None else info["graph"]
        scales = info["scales"]
        if chunks_start_at_voxel_offset is None:
            chunks_start_at_voxel_offset = bool(info.get("chunks_start_at_voxel_offset", False))
        return cls(
            layout=IDLayout.from_graph_info(graph),
            resolution=tuple(tuple(float(r) for r in s["resolution"]) for s in scales),
            voxel_offset=tuple(tuple(int(v) for v in s["voxel_offset"]) for s in scales),
            size=tuple(tuple(int(v) for v in s["size"]) for s in scales),
            chunk_size=tuple(tuple(int(v) for v in s["chunk_sizes"][0]) for s in scales),
            encoding=tuple(s["encoding"] for s in scales),
            graph_chunk=tuple(int(v) for v in graph["chunk_size"]),
            viewer_resolution=tuple(float(v) for v in viewer_resolution),
            chunks_start_at_voxel_offset=chunks_start_at_voxel_offset,
            cseg_block_size=tuple(tuple(s.get("compressed_segmentation_block_size", (8, 8, 8))) for s in scales),
            keys=tuple(s["key"] for s in scales),
            sharded=tuple(bool(s.get("sharding")) for s in scales),
        )
