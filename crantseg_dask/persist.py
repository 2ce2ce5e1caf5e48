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

Every chunk is written (also all-fill ones) and carries a crc32c checksum (Zarr v3 ``crc32c``
codec after ``zstd``), so a missing, truncated or altered chunk is detected: ``verify`` reads every
chunk and names the damaged partitions; ``read_output`` refuses a damaged store naming the
partition; ``run_job(resume=True)`` reruns partitions whose outputs are damaged.

Rows are stored grouped by storage chunk (for locality); ``read_output`` returns them in input
order. Plain zarr, xarray (``xr.open_zarr(path)``) and pandas (through ``read_output``) all open it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
import zarr.errors

from zarr.codecs import Crc32cCodec, ZstdCodec

from .errors import InvalidInputError, JobStoreError

__all__ = ["JobStore", "fingerprint", "read_output", "read_ragged", "status", "verify"]

# 4: every input column kept (text, categoricals), status as names; 3: crc32c on every chunk, every
# chunk written; 2: input names recorded, ragged pieces
FORMAT = 4
CODECS = {"compressors": (ZstdCodec(level=0), Crc32cCodec())}
WRITE_ALL = {"array.write_empty_chunks": True}  # an all-fill chunk is stored too: missing = damaged
#: uint64 output columns of which each partition's smallest and largest non-zero value is kept in
#: ``_range_<name>`` (entries 2i, 2i + 1; written with the partition, before its ``_done``): refresh
#: reads only the chunks whose range can hold an expired root
INDEXED = ("root_id",)


def value_range(values: np.ndarray) -> np.ndarray:
    """[smallest, largest] non-zero value of a uint64 array; [2**64 - 1, 0] when it has none."""
    v = np.asarray(values, dtype=np.uint64)
    nz = v[v != 0]
    if not len(nz):
        return np.array([np.iinfo(np.uint64).max, 0], np.uint64)
    return np.array([nz.min(), nz.max()], np.uint64)


