"""The job operations, each declared once: inputs, outputs, parameters and the kernel it runs.

A ``JobOperation`` says which input columns it reads (validated and normalised once, on the
driver), which output columns it writes (dtype, fill), its parameters (``Param``: name, type,
default, help; ``run_job``'s keywords and ``crantseg run``'s options are derived from them),
whether it reads roots at a timestamp, and how rows are grouped for locality. Its ``kernel``
adapts one partition's numpy columns to the operation's kernel in ``ops/`` (the same function
the eager and lazy calls run); jobs add no logic of their own.

Adding a parameter is one ``Param`` in the operation's ``params``; the kernel reads it with
``ctx.arg(name)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import numpy as np
import pandas as pd

from .._validate import as_ids, as_locations, check_layers
from ..errors import InvalidInputError
from ..ops._snap_kernel import STATUS, snap_kernel
from ..ops.locations import supervoxels_kernel
from ..ops.mapping import roots_kernel
from ..ops.updates import update_kernel
from ..ops.voxels import voxels_kernel
from ..sources import SourceSpec

__all__ = ["JobOperation", "Context", "Param", "OPERATIONS"]


@dataclass(frozen=True)
class Context:
    """What every partition task of a job receives (small and picklable)."""

    spec: SourceSpec
    timestamp: datetime | None
    args: tuple[tuple[str, object], ...] = ()

    def arg(self, name, default=None):
        return dict(self.args).get(name, default)


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


@dataclass(frozen=True)
class Param:
    """One parameter of a job operation: a keyword of ``run_job`` and an option of ``crantseg run``.

    ``type`` is bool, int, float or str; ``default`` None means "not set" (the kernel decides).
    """

    name: str
    type: type
    default: object
    help: str
    choices: tuple = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value, op: str):
        """``value`` if it fits the declared type (and choices); ``InvalidInputError`` naming it otherwise."""
        if value is None and self.default is None:
            return value
        t = self.type
        ok = (isinstance(value, (bool, np.bool_)) if t is bool
              else isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) if t is int
              else isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
              and math.isfinite(value) if t is float
              else isinstance(value, str))
        if not ok or (self.choices and value not in self.choices):
            want = f"one of {list(self.choices)}" if self.choices else _KINDS[t]
            raise InvalidInputError(f"{op}: {self.name}={value!r} must be {want}")
        return value


@dataclass(frozen=True)
class JobOperation:
    """One job operation (see the module docstring). ``kernel(inputs, ctx) -> outputs`` maps a
    partition's input columns to its output columns (ragged outputs as ``"ragged:<name>"``)."""

    name: str
    inputs: Callable[[pd.DataFrame, dict], dict[str, np.ndarray]]
    outputs: dict[str, tuple[str, object]]
    kernel: Callable[[dict[str, np.ndarray], Context], dict[str, np.ndarray]]
    params: tuple[Param, ...] = ()
    uses_timestamp: bool = False
    locality: str | None = "locations"  # rows grouped by storage chunk before partitioning
    check: Callable | None = None  # check(inputs, source): validation that needs the dataset
    ragged: tuple[str, ...] = ()  # outputs of varying length per row ("ragged:<name>" from the kernel)
    reads: str = ""  # the input columns, for help texts

    @property
    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def arguments(self, given: dict) -> dict:
        """Every parameter's value: ``given`` (checked against the declaration) over the defaults."""
        params = {p.name: p for p in self.params}
        if unknown := sorted(set(given) - set(params)):
            raise InvalidInputError(f"{self.name} takes no argument {', '.join(map(repr, unknown))}; its arguments: "
                                    f"{sorted(params)}")
        return {**self.defaults, **{k: params[k].check(v, self.name) for k, v in given.items()}}


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


def _update_inputs(df: pd.DataFrame, args: dict) -> dict[str, np.ndarray]:
    out = _column_ids("root_id", nan="zero")(df, args)
    sv = args.get("supervoxel_column", "supervoxel_id")
    if sv in df.columns:
        out["supervoxel_id"] = as_ids(df[sv], name=f"input[{sv!r}]", nan=args.get("nan", "zero"))
    return out


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


# -- kernels: the ops/ kernels on one partition's columns ---------------------------------------
def _xyz(inputs) -> np.ndarray:
    return np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1)


def _locs_to_supervoxels(inputs, ctx: Context):
    return {"supervoxel_id": supervoxels_kernel(_xyz(inputs), ctx.spec, int(ctx.arg("mip", 0)))}


def _locs_to_segments(inputs, ctx: Context):
    sv = supervoxels_kernel(_xyz(inputs), ctx.spec, 0)
    return {"supervoxel_id": sv, "root_id": roots_kernel(sv, ctx.spec, ctx.timestamp)}


