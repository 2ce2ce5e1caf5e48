"""Zarr v3 groups for batch jobs: one array per column, a done-mask, provenance, resume.

Layout of a job group (all arrays 1-D of length N rows, chunk length = partition size, so each
partition task owns whole chunks of every array)::

    row            int64   the input row each entry came from (rows are stored grouped by chunk)
    <inputs>       the input columns the operation needs (x, y, z in nm, target_id ...)
    <outputs>      one array per output column (supervoxel_id, root_id, snapped_x ... status)
    _done          uint8 (n_partitions,), chunk 1: written AFTER a partition's data

Attributes under ``crantseg``: package version, operation, arguments, resolved timestamp, dataset
(name and identity), input fingerprint, input column names, partition size, format. ``_done`` is
explicit because an all-zero output chunk is indistinguishable from an unwritten one. A killed worker or driver loses at most the partitions in
flight: ``resume`` reruns exactly those whose ``_done`` entry is 0, rewriting whole chunks.

Rows are stored grouped by storage chunk (for locality); ``read_output`` returns them in input
order. Plain zarr, xarray (``xr.open_zarr(path)``) and pandas (through ``read_output``) all open it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
import zarr.errors

from .errors import InvalidInputError

__all__ = ["JobStore", "fingerprint", "read_output", "read_ragged", "status"]

FORMAT = 2  # 2: input column names recorded, ragged pieces dimensioned and deleted once finalized


def fingerprint(columns: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes and bytes of the input columns."""
    h = hashlib.sha256()
    for name in sorted(columns):
        a = np.ascontiguousarray(columns[name])
        h.update(name.encode()), h.update(str(a.dtype).encode()), h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class JobStore:
    """A job's Zarr group, opened for writing partitions."""

    path: str

    @property
    def group(self) -> zarr.Group:
        return zarr.open_group(self.path, mode="r+")

    @property
    def attrs(self) -> dict:
        try:
            g = zarr.open_group(self.path, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise InvalidInputError(f"{self.path} is not a crantseg job (no Zarr group there)") from None
        if "crantseg" not in g.attrs:  # zarr.json is written before the attributes: creation was cut short
            raise InvalidInputError(f"{self.path} holds an incomplete job (created but never finished being set "
                                    "up); rerun with --force")
        return dict(g.attrs["crantseg"])

    @classmethod
    def create(cls, path: str, *, inputs: dict[str, np.ndarray], outputs: dict[str, tuple[str, object]],
               partition_size: int, attrs: dict) -> "JobStore":
        """Create the group: write the inputs, allocate the outputs and an all-zero ``_done``."""
        n = len(next(iter(inputs.values())))
        chunk = max(1, min(partition_size, max(n, 1)))
        n_parts = -(-n // chunk)
        g = zarr.open_group(path, mode="w")
        for name, a in inputs.items():
            arr = g.create_array(name, shape=(n,), chunks=(chunk,), dtype=a.dtype, dimension_names=("row",),
                                 fill_value=0)
            if n:
                arr[:] = a
        for name, (dtype, fill) in outputs.items():
            g.create_array(name, shape=(n,), chunks=(chunk,), dtype=dtype, dimension_names=("row",),
                           fill_value=fill)
        g.create_array("_done", shape=(n_parts,), chunks=(1,), dtype="uint8", dimension_names=("partition",),
                       fill_value=0)
        g.attrs["crantseg"] = {**attrs, "format": FORMAT, "n_rows": n, "partition_size": chunk,
                               "n_partitions": n_parts, "inputs": sorted(inputs), "outputs": sorted(outputs)}
        return cls(path)

    def partition(self, i: int) -> slice:
        a = self.attrs
        return slice(i * a["partition_size"], min((i + 1) * a["partition_size"], a["n_rows"]))

    def input_names(self) -> list[str]:
        """The input columns the operation reads (``row`` excluded)."""
        return [n for n in self.attrs["inputs"] if n != "row"]

    def read(self, names, i: int) -> dict[str, np.ndarray]:
        g, sl = zarr.open_group(self.path, mode="r"), self.partition(i)
        return {name: np.asarray(g[name][sl]) for name in names}

    def write(self, i: int, columns: dict[str, np.ndarray]) -> None:
        """Write partition ``i``'s outputs, then mark it done (the order matters for resume).

        ``ragged:<name>`` entries (any length) go to their own array ``_ragged_<name>_<i>`` (with
        dimension names of its own, so xarray opens an unfinished group too)."""
        g, sl = self.group, self.partition(i)
        for name, a in columns.items():
            if name.startswith("ragged:"):
                piece = f"_ragged_{name[7:]}_{i:06d}"
                a = np.asarray(a)
                g.create_array(piece, data=a, overwrite=True,
                               dimension_names=tuple(f"{piece}_axis{k}" for k in range(a.ndim)))
            else:
                g[name][sl] = a
        g["_done"][i] = 1

    def finalize_ragged(self, names, count_column: str) -> None:
        """Concatenate the partitions' ragged pieces into ``<name>`` arrays (rows in stored order)
        plus ``offsets`` (n_rows + 1): row k's entries are ``<name>[offsets[k]:offsets[k + 1]]``.
        The pieces are deleted once every ``<name>`` is written (not before: a driver killed in
        between finalizes again on resume)."""
        g = self.group
        n_parts = self.attrs["n_partitions"]
        counts = np.asarray(g[count_column][:], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(counts)]
        g.create_array("offsets", data=offsets, overwrite=True, dimension_names=("row_edge",))
        for name in names:
            parts = [np.asarray(g[f"_ragged_{name}_{i:06d}"][:]) for i in range(n_parts)]
            data = np.concatenate(parts)
            dims = ("item",) + tuple(f"{name}_axis{k}" for k in range(1, data.ndim))
            g.create_array(name, data=data, overwrite=True, dimension_names=dims)
        for name in names:
            for i in range(n_parts):
                del g[f"_ragged_{name}_{i:06d}"]

    def is_finalized(self, names) -> bool:
        """Whether ``finalize_ragged(names)`` has run to the end (its pieces are gone)."""
        keys = set(zarr.open_group(self.path, mode="r").array_keys())
        pieces_left = any(k.startswith("_ragged_") for k in keys)
        return "offsets" in keys and all(n in keys for n in names) and not pieces_left

    def done(self) -> np.ndarray:
        return np.asarray(zarr.open_group(self.path, mode="r")["_done"][:]).astype(bool)


def status(path: str) -> dict:
    """Progress of a job group: partitions done / total, rows, operation, timestamp."""
    store = JobStore(str(path))
    a, done = store.attrs, store.done()
    return {"operation": a["operation"], "dataset": a["dataset"], "timestamp": a.get("timestamp"),
            "partitions_done": int(done.sum()), "partitions": int(done.size), "rows": a["n_rows"],
            "complete": bool(done.all())}


def read_output(path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A job's columns as a DataFrame in input row order (index = input row)."""
    g = zarr.open_group(str(path), mode="r")
    a = dict(g.attrs["crantseg"])
    if not np.asarray(g["_done"][:]).all():
        raise InvalidInputError(f"job {path} is not complete ({status(path)['partitions_done']} of "
                                f"{a['n_partitions']} partitions); finish it with `crantseg run ... --resume`")
    names = columns or sorted(n for n in g.array_keys()
                              if not n.startswith("_") and n != "row" and g[n].shape == (a["n_rows"],))
    df = pd.DataFrame({n: np.asarray(g[n][:]) for n in names}, index=pd.Index(np.asarray(g["row"][:]), name="row"))
    return df.sort_index()


def read_ragged(path: str, name: str) -> dict[int, np.ndarray]:
    """A ragged output (e.g. get-voxels' ``voxels``) as {input row: array}."""
    g = zarr.open_group(str(path), mode="r")
    if name not in g or "offsets" not in g:
        raise InvalidInputError(f"job {path} has no ragged output {name!r} (is it complete?)")
    offsets, data = np.asarray(g["offsets"][:]), np.asarray(g[name][:])
    rows = np.asarray(g["row"][:])
    return {int(r): data[offsets[k]: offsets[k + 1]] for k, r in enumerate(rows.tolist())}


def canonical(obj) -> str:
    """Deterministic JSON used to compare job arguments on resume."""
    return json.dumps(obj, sort_keys=True, default=str)
