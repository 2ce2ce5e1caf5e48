"""On-disk layout of an embedded dataset, its parameters and presets.

A dataset directory written by ``crantseg make-dataset`` holds::

    dataset.json              parameters, the graph section of the graphene info, counts
    segmentation/             precomputed supervoxel layer (cloud-volume, file://), mips 0..n
    history/                  the recorded world: supervoxels, contacts, edit log (the truth's input)
        supervoxels.npy         sorted layer-1 IDs
        sv_fragment.npy         fragment of each supervoxel (int32)
        sv_neuron.npy           neuron of each supervoxel (int32)
        contacts.npy            (K, 2) uint64 spatially adjacent supervoxel pairs (a < b)
        contact_area.npy        (K,) int64 voxel faces shared by each pair
        edits.json              ingest time, initial objects, operations, materialization versions
    graph/                    the chunked graph derived from history (what sources serve)
        node_ids.npy, node_created_ms.npy, children_ptr.npy, children.npy
        parent_child.npy, parent_ms.npy, parent_id.npy

Every file is written deterministically: the same parameters and seed give byte-identical files.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["DatasetParams", "PRESETS", "GENERATOR_VERSION", "is_dataset_dir", "read_params", "load_json"]

GENERATOR_VERSION = 3  # 2: layer >= 4 chunk coordinates follow the PyChunkedGraph rule; 3: dense world


@dataclass(frozen=True)
class DatasetParams:
    """Everything that determines a generated dataset (with the generator version)."""

    seed: int = 0
    size: tuple[int, int, int] = (304, 288, 72)          # mip-0 voxels (ragged edges on x, z)
    voxel_offset: tuple[int, int, int] = (96, 160, 8)    # mip-0 voxels
    resolution: tuple[int, int, int] = (16, 16, 42)      # nm at mip 0
    viewer_resolution: tuple[int, int, int] = (8, 8, 42)
    graph_chunk: tuple[int, int, int] = (64, 64, 16)     # L1/L2 chunk, mip-0 voxels
    storage_chunk: tuple[int, int, int] = (32, 32, 16)   # precomputed chunk at every mip
    n_mips: int = 3                                      # mips 0..n_mips-1, 2x2x1 steps
    n_layers: int = 8
    n_neurons: int = 12
    radius_nm: tuple[float, float] = (55.0, 90.0)        # neurite radius range
    step_nm: float = 180.0                               # skeleton segment length
    branch_length_nm: float = 3000.0                     # mean branch length
    n_edits: int = 36
    dense: bool = True                                   # fill the tissue with watershed-like cells
    cell_size: tuple[int, int, int] = (20, 20, 8)        # Voronoi seed spacing, mip-0 voxels
    large_cell_share: float = 0.2                        # share of 3x3x3 seed blocks joined into one cell
    datastack: str = "crantseg_local"
    name: str = "custom"

    def __post_init__(self) -> None:
        for g, s, axis in zip(self.graph_chunk, self.storage_chunk, "xyz"):
            if g % s:
                raise DatasetError(f"storage chunk {self.storage_chunk} must divide graph chunk {self.graph_chunk} ({axis})")
        if any(c % (2 * k) for c, k in zip(self.cell_size, (2, 2, 1))):
            raise DatasetError(f"cell_size {self.cell_size} must be multiples of (4, 4, 2) voxels")
        if min(self.size) < 1:
            raise DatasetError(f"size must be positive, got {self.size}")

    @property
    def table(self) -> str:
        return f"{self.datastack}_v1"

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "DatasetParams":
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**kw)

    def with_(self, **kw) -> "DatasetParams":
        return replace(self, **kw)


PRESETS: dict[str, DatasetParams] = {
    # unit tests: a few seconds to generate, ragged edges, storage chunks smaller than graph chunks
    "tiny": DatasetParams(name="tiny"),
    # the demo / benchmark world: 2048 x 2048 x 256 voxels, 16 x 16 x 8 graph chunks
    "demo": DatasetParams(
        name="demo",
        size=(2048, 2048, 256),
        voxel_offset=(1024, 512, 128),
        graph_chunk=(128, 128, 32),
        storage_chunk=(128, 128, 32),
        n_neurons=60,
        radius_nm=(70.0, 140.0),
        step_nm=400.0,
        branch_length_nm=9000.0,
        n_edits=90,
    ),
}


def is_dataset_dir(path) -> bool:
    p = Path(path)
    return (p / "dataset.json").is_file() and (p / "segmentation" / "info").is_file()


def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_params(path) -> DatasetParams:
    p = Path(path)
    if not is_dataset_dir(p):
        raise DatasetError(
            f"{str(p)!r} is not a crantseg dataset (no dataset.json and segmentation/info); "
            "make one with `crantseg make-dataset --out DIR`"
        )
    return DatasetParams.from_json(load_json(p / "dataset.json")["params"])


def write_json(path, obj) -> None:
    """Deterministic JSON (sorted keys, fixed separators)."""
    Path(path).write_text(json.dumps(obj, sort_keys=True, indent=1, default=json_default) + "\n")


def json_default(o):
    """``json.dumps`` ``default=`` for numpy scalars and arrays."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
