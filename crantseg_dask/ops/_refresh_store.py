"""Tables that ``refresh`` reads and replaces atomically: a job's Zarr group, parquet or CSV.

A refreshed table is always written complete beside the original (``.<name>.refresh-tmp``) and
then swapped in with one atomic step, so a reader sees the old table or the new one, never a mix:

* a file (parquet, CSV) is replaced with ``os.replace``;
* a Zarr group (a directory) is exchanged with the new one by ``renameat2(RENAME_EXCHANGE)``
  (Linux); where that is unavailable, two renames with the old group parked at
  ``.<name>.refresh-old``, which ``recover`` puts right on the next run.

A crash before the swap leaves the old table in place (the next run deletes the leftover and
starts again); a crash after it leaves the new table in place (the next run finds nothing to do
and deletes the leftover).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._validate import as_ids
from ..errors import InvalidInputError

__all__ = ["RefreshTable", "open_table", "swap", "TIMESTAMP_COLUMN", "RECORD_KEY"]

TIMESTAMP_COLUMN = "roots_valid_at"
RECORD_KEY = "crantseg.refresh"  # parquet schema metadata key; the Zarr attribute is crantseg["refresh"]


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.refresh-{tag}")


@dataclass
class RefreshTable:
    """One table: its root (and supervoxel) columns, the time its roots are valid at, its kind."""

    path: Path
    kind: str                                  # "zarr", "parquet" or "csv"
    timestamp: str | None                      # ISO, from the job attributes or the timestamp column
    columns: dict[str, np.ndarray]             # every column needed, as stored (Zarr: stored row order)
    frame: pd.DataFrame | None = None          # parquet / CSV: the whole table
    attrs: dict = field(default_factory=dict)  # Zarr: the job attributes
    history: list = field(default_factory=list)

    def ids(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise InvalidInputError(f"{self.path}: no column {name!r}; columns: {sorted(self.names)}")
        return as_ids(self.columns[name], name=f"{self.path.name}[{name!r}]", nan="zero")

    @property
    def names(self) -> list[str]:
        return list(self.frame.columns) if self.frame is not None else list(self.columns)

    @property
    def operation(self) -> str | None:
        return self.attrs.get("operation")

    # -- writing --------------------------------------------------------------------------------
    def write(self, new: dict[str, np.ndarray], previous: dict[str, np.ndarray], timestamp: str,
              record: dict) -> None:
        """Write the refreshed table beside this one, then swap it in (see the module docstring)."""
        tmp = _sibling(self.path, "tmp")
        _remove(tmp)
        history = self.history + [record]
        if self.kind == "zarr":
            import zarr

            shutil.copytree(self.path, tmp)
            g = zarr.open_group(str(tmp), mode="r+")
            for name, values in {**new, **previous}.items():
                dtype = g[name].dtype if name in g else np.uint64
                chunks = g[next(iter(new))].chunks
                if name not in g:
                    g.create_array(name, shape=values.shape, chunks=chunks, dtype=dtype, fill_value=0,
                                   dimension_names=("row",))
                g[name][:] = values.astype(dtype)
            g.attrs["crantseg"] = {**self.attrs, "timestamp": timestamp, "refresh": history}
        else:
            df = self.frame.copy()
            for name, values in {**new, **previous}.items():
                old = df[name].dtype if name in df.columns else np.dtype(np.int64)
                df[name] = values.astype(old if old.kind in "iu" else np.int64)
            df[TIMESTAMP_COLUMN] = timestamp
            if self.kind == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                t = pa.Table.from_pandas(df, preserve_index=False)
                meta = {**(t.schema.metadata or {}), RECORD_KEY.encode(): json.dumps(history).encode()}
                pq.write_table(t.replace_schema_metadata(meta), tmp)
            else:
                df.to_csv(tmp, index=False)
        swap(tmp, self.path)
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two directory entries (Linux ``renameat2``); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap(new: Path, path: Path) -> None:
    """Put the complete table at ``new`` in place of ``path`` in one atomic step (the old table
    ends up at ``new`` for a directory)."""
    if not path.is_dir():
        os.replace(new, path)
        return
    if _exchange(new, path):
        return
    parked = _sibling(path, "old")
    _remove(parked)
    os.rename(path, parked)
    os.rename(new, path)
    _remove(parked)


def recover(path: Path) -> None:
    """Finish or undo a swap a crash cut short, and delete leftovers of an earlier run."""
    parked, tmp = _sibling(path, "old"), _sibling(path, "tmp")
    if not path.exists() and parked.exists():  # crashed between the two renames of ``swap``
        os.rename(tmp if tmp.exists() else parked, path)
    _remove(parked)
    _remove(tmp)


# -- reading --------------------------------------------------------------------------------------
def open_table(table, timestamp_column: str = TIMESTAMP_COLUMN) -> RefreshTable:
    """Read the table at ``table`` (a job's Zarr group, a .parquet or a .csv file)."""
    path = Path(table)
    recover(path)
    if not path.exists():
        raise InvalidInputError(f"table {str(path)!r} does not exist")
    if path.is_dir():
        return _open_zarr(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        frame, kind = t.to_pandas(), "parquet"
        history = json.loads((t.schema.metadata or {}).get(RECORD_KEY.encode(), b"[]"))
    elif suffix == ".csv":
        frame, kind = pd.read_csv(path), "csv"
        history = []
    else:
        raise InvalidInputError(f"table {str(path)!r}: use a job's Zarr output, a .parquet or a .csv file")
    ts = None
    if timestamp_column in frame.columns:
        values = frame[timestamp_column].dropna().astype(str).unique()
        if len(values) > 1:
            raise InvalidInputError(f"{path}: column {timestamp_column!r} holds {len(values)} different times "
                                    f"({', '.join(values[:3])} ...); refresh needs one time for the whole table")
        ts = values[0] if len(values) else None
    return RefreshTable(path, kind, ts, {c: frame[c].to_numpy() for c in frame.columns}, frame=frame,
                        history=history)


def _open_zarr(path: Path) -> RefreshTable:
    from ..persist import JobStore

    store = JobStore(str(path))
    attrs = store.attrs
    if not store.done().all():
        raise InvalidInputError(f"job {path} is not complete; finish it with `crantseg run ... --resume` first")
    import zarr

    g = zarr.open_group(str(path), mode="r")
    n = attrs["n_rows"]
    cols = _LazyColumns({k: g[k] for k in g.array_keys() if not k.startswith("_") and g[k].shape == (n,)})
    return RefreshTable(path, "zarr", attrs.get("timestamp"), cols, attrs=attrs,
                        history=list(attrs.get("refresh", [])))


class _LazyColumns(dict):
    """Zarr arrays read on first access (a job's group holds many columns refresh never needs)."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, np.ndarray):
            value = np.asarray(value[:])
            self[key] = value
        return value
