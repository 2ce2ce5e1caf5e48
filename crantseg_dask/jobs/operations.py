"""What each job operation reads, writes and computes per partition.

An operation is a small record: the input columns it needs (validated and normalised once, on the
driver), the output columns (dtype, fill), whether it takes a timestamp, how rows are grouped for
locality, and a per-partition ``kernel(inputs, ctx) -> outputs`` over plain numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import numpy as np
import pandas as pd

from .._validate import as_ids, as_locations
from ..errors import InvalidInputError
from ..ops.mapping import roots_kernel
from ..sources import SourceSpec, open_source

__all__ = ["JobOperation", "Context", "OPERATIONS"]


@dataclass(frozen=True)
class Context:
    """What every partition task of a job receives (small and picklable)."""

    spec: SourceSpec
    timestamp: datetime | None
    args: tuple[tuple[str, object], ...] = ()

    def arg(self, name, default=None):
        return dict(self.args).get(name, default)


@dataclass(frozen=True)
class JobOperation:
    name: str
    inputs: Callable[[pd.DataFrame, dict], dict[str, np.ndarray]]
    outputs: dict[str, tuple[str, object]]
    kernel: Callable[[dict[str, np.ndarray], Context], dict[str, np.ndarray]]
    uses_timestamp: bool = False
    locality: str | None = "locations"  # rows grouped by storage chunk before partitioning
    defaults: dict = field(default_factory=dict)


# -- inputs -------------------------------------------------------------------------------------
def _locations(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    locs = as_locations(df, coordinates=args.get("coordinates", "nm"), name="input")
    return {"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2]}


def _column_ids(column: str, *, nan: str = "raise"):
    def read(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
        if column not in df.columns:
            raise InvalidInputError(f"input table has no {column!r} column (columns: {list(df.columns)})")
        return {column: as_ids(df[column], name=f"input[{column!r}]", nan=nan)}
    return read


def _snap_inputs(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    col = args.get("id_column", "target_id")
    return {**_locations(df, args), **{"target_id": _column_ids(col)(df, args)[col]}}


# -- kernels ------------------------------------------------------------------------------------
def _voxels(inputs, ctx: Context, mip: int) -> np.ndarray:
    res = np.asarray(open_source(ctx.spec).meta.resolution[mip])
    locs = np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1)
    return np.floor(locs / res).astype(np.int64)


def _locs_to_supervoxels(inputs, ctx: Context):
    mip = int(ctx.arg("mip", 0))
    return {"supervoxel_id": open_source(ctx.spec).supervoxels_at(_voxels(inputs, ctx, mip), mip)}


def _locs_to_segments(inputs, ctx: Context):
    sv = open_source(ctx.spec).supervoxels_at(_voxels(inputs, ctx, 0), 0)
    return {"supervoxel_id": sv, "root_id": roots_kernel(sv, ctx.spec, ctx.timestamp)}


def _supervoxels_to_roots(inputs, ctx: Context):
    return {"root_id": roots_kernel(inputs["supervoxel_id"], ctx.spec, ctx.timestamp,
                                    stop_layer=ctx.arg("stop_layer"))}


U64 = ("uint64", 0)
OPERATIONS: dict[str, JobOperation] = {
    "locs-to-supervoxels": JobOperation(
        "locs-to-supervoxels", _locations, {"supervoxel_id": U64}, _locs_to_supervoxels,
        defaults={"mip": 0, "coordinates": "nm"}),
    "locs-to-segments": JobOperation(
        "locs-to-segments", _locations, {"supervoxel_id": U64, "root_id": U64}, _locs_to_segments,
        uses_timestamp=True, defaults={"coordinates": "nm"}),
    "supervoxels-to-roots": JobOperation(
        "supervoxels-to-roots", _column_ids("supervoxel_id", nan="zero"), {"root_id": U64},
        _supervoxels_to_roots, uses_timestamp=True, locality=None, defaults={"stop_layer": None}),
}