def _open(path: str, mode: str) -> zarr.Group:
    """The job's group; a damaged or unreadable ``zarr.json`` is one clear line naming the file."""
    try:
        return zarr.open_group(path, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise InvalidInputError(f"{path} is not a crantseg job (no Zarr group there)") from None
    except PermissionError as e:
        raise JobStoreError(f"{path}: cannot open the job's store: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, OSError) as e:  # JSONDecodeError is a ValueError
        raise JobStoreError(f"{path}/zarr.json is damaged ({type(e).__name__}: {e}); the job's metadata "
                            "cannot be read: rerun with --force") from None


def fingerprint(columns: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes and bytes of the input columns."""
    h = hashlib.sha256()
    for name in sorted(columns):
        a = np.asarray(columns[name])
        if a.dtype.kind in "OTU":  # text: the strings, not the object pointers
            h.update(name.encode()), h.update(b"text"), h.update("\x1f".join(map(str, a.tolist())).encode())
        else:
            a = np.ascontiguousarray(a)
            h.update(name.encode()), h.update(str(a.dtype).encode()), h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class JobStore:
    """A job's Zarr group, opened for writing partitions."""

    path: str

    @property
    def group(self) -> zarr.Group:
        return _open(self.path, "r+")

    @property
    def attrs(self) -> dict:
        g = _open(self.path, "r")
        if "crantseg" not in g.attrs:  # zarr.json is written before the attributes: creation was cut short
            raise InvalidInputError(f"{self.path} holds an incomplete job (created but never finished being set "
                                    "up); rerun with --force")
        return dict(g.attrs["crantseg"])

    @classmethod
    def create(cls, path: str, *, inputs: dict[str, np.ndarray], outputs: dict[str, tuple[str, object]],
               partition_size: int, attrs: dict, array_attrs: dict[str, dict] | None = None,
               input_map: dict[str, str] | None = None) -> "JobStore":
        """Create the group: write the inputs, allocate the outputs and an all-zero ``_done``.

        ``outputs`` maps name -> (dtype, fill); ``("category", categories)`` is a text column of
        those names (``categories`` attribute; partitions may write the integer codes).
        ``input_map``: the operation's input name -> stored array (default: the same name)."""
        array_attrs = dict(array_attrs or {})
        n = len(next(iter(inputs.values())))
        chunk = max(1, min(partition_size, max(n, 1)))
        n_parts = -(-n // chunk)
        with zarr.config.set(WRITE_ALL):
            g = zarr.open_group(path, mode="w")
            for name, a in inputs.items():
                text = a.dtype.kind in "OTU"
                arr = g.create_array(name, shape=(n,), chunks=(chunk,), dtype=str if text else a.dtype,
                                     dimension_names=("row",), fill_value="" if text else _zero(a.dtype), **CODECS)
                if name in array_attrs:
                    arr.attrs.update(array_attrs[name])
                if n:
                    arr[:] = a
            for name, (dtype, fill) in outputs.items():
                if dtype == "category":
                    arr = g.create_array(name, shape=(n,), chunks=(chunk,), dtype=str, dimension_names=("row",),
                                         fill_value="", **CODECS)
                    arr.attrs["categories"] = list(fill)
                    continue
                g.create_array(name, shape=(n,), chunks=(chunk,), dtype=dtype, dimension_names=("row",),
                               fill_value=fill, **CODECS)
            for name in INDEXED:
                if name in outputs and outputs[name][0] in ("uint64", np.uint64, np.dtype(np.uint64)):
                    g.create_array(f"_range_{name}", shape=(2 * n_parts,), chunks=(2,), dtype="uint64",
                                   dimension_names=("partition_range",), fill_value=0, **CODECS)
            done = g.create_array("_done", shape=(n_parts,), chunks=(1,), dtype="uint8",
                                  dimension_names=("partition",), fill_value=0, **CODECS)
            done[:] = 0
        g.attrs["crantseg"] = {**attrs, "format": FORMAT, "n_rows": n, "partition_size": chunk,
                               "n_partitions": n_parts, "inputs": sorted(inputs), "outputs": sorted(outputs),
                               "input_map": dict(input_map or {k: k for k in inputs if k != "row"}),
                               "columns": [k for k in inputs if k != "row" and not k.startswith("_")]}
        return cls(path)

    def partition(self, i: int) -> slice:
        a = self.attrs
        return slice(i * a["partition_size"], min((i + 1) * a["partition_size"], a["n_rows"]))

    def input_names(self) -> list[str]:
        """The input columns the operation reads (``row`` excluded)."""
        return [n for n in self.attrs["inputs"] if n != "row"]

    def read_inputs(self, i: int) -> dict[str, np.ndarray]:
        """Partition ``i`` of the operation's inputs, under the operation's names."""
        a = self.attrs
        mapping = a.get("input_map") or {n: n for n in a["inputs"] if n != "row"}
        stored = self.read(list(dict.fromkeys(mapping.values())), i)
        return {key: stored[name] for key, name in mapping.items()}

    def read(self, names, i: int) -> dict[str, np.ndarray]:
        """Partition ``i`` of the input columns ``names``; a missing or damaged chunk is an error
        naming the file and partition (never read as zeros)."""
        g, sl = _open(self.path, "r"), self.partition(i)
        out = {}
        for name in names:
            problem = chunk_problem(g, self.path, name, i)
            if problem:
                raise JobStoreError(f"{problem}: input column {name!r} of partition {i} is damaged; it cannot be "
                                    "recomputed from the store: rerun with --resume and the same --input "
                                    "(it is rewritten from there) or with --force")
            out[name] = np.asarray(g[name][sl])
        return out

    def write(self, i: int, columns: dict[str, np.ndarray]) -> None:
        """Write partition ``i``'s outputs, then mark it done (the order matters for resume).

        ``ragged:<name>`` entries (any length) go to their own array ``_ragged_<name>_<i>`` (with
        dimension names of its own, so xarray opens an unfinished group too)."""
        sl = self.partition(i)
        name = "zarr.json"
        try:
            with zarr.config.set(WRITE_ALL):
                g = self.group
                for name, a in columns.items():
                    if name.startswith("ragged:"):
                        piece = name = f"_ragged_{name[7:]}_{i:06d}"
                        a = np.asarray(a)
                        g.create_array(piece, data=a, overwrite=True, **CODECS,
                                       dimension_names=tuple(f"{piece}_axis{k}" for k in range(a.ndim)))
                    else:
                        arr = g[name]
                        cats = arr.attrs.get("categories")
                        if cats is not None and np.asarray(a).dtype.kind in "iu":  # codes -> names
                            a = np.asarray(cats, dtype=object)[np.asarray(a)]
                        arr[sl] = a
                for name in INDEXED:
                    if name in columns and f"_range_{name}" in g:
                        g[f"_range_{name}"][2 * i: 2 * i + 2] = value_range(columns[name])
                name = "_done"
                g["_done"][i] = 1
        except OSError as e:
            if isinstance(e, JobStoreError):
                raise
            raise JobStoreError(f"{self.path}/{name}: writing partition {i} failed: "
                                f"{e.strerror or e}") from None

    def finalize_ragged(self, names, count_column: str) -> None:
        """Concatenate the partitions' ragged pieces into ``<name>`` arrays (rows in stored order)
        plus ``offsets`` (n_rows + 1): row k's entries are ``<name>[offsets[k]:offsets[k + 1]]``.
        The pieces are deleted once every ``<name>`` is written (not before: a driver killed in
        between finalizes again on resume)."""
        g = self.group
        n_parts = self.attrs["n_partitions"]
        counts = np.asarray(g[count_column][:], dtype=np.int64)
        offsets = np.r_[0, np.cumsum(counts)]
        g.create_array("offsets", data=offsets, overwrite=True, dimension_names=("row_edge",), **CODECS)
        for name in names:
            parts = [np.asarray(g[f"_ragged_{name}_{i:06d}"][:]) for i in range(n_parts)]
            data = np.concatenate(parts)
            dims = ("item",) + tuple(f"{name}_axis{k}" for k in range(1, data.ndim))
            g.create_array(name, data=data, overwrite=True, dimension_names=dims, **CODECS)
        for name in names:
            for i in range(n_parts):
                del g[f"_ragged_{name}_{i:06d}"]

    def is_finalized(self, names) -> bool:
        """Whether ``finalize_ragged(names)`` has run to the end (its pieces are gone)."""
        keys = set(zarr.open_group(self.path, mode="r").array_keys())
        pieces_left = any(k.startswith("_ragged_") for k in keys)
        return "offsets" in keys and all(n in keys for n in names) and not pieces_left

    def done(self) -> np.ndarray:
        """Which partitions are marked finished; a damaged ``_done`` entry counts as unfinished."""
        g = _open(self.path, "r")
        n = self.attrs["n_partitions"]
        try:
            return np.asarray(g["_done"][:]).astype(bool)
        except Exception:  # noqa: BLE001 - a damaged entry: look at each
            out = np.zeros(n, dtype=bool)
            for i in range(n):
                try:
                    out[i] = bool(g["_done"][i])
                except Exception:  # noqa: BLE001
                    out[i] = False
            return out

    def mark_undone(self, parts) -> None:
        """Mark partitions unfinished (their outputs are rewritten by the next run)."""
        with zarr.config.set(WRITE_ALL):
            g = self.group
            for i in parts:
                g["_done"][i] = 0

    def rewrite_inputs(self, inputs: dict[str, np.ndarray], parts) -> None:
        """Rewrite partitions ``parts`` of the input columns from ``inputs`` (checked to be the
        job's own input by its fingerprint)."""
        with zarr.config.set(WRITE_ALL):
            g = self.group
            for i in parts:
                sl = self.partition(i)
                for name, a in inputs.items():
                    g[name][sl] = a[sl]


def chunk_problem(g: zarr.Group, path: str, name: str, i: int) -> str | None:
    """Why chunk ``i`` of the 1-D array ``name`` is damaged (missing, checksum, truncated), or None."""
    try:
        arr = g[name]
    except Exception as e:  # noqa: BLE001 - a missing or damaged array zarr.json
        return f"{path}/{name}/zarr.json is missing or damaged ({type(e).__name__})"
    key = arr.metadata.encode_chunk_key((i,))
    f = f"{path}/{name}/{key}"
    if not os.path.isfile(f):
        return f"{f} is missing"
    c = arr.chunks[0]
    try:
        arr[i * c: min((i + 1) * c, arr.shape[0])]
    except Exception as e:  # noqa: BLE001 - checksum mismatch, truncated zstd frame ...
        return f"{f} is damaged ({type(e).__name__}: {str(e)[:80]})"
    return None


def verify(path: str) -> dict:
    """Read every chunk of a job's store; return the damaged partitions.

    Returns ``{"inputs": {partition: [problem, ...]}, "outputs": {...}, "done": [...]}``:
    ``inputs`` covers ``row`` and the input columns (every partition), ``outputs`` the output
    columns of partitions marked done (an unfinished partition's outputs are rewritten anyway).
    """
    store = JobStore(str(path))
    a, done = store.attrs, store.done()
    g = _open(str(path), "r")
    outputs = [n for n in a["outputs"]]
    bad_in, bad_out = {}, {}
    for i in range(a["n_partitions"]):
        for name in a["inputs"]:
            if (p := chunk_problem(g, str(path), name, i)):
                bad_in.setdefault(i, []).append(p)
        if done[i]:
            for name in outputs:
                if (p := chunk_problem(g, str(path), name, i)):
                    bad_out.setdefault(i, []).append(p)
    return {"inputs": bad_in, "outputs": bad_out, "done": np.flatnonzero(done).tolist()}


def status(path: str) -> dict:
    """Progress of a job group: partitions done / total, rows, operation, timestamp."""
    store = JobStore(str(path))
    a, done = store.attrs, store.done()
    return {"operation": a["operation"], "dataset": a["dataset"], "timestamp": a.get("timestamp"),
            "partitions_done": int(done.sum()), "partitions": int(done.size), "rows": a["n_rows"],
            "complete": bool(done.all())}


def read_output(path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A job's columns as a DataFrame in input row order (index = input row)."""
    store = JobStore(str(path))
    a, g = store.attrs, _open(str(path), "r")
    if not store.done().all():
        raise InvalidInputError(f"job {path} is not complete ({status(path)['partitions_done']} of "
                                f"{a['n_partitions']} partitions); finish it with `crantseg run ... --resume`")
    keys = [n for n in g.array_keys() if not n.startswith("_") and n != "row" and g[n].shape == (a["n_rows"],)]
    first = [n for n in a.get("columns", []) if n in keys]  # the user's columns in their order, then outputs
    names = columns or first + [n for n in sorted(a["outputs"]) if n in keys and n not in first] + sorted(
        set(keys) - set(first) - set(a["outputs"]))
    if a.get("format", 0) < 3:  # older stores skipped all-fill chunks and carry no checksums
        read = lambda n: np.asarray(g[n][:])  # noqa: E731
    else:
        read = lambda n: _read_checked(g, str(path), n, a["n_partitions"])  # noqa: E731
    from .jobs.columns import from_stored

    df = pd.DataFrame({n: from_stored(read(n), dict(g[n].attrs)) for n in names},
                      index=pd.Index(read("row"), name="row"))
    return df.sort_index()


def _read_checked(g: zarr.Group, path: str, name: str, n_parts: int) -> np.ndarray:
    """A whole 1-D array, refusing (naming the partition) when a chunk is missing or damaged."""
    arr = g[name]
    key = arr.metadata.encode_chunk_key((0,)).rsplit("/", 1)[0]
    present = set(os.listdir(f"{path}/{name}/{key}")) if os.path.isdir(f"{path}/{name}/{key}") else set()
    missing = [i for i in range(n_parts) if str(i) not in present]
    try:
        if not missing:
            return np.asarray(arr[:])
    except Exception:  # noqa: BLE001 - find the damaged chunk below
        pass
    bad = [i for i in range(n_parts) if chunk_problem(g, path, name, i)]
    raise JobStoreError(f"job {path}: column {name!r} of partition {bad[0]} is damaged "
                        f"({chunk_problem(g, path, name, bad[0])}); {len(bad)} damaged partition(s): "
                        f"{bad[:10]}; repair it with `crantseg run ... --resume`")


def read_ragged(path: str, name: str) -> dict[int, np.ndarray]:
    """A ragged output (e.g. get-voxels' ``voxels``) as {input row: array}."""
    g = zarr.open_group(str(path), mode="r")
    if name not in g or "offsets" not in g:
        raise InvalidInputError(f"job {path} has no ragged output {name!r} (is it complete?)")
    offsets, data = np.asarray(g["offsets"][:]), np.asarray(g[name][:])
    rows = np.asarray(g["row"][:])
    return {int(r): data[offsets[k]: offsets[k + 1]] for k, r in enumerate(rows.tolist())}


def _zero(dtype: np.dtype):
    return False if dtype.kind == "b" else np.zeros((), dtype).item() if dtype.kind in "mM" else 0


def canonical(obj) -> str:
    """Deterministic JSON used to compare job arguments on resume."""
    return json.dumps(obj, sort_keys=True, default=str)