def _supervoxels_to_roots(inputs, ctx: Context):
    return {"root_id": roots_kernel(inputs["supervoxel_id"], ctx.spec, ctx.timestamp,
                                    stop_layer=ctx.arg("stop_layer"))}


def _snap(inputs, ctx: Context):
    """Snap each row to its own target; the supervoxel at the snapped spot comes from the snap
    kernel (no second read), its root from ``roots_kernel``."""
    got = snap_kernel(_xyz(inputs), inputs["target_id"], ctx.spec, bool(ctx.arg("snap_zero", False)),
                      float(ctx.arg("search_radius", 160.0)))
    return {"snapped_x": got.xyz[:, 0], "snapped_y": got.xyz[:, 1], "snapped_z": got.xyz[:, 2],
            "distance_nm": got.distance, "status": got.status.astype(np.uint8), "supervoxel_id": got.supervoxel,
            "root_id": roots_kernel(got.supervoxel, ctx.spec, ctx.timestamp)}


def _update_ids(inputs, ctx: Context):
    old = inputs["root_id"]
    got = update_kernel(old, ctx.spec, ctx.timestamp, int(ctx.arg("stop_layer", 2)),
                        supervoxels=inputs.get("supervoxel_id"))
    return {"new_id": got["new_id"], "confidence": got["confidence"], "changed": got["new_id"] != old}


def _get_voxels(inputs, ctx: Context):
    """Ragged ``voxels`` (M, 3) uint32 and ``svids`` (M,) uint64 of each row's root, ``n_voxels`` per row."""
    parts, svs = [], []
    for root in inputs["root_id"].tolist():
        v, s = voxels_kernel(root, ctx.spec, mip=int(ctx.arg("mip", 0)), thin=bool(ctx.arg("thin", False)),
                             sv_map=True)
        parts.append(v), svs.append(s)
    return {"n_voxels": np.array([len(v) for v in parts], dtype=np.int64),
            "ragged:voxels": np.concatenate(parts) if parts else np.zeros((0, 3), np.uint32),
            "ragged:svids": np.concatenate(svs) if svs else np.zeros(0, np.uint64)}


# -- the declarations ---------------------------------------------------------------------------
COORDINATES = Param("coordinates", str, "nm", "units of x, y, z: nm or voxel (8x8x42 nm)")
MIP = Param("mip", int, 0, "the mip")
NAN = Param("nan", str, "zero", "missing IDs (NaN, empty) raise or become 0", choices=("raise", "zero"))
U64 = ("uint64", 0)
F64 = ("float64", float("nan"))
XYZ = "x, y, z"

OPERATIONS: dict[str, JobOperation] = {op.name: op for op in (
    JobOperation(
        "locs-to-supervoxels", _locations, {"supervoxel_id": U64}, _locs_to_supervoxels, reads=XYZ,
        params=(MIP, COORDINATES)),
    JobOperation(
        "locs-to-segments", _locations, {"supervoxel_id": U64, "root_id": U64}, _locs_to_segments, reads=XYZ,
        uses_timestamp=True, params=(COORDINATES,)),
    JobOperation(
        "snap", _snap_inputs,
        {"snapped_x": F64, "snapped_y": F64, "snapped_z": F64, "distance_nm": F64, "status": ("category", STATUS),
         "supervoxel_id": U64, "root_id": U64},
        _snap, uses_timestamp=True, check=_check_ids, reads=f"{XYZ} and the target ID column",
        params=(COORDINATES,
                Param("id_column", str, "target_id", "the column holding each row's target ID"),
                Param("search_radius", float, 160.0, "radius in nm"),
                Param("snap_zero", bool, False, "also snap rows on background or outside the volume"))),
    JobOperation(
        "update-ids", _update_inputs, {"new_id": U64, "confidence": F64, "changed": ("bool", False)},
        _update_ids, uses_timestamp=True, locality=None, check=_check_ids,
        reads="root_id (and the supervoxel column when present)",
        params=(Param("stop_layer", int, 2, "the layer compared in the overlap step"),
                Param("supervoxel_column", str, "supervoxel_id", "the column of a supervoxel per row"),
                NAN)),
    JobOperation(
        "get-voxels", _column_ids("root_id"), {"n_voxels": ("int64", -1)}, _get_voxels, locality=None,
        check=_check_roots, ragged=("voxels", "svids"), reads="root_id",
        params=(MIP, Param("thin", bool, False, "drop voxels at unjoined interfaces"))),
    JobOperation(
        "supervoxels-to-roots", _column_ids("supervoxel_id", nan="zero"), {"root_id": U64},
        _supervoxels_to_roots, uses_timestamp=True, locality=None, check=_check_ids, reads="supervoxel_id",
        params=(Param("stop_layer", int, None, "the layer of the IDs returned (default: roots)"), NAN)),
)}
