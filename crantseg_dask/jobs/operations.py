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

from .._validate import as_ids, as_locations, check_layers
from ..errors import InvalidInputError
from ..ops.mapping import roots_kernel
from ..ops._snap_kernel import STATUS
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
    check: Callable | None = None  # check(inputs, source): validation that needs the dataset
    ragged: tuple[str, ...] = ()  # outputs of varying length per row ("ragged:<name>" from the kernel)


# -- inputs -------------------------------------------------------------------------------------
def _locations(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    locs = as_locations(df, coordinates=args.get("coordinates", "nm"), name="input")
    return {"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2]}


def _column_ids(column: str, *, nan: str = "raise"):
    def read(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
        if column not in df.columns:
            raise InvalidInputError(f"input table has no {column!r} column (columns: {list(df.columns)})")
        return {column: as_ids(df[column], name=f"input[{column!r}]", nan=args.get("nan", nan))}
    return read


def _snap_inputs(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    col = args.get("id_column", "target_id")
    targets = _column_ids(col)(df, args)[col]
    if (targets == 0).any():
        rows = np.flatnonzero(targets == 0)
        raise InvalidInputError(f"input[{col!r}] is 0 in {len(rows)} rows (first: row {rows[0]}): every row needs "
                                "the root or supervoxel to snap to; drop those rows or fill them")
    return {**_locations(df, args), "target_id": targets}


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


def _snap(inputs, ctx: Context):
    """Snap each row to its own target, then look up the supervoxel and root at the snapped spot."""
    from ..ops.snapping import _snap_arrays

    locs = np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1)
    snapped, dist, status = _snap_arrays(locs, inputs["target_id"], ctx.spec, bool(ctx.arg("snap_zero", False)),
                                         float(ctx.arg("search_radius", 160.0)))
    source = open_source(ctx.spec)
    res = np.asarray(source.meta.resolution[0])
    sv = source.supervoxels_at(np.floor(snapped / res).astype(np.int64), 0)
    return {"snapped_x": snapped[:, 0], "snapped_y": snapped[:, 1], "snapped_z": snapped[:, 2],
            "distance_nm": dist, "status": status.astype(np.uint8), "supervoxel_id": sv,
            "root_id": roots_kernel(sv, ctx.spec, ctx.timestamp)}


def _update_inputs(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    out = _column_ids("root_id", nan="zero")(df, args)
    sv = args.get("supervoxel_column", "supervoxel_id")
    if sv in df.columns:
        out["supervoxel_id"] = as_ids(df[sv], name=f"input[{sv!r}]", nan=args.get("nan", "zero"))
    return out


def _update_ids(inputs, ctx: Context):
    """update_ids on one partition (as ``crantseg_dask.update_ids``): current roots pass through
    (confidence 1); outdated rows with a supervoxel take its root at the timestamp (confidence 1);
    the others the current root holding most of their layer-``stop_layer`` nodes (confidence =
    that share); IDs that are not roots keep their ID with confidence 0."""
    from ..ops.updates import is_latest_kernel, overlap_kernel

    old = inputs["root_id"]
    layout = open_source(ctx.spec).meta.layout
    new, conf = old.copy(), np.zeros(len(old))
    good = (old != 0) & (layout.layer(old) == layout.n_layers)
    latest = good & is_latest_kernel(old, ctx.spec, ctx.timestamp)
    conf[latest] = 1.0
    pending = good & ~latest
    sv = inputs.get("supervoxel_id")
    if sv is not None and (pending & (sv != 0)).any():
        rows = np.flatnonzero(pending & (sv != 0))
        by_sv = roots_kernel(sv[rows], ctx.spec, ctx.timestamp)
        rows, by_sv = rows[by_sv != 0], by_sv[by_sv != 0]
        new[rows], conf[rows] = by_sv, 1.0
        pending[rows] = False
    if pending.any():
        stale, at = np.unique(old[pending], return_inverse=True)
        best = overlap_kernel(stale, ctx.spec, ctx.timestamp, int(ctx.arg("stop_layer", 2)))
        new[pending], conf[pending] = best["new_id"][at], best["confidence"][at]
    return {"new_id": new, "confidence": conf, "changed": new != old}


def _get_voxels(inputs, ctx: Context):
    """The voxels of each row's root (whole root, at ``mip``): ragged ``voxels`` (M, 3) uint32 and
    ``svids`` (M,) uint64, with ``n_voxels`` per row. Computed inside the task (no nested graph)."""
    import dask

    from ..ops.voxels import get_voxels

    parts, svs, counts = [], [], []
    with dask.config.set(scheduler="sync"):
        for root in inputs["root_id"].tolist():
            v, s = get_voxels(root, mip=int(ctx.arg("mip", 0)), sv_map=True, thin=bool(ctx.arg("thin", False)),
                              progress=False, dataset=ctx.spec)
            parts.append(v), svs.append(s), counts.append(len(v))
    return {"n_voxels": np.array(counts, dtype=np.int64),
            "ragged:voxels": np.concatenate(parts) if parts else np.zeros((0, 3), np.uint32),
            "ragged:svids": np.concatenate(svs) if svs else np.zeros(0, np.uint64)}


def _check_ids(inputs: dict[str, np.ndarray], source) -> None:
    """Every ID column's layer bits must be possible in this dataset (0 passes)."""
    for name in ("supervoxel_id", "root_id", "target_id"):
        if name in inputs:
            check_layers(inputs[name], source.meta.layout, name=f"input[{name!r}]")


def _check_roots(inputs: dict[str, np.ndarray], source) -> None:
    _check_ids(inputs, source)
    layout = source.meta.layout
    bad = layout.layer(inputs["root_id"]) != layout.n_layers
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInputError(f"input['root_id'][{row}] = {inputs['root_id'][row]} is not a valid root ID "
                                f"({int(bad.sum())} rows are not roots)")


U64 = ("uint64", 0)
F64 = ("float64", float("nan"))
OPERATIONS: dict[str, JobOperation] = {
    "locs-to-supervoxels": JobOperation(
        "locs-to-supervoxels", _locations, {"supervoxel_id": U64}, _locs_to_supervoxels,
        defaults={"mip": 0, "coordinates": "nm"}),
    "locs-to-segments": JobOperation(
        "locs-to-segments", _locations, {"supervoxel_id": U64, "root_id": U64}, _locs_to_segments,
        uses_timestamp=True, defaults={"coordinates": "nm"}),
    "snap": JobOperation(
        "snap", _snap_inputs,
        {"snapped_x": F64, "snapped_y": F64, "snapped_z": F64, "distance_nm": F64, "status": ("category", STATUS),
         "supervoxel_id": U64, "root_id": U64},
        _snap, uses_timestamp=True, check=_check_ids,
        defaults={"coordinates": "nm", "id_column": "target_id", "search_radius": 160.0, "snap_zero": False}),
    "update-ids": JobOperation(
        "update-ids", _update_inputs, {"new_id": U64, "confidence": F64, "changed": ("bool", False)},
        _update_ids, uses_timestamp=True, locality=None, check=_check_ids,
        defaults={"stop_layer": 2, "supervoxel_column": "supervoxel_id", "nan": "zero"}),
    "get-voxels": JobOperation(
        "get-voxels", _column_ids("root_id"), {"n_voxels": ("int64", -1)}, _get_voxels, locality=None,
        check=_check_roots, ragged=("voxels", "svids"), defaults={"mip": 0, "thin": False}),
    "supervoxels-to-roots": JobOperation(
        "supervoxels-to-roots", _column_ids("supervoxel_id", nan="zero"), {"root_id": U64},
        _supervoxels_to_roots, uses_timestamp=True, locality=None, check=_check_ids,
        defaults={"stop_layer": None, "nan": "zero"}),
}
