"""Tables that ``refresh`` reads and replaces atomically: a job's Zarr group, parquet or CSV.

A refreshed table is always staged complete beside the original (``.<name>.refresh-tmp``) and
then swapped in with one atomic step:

* a file (parquet, CSV) is written whole and replaced with ``os.replace`` (parquet: row group by
  row group in a background thread, its unchanged column chunks copied, fsynced first:
  ``_refresh_parquet``);
* a Zarr group (a directory) is staged copy-on-write: its tree is copied with every chunk file
  hard-linked (no data copied), and only the chunks whose values change are written anew, each
  as a new file replacing its link (the old group's files are never written through:
  ``_refresh_zarr``). The staged group is exchanged with the old one by
  ``renameat2(RENAME_EXCHANGE)`` (Linux); where that is unavailable, two renames with the old
  group parked at ``.<name>.refresh-old``, which ``recover`` puts right on the next run. The
  work is in proportion to the chunks that change (plus one link per file).

A crash before the swap leaves the old table in place (the next run deletes the leftover and
starts again); a crash after it leaves the new table in place (the next run finds nothing to do
and deletes the leftover).

Limit (Zarr only): a reader that opens the group gets the old or the new table whole, but zarr
reads chunk files by path, so a reader still reading chunks at the instant of the swap reads the
rest from the new group. Parquet and CSV readers hold the file they opened.

The columns are read on first use (``_refresh_columns``).
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
from ..errors import InvalidInputError, JobStoreError
from ._refresh_columns import _distinct, _distinct_by_statistics, _LazyColumns, _ParquetColumns, _take_chunks
from ._refresh_parquet import parquet_settings
from ._refresh_zarr import changed_chunks, write_zarr
from ._zarr_chunks import ChunkCodec

__all__ = ["RECORD_KEY", "TIMESTAMP_COLUMN", "RefreshTable", "changed_chunks", "open_table", "parquet_settings", "swap"]

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
    frame: pd.DataFrame | None = None          # CSV: the whole table
    attrs: dict = field(default_factory=dict)  # Zarr: the job attributes
    history: list = field(default_factory=list)

    def ids(self, name: str) -> np.ndarray:
        """Column ``name`` as validated uint64 IDs (a 64-bit integer column as stored, not copied)."""
        if name not in self.columns:
            raise InvalidInputError(f"{self.path}: no column {name!r}; columns: {sorted(self.names)}")
        values = self.columns[name]
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype in (np.uint64, np.int64):
            if values.dtype == np.uint64 or not len(values) or values.min() >= 0:  # the same bits: a view, no copy
                return values.view(np.uint64)
        return as_ids(values, name=f"{self.path.name}[{name!r}]", nan="zero")

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def originals(self, name: str) -> list[np.ndarray] | None:
        """Parquet: column ``name`` as read (numpy views of its arrow chunks, never changed by a
        refresh in place), else None."""
        return self.columns.originals(name) if isinstance(self.columns, _ParquetColumns) else None

    def splices(self, replaced: list[str]) -> bool:
        """Whether a refresh replacing the columns ``replaced`` writes this table by splicing
        (parquet: every other column chunk copied as stored, never read: ``_parquet_splice``)."""
        return isinstance(self.columns, _ParquetColumns) and self.columns.splice(replaced) is not None

    def prefetch(self, first: list[str] = (), skip: list[str] = ()) -> None:
        """Start reading, in the background, the columns not read yet but ``skip`` (parquet: the
        refresh writes them back; their read overlaps the requests), ``first`` first."""
        if isinstance(self.columns, _ParquetColumns):
            self.columns.prefetch(first, skip)

    @property
    def operation(self) -> str | None:
        return self.attrs.get("operation")

    def ids_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Column ``name`` at ``rows`` only: a Zarr column not yet read decodes just the chunks
        holding those rows."""
        if name not in self.columns:
            raise InvalidInputError(f"{self.path}: no column {name!r}; columns: {sorted(self.names)}")
        if isinstance(self.columns, _ParquetColumns) and dict.get(self.columns, name) is None:
            got = self.columns.head_values(name, np.asarray(rows, np.int64))
            if got is not None:  # the rows of the first row group, read first
                return as_ids(got, name=f"{self.path.name}[{name!r}]", nan="zero")
        raw = self.columns.raw(name) if isinstance(self.columns, _LazyColumns) else self.columns[name]
        if hasattr(raw, "chunks") and dict.get(self.columns, name) is None:  # arrow, not converted: chunk by chunk
            return as_ids(_take_chunks(raw, np.asarray(rows, np.int64)), name=f"{self.path.name}[{name!r}]", nan="zero")
        if isinstance(raw, np.ndarray) or hasattr(raw, "null_count"):
            return self.ids(name)[rows]
        codec = ChunkCodec.of(raw, self.path / name) if self.kind == "zarr" else None
        got = (codec.take(rows) if codec is not None and len(rows)
               else raw.get_orthogonal_selection((np.asarray(rows, np.int64),)))
        return as_ids(got, name=f"{self.path.name}[{name!r}]", nan="zero")

    # -- a job's per-chunk index ----------------------------------------------------------------
    def _codec(self, name: str) -> ChunkCodec | None:
        g = getattr(self.columns, "group", None)
        if self.kind != "zarr" or g is None or name not in self.columns:
            return None
        raw = self.columns.raw(name)
        return ChunkCodec.of(raw if not isinstance(raw, np.ndarray) else g[name], self.path / name)

    def ranges(self, name: str) -> np.ndarray | None:
        """(n_chunks, 2): each chunk's smallest and largest non-zero value of column ``name`` (the
        job's ``_range_<name>``, which jobs and refresh keep), or None where the store has no
        usable index (an older job, another layout, a damaged entry): then read the column."""
        codec, g = self._codec(name), getattr(self.columns, "group", None)
        key = f"_range_{name}"
        if codec is None or not (self.path / key / "zarr.json").is_file():
            return None
        index = ChunkCodec.of(g[key], self.path / key)
        if index is None or index.n != 2 * codec.n_chunks or index.dtype != np.uint64:
            return None
        try:
            return index.read().reshape(-1, 2)
        except JobStoreError:
            return None

    def ids_in_chunks(self, name: str, chunks: np.ndarray) -> np.ndarray:
        """Column ``name`` as uint64 with only ``chunks`` read (0 elsewhere); the whole column
        where it cannot be read by chunk."""
        codec = self._codec(name)
        if codec is None or codec.dtype.kind != "u":
            return self.ids(name)
        return codec.read_in_place(chunks).view(np.uint64)

    def chunk_size(self, name: str) -> int | None:
        codec = self._codec(name)
        return None if codec is None else codec.size

    def tails(self, name: str) -> list[int] | None:
        """Column ``name``'s chunk checksums (``ChunkCodec.tails``), None where not a job's chain."""
        codec = self._codec(name)
        return None if codec is None else codec.tails()

    # -- writing --------------------------------------------------------------------------------
    def write(self, new: dict[str, np.ndarray], previous: dict[str, np.ndarray], timestamp: str,
              record: dict, changed: dict[str, np.ndarray] | None = None) -> dict:
        """Write the refreshed table beside this one, then swap it in (see the module docstring).

        ``changed``: per column of ``new``, the rows whose value changed (a Zarr group rewrites
        the chunks holding them; without it, the chunks where ``new`` differs from the column as
        read, which must then not have been refreshed in place).

        Returns ``{"files_written": .., "bytes_written": ..}``: the files this refresh wrote (a
        Zarr group: the rewritten chunks and metadata; parquet / CSV: the whole file)."""
        tmp = _sibling(self.path, "tmp")
        _remove(tmp)
        history = self.history + [record]
        if self.kind == "zarr":
            stats = write_zarr(self, tmp, {**new, **previous}, timestamp, history, changed or {})
        elif self.kind == "parquet":  # row group by row group in arrow, no pandas round trip; swapped in
            n = len(next(iter(new.values())))
            return self.stage(new, timestamp, previous, ready=n).finish(self.record_metadata(record))
        else:
            df = self.frame.copy()
            for name, values in {**new, **previous}.items():
                old = df[name].dtype if name in df.columns else np.dtype(np.int64)
                df[name] = values.astype(old if old.kind in "iu" else np.int64)
            df[TIMESTAMP_COLUMN] = timestamp
            df.to_csv(tmp, index=False)
            stats = {"files_written": 1, "bytes_written": tmp.stat().st_size}
        swap(tmp, self.path)
        _remove(tmp)
        return stats

    def stage(self, new: dict[str, np.ndarray], timestamp: str, previous: dict[str, np.ndarray] | None = None,
              ready: int = 0):
        """Parquet only (else None): start writing the refreshed file beside this one in the
        background (``_refresh_parquet.ParquetStage``): the root columns ``new`` and the
        previous-roots columns (``previous``, else zeros: ``stage.previous``, filled in as rows
        are refreshed), the rows before ``ready`` (and those ``stage.advance``d) final.
        ``stage.finish(self.record_metadata(record))`` swaps it in; ``stage.cancel()`` drops it."""
        if self.kind != "parquet":
            return None
        from ._refresh_parquet import ParquetStage

        tmp = _sibling(self.path, "tmp")
        _remove(tmp)
        n = len(next(iter(new.values())))
        previous = previous or {f"{c}_previous": np.zeros(n, np.uint64) for c in new}
        replaced = list(new) + list(previous) + [TIMESTAMP_COLUMN]
        plan = self.columns.splice(replaced)  # the other columns copied as stored, not read
        table = None if plan is not None else self.columns.table(skip=replaced)
        stage = ParquetStage(self.path, self.columns.schema, table, {**new, **previous}, (TIMESTAMP_COLUMN, timestamp),
                             self.columns.schema.metadata, self.columns.settings, tmp, sizes=self.columns.sizes,
                             ready=ready, splice=plan)
        stage.previous = previous
        return stage

    def record_metadata(self, record: dict) -> dict:
        """The file metadata holding the refresh history with ``record`` appended."""
        return {RECORD_KEY: json.dumps(self.history + [record])}


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

        schema = pq.read_schema(path)
        history = json.loads((schema.metadata or {}).get(RECORD_KEY.encode(), b"[]"))
        cols = _ParquetColumns(path, schema, dictionary=[timestamp_column])
        tab = RefreshTable(path, "parquet", None, cols, history=history)
        stamps = []
        if timestamp_column in schema.names:  # from each row group's statistics where they tell, else read
            stamps = _distinct_by_statistics(path, timestamp_column)
            stamps = _distinct(cols.raw(timestamp_column)) if stamps is None else stamps
    elif suffix == ".csv":
        frame = pd.read_csv(path)
        tab = RefreshTable(path, "csv", None, {c: frame[c].to_numpy() for c in frame.columns}, frame=frame)
        stamps = frame[timestamp_column].unique().tolist() if timestamp_column in frame.columns else []
    else:
        raise InvalidInputError(f"table {str(path)!r}: use a job's Zarr output, a .parquet or a .csv file")
    stamps = sorted({str(v) for v in stamps if v is not None and not (isinstance(v, float) and np.isnan(v))})
    if len(stamps) > 1:
        raise InvalidInputError(f"{path}: column {timestamp_column!r} holds {len(stamps)} different times "
                                f"({', '.join(stamps[:3])} ...); refresh needs one time for the whole table")
    tab.timestamp = stamps[0] if stamps else None
    return tab


def _open_zarr(path: Path) -> RefreshTable:
    import zarr

    from ..persist import JobStore

    store = JobStore(str(path))
    attrs = store.attrs
    g = zarr.open_group(str(path), mode="r")
    arrays = dict(g.arrays())  # each array's metadata read once
    done = ChunkCodec.of(arrays["_done"], path / "_done") if "_done" in arrays else None
    try:  # the done mask's chunks read directly, in parallel; zarr's way where that fails
        complete = bool(done.read().all()) if done is not None else None
    except JobStoreError:
        complete = None
    if not (store.done().all() if complete is None else complete):
        raise InvalidInputError(f"job {path} is not complete; finish it with `crantseg run ... --resume` first")
    n = attrs["n_rows"]
    cols = _LazyColumns({k: a for k, a in arrays.items() if not k.startswith("_") and a.shape == (n,)})
    cols.root, cols.group = path, g
    return RefreshTable(path, "zarr", attrs.get("timestamp"), cols, attrs=attrs,
                        history=list(attrs.get("refresh", [])))
