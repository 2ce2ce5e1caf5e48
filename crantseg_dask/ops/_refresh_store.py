"""Tables that ``refresh`` reads and replaces atomically: a job's Zarr group, parquet or CSV.

A refreshed table is always staged complete beside the original (``.<name>.refresh-tmp``) and
then swapped in with one atomic step:

* a file (parquet, CSV) is written whole and replaced with ``os.replace`` (parquet: row group by
  row group in a background thread, its unchanged column chunks copied, fsynced first:
  ``_refresh_parquet``);
* a Zarr group (a directory) is staged copy-on-write: its tree is copied with every chunk file
  hard-linked (no data copied), and only the chunks whose values change are written anew, each
  as a new file replacing its link (the old group's files are never written through). The
  staged group is exchanged with the old one by ``renameat2(RENAME_EXCHANGE)`` (Linux); where
  that is unavailable, two renames with the old group parked at ``.<name>.refresh-old``, which
  ``recover`` puts right on the next run. The work is in proportion to the chunks that change
  (plus one link per file).

A crash before the swap leaves the old table in place (the next run deletes the leftover and
starts again); a crash after it leaves the new table in place (the next run finds nothing to do
and deletes the leftover).

Limit (Zarr only): a reader that opens the group gets the old or the new table whole, but zarr
reads chunk files by path, so a reader still reading chunks at the instant of the swap reads the
rest from the new group. Parquet and CSV readers hold the file they opened.
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
from ._refresh_parquet import parquet_settings, read_columns, read_ids, row_groups
from ._zarr_chunks import ChunkCodec

__all__ = ["RECORD_KEY", "TIMESTAMP_COLUMN", "RefreshTable", "changed_chunks", "open_table", "parquet_settings", "swap"]

TIMESTAMP_COLUMN = "roots_valid_at"
#: zstd level of the Zarr chunks a refresh writes: level 1 encodes ID columns about 2.5x faster
#: than a job's level 0 (zstd's default, 3) and, on root IDs, about as small or smaller
ZSTD_LEVEL = 1
RECORD_KEY = "crantseg.refresh"  # parquet schema metadata key; the Zarr attribute is crantseg["refresh"]
#: parquet: write a refreshed file by splicing where it can (``_parquet_splice``); False: rewrite it whole
SPLICE = True


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
            stats = self._write_zarr(tmp, {**new, **previous}, timestamp, history, changed or {})
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

    def _write_zarr(self, tmp: Path, arrays: dict[str, np.ndarray], timestamp: str, history: list,
                    changed: dict[str, np.ndarray]) -> dict:
        """Stage the refreshed group at ``tmp``: every file hard-linked to the old group's, then
        only the chunks whose values change written anew (a new file replacing the link, never
        written through it); a column the group lacks is created whole."""
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        from ..persist import CODECS, WRITE_ALL, value_range

        stage_tree(self.path, tmp)
        for name in arrays:
            fast_zstd(tmp / name / "zarr.json")
        g = zarr.open_group(str(tmp), mode="r+")
        n = int(self.attrs["n_rows"])
        size = g[next(iter(arrays))].chunks[0]
        with zarr.config.set(WRITE_ALL):
            for name, values in arrays.items():
                if name in g:
                    arr = g[name]
                    values = np.asarray(values, dtype=arr.dtype)
                    dirty = (np.unique(np.asarray(changed[name], np.int64) // arr.chunks[0]) if name in changed
                             else changed_chunks(np.asarray(self.columns[name]), values, arr.chunks[0]))
                else:
                    arr = g.create_array(name, shape=(n,), chunks=(size,), dtype=np.uint64, fill_value=0,
                                         dimension_names=("row",),
                                         **{**CODECS, "compressors": (ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec())})
                    values = np.asarray(values, dtype=np.uint64)
                    dirty = np.arange(-(-n // size))
                write_chunks(tmp / name, arr, values, dirty)
                key = f"_range_{name}"
                index = ChunkCodec.of(g[key], tmp / key) if (tmp / key / "zarr.json").is_file() else None
                if index is not None and index.n == 2 * len(range(0, n, arr.chunks[0])):
                    size = arr.chunks[0]
                    for i in np.asarray(dirty, np.int64).tolist():  # the chunks rewritten: their range anew
                        index.put(i, index.encode(value_range(values[i * size: (i + 1) * size])))
        valid = history[-1].get("valid_chunks")
        if valid:  # the checksums of the chunks this refresh left valid (read by the next one)
            history[-1]["valid_chunks"] = {c: ChunkCodec.of(g[c], tmp / c).tails() for c in valid
                                           if ChunkCodec.of(g[c], tmp / c) is not None}
        g.attrs["crantseg"] = {**self.attrs, "timestamp": timestamp, "refresh": history}
        return _new_files(tmp)


def fast_zstd(meta: Path) -> None:
    """Set the zstd level in a staged array's ``zarr.json`` (a copy, not a link) to ``ZSTD_LEVEL``
    for the chunks this refresh writes. A zstd frame decodes the same whatever level wrote it, so
    the chunks kept from the old group read as before."""
    if not meta.is_file():
        return
    doc = json.loads(meta.read_text())
    codecs = [c for c in doc.get("codecs", []) if isinstance(c, dict) and c.get("name") == "zstd"]
    if codecs and all(c.get("configuration", {}).get("level") != ZSTD_LEVEL for c in codecs):
        for c in codecs:
            c.setdefault("configuration", {})["level"] = ZSTD_LEVEL
        meta.write_text(json.dumps(doc, indent=2))


def stage_tree(src: Path, dst: Path) -> None:
    """Copy the group's tree to ``dst``: chunk files hard-linked (no data copied), metadata copied."""
    shutil.copytree(src, dst, copy_function=_link_chunks)


def changed_chunks(old: np.ndarray, new: np.ndarray, size: int) -> np.ndarray:
    """Indices of the length-``size`` chunks of a 1-D column in which ``new`` differs from ``old``."""
    diff = np.flatnonzero(old != new)
    return np.unique(diff // size)


def _runs(chunks: np.ndarray) -> list[tuple[int, int]]:
    """Sorted chunk indices as half-open runs of consecutive chunks."""
    if not len(chunks):
        return []
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    return [(int(c[0]), int(c[-1]) + 1) for c in np.split(chunks, breaks)]


def write_chunks(folder: Path, arr, values: np.ndarray, chunks: np.ndarray) -> None:
    """Write ``chunks`` (sorted indices) of the 1-D array ``arr`` (stored under ``folder``) from
    ``values``, each as a new file replacing its hard link, so the old group's files are never
    written through: a job's codec chain directly, in parallel (``ChunkCodec``), else via zarr."""
    codec = ChunkCodec.of(arr, folder, level=ZSTD_LEVEL)
    if codec is not None:
        codec.write(values, chunks)
        return
    size = arr.chunks[0]
    for lo, hi in _runs(np.asarray(chunks, np.int64)):
        for i in range(lo, hi):
            f = folder / arr.metadata.encode_chunk_key((i,))
            if f.exists():
                f.unlink()
        arr[lo * size: min(hi * size, arr.shape[0])] = values[lo * size: min(hi * size, arr.shape[0])]


def _new_files(tmp: Path) -> dict:
    """Files under ``tmp`` not shared with the old group (link count 1): what staging wrote."""
    files = size = 0
    for root, _, names in os.walk(tmp):
        for name in names:
            st = os.stat(os.path.join(root, name))
            if st.st_nlink == 1:
                files += 1
                size += st.st_size
    return {"files_written": files, "bytes_written": size}


def _link_chunks(src: str, dst: str) -> None:
    """Hard-link a chunk file (copy where links are impossible); copy metadata (zarr writes it in place)."""
    if os.path.basename(src) != "zarr.json":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


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


def _distinct_by_statistics(path: Path, name: str) -> list | None:
    """The distinct values of the string column ``name`` of a parquet file from its row groups'
    statistics (min == max: one value; null count: empty cells), or None where a row group's
    statistics do not tell (missing, or min != max): then the column is read."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    if meta.schema.names.count(name) != 1:
        return None
    index = meta.schema.names.index(name)
    out = set()
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(index).statistics
        if group.num_rows == 0:
            continue
        if stats is None or not stats.has_null_count:
            return None
        if stats.null_count:
            out.add(None)
        if stats.null_count < group.num_rows:
            if not stats.has_min_max or stats.min != stats.max or not isinstance(stats.min, str):
                return None
            out.add(stats.min)
    return list(out)


def _take_chunks(column, rows: np.ndarray) -> np.ndarray:
    """The values of an arrow integer column at ``rows``, taken chunk by chunk (each chunk's
    values a view where it has no empty cells: no copy of the whole column); empty cells 0."""
    import pyarrow as pa

    order = None if np.all(rows[1:] >= rows[:-1]) else np.argsort(rows, kind="stable")
    sorted_rows = rows if order is None else rows[order]
    offsets = np.cumsum([0] + [len(c) for c in column.chunks])
    cut = np.searchsorted(sorted_rows, offsets)
    parts = []
    for i, chunk in enumerate(column.chunks):
        if cut[i + 1] > cut[i]:
            if chunk.null_count and pa.types.is_integer(chunk.type):
                chunk = chunk.fill_null(0)
            parts.append(chunk.to_numpy(zero_copy_only=False)[sorted_rows[cut[i]: cut[i + 1]] - offsets[i]])
    got = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if len(got) != len(rows):
        raise InvalidInputError(f"rows {rows[(rows < 0) | (rows >= offsets[-1])][:5].tolist()} are outside the table")
    if order is None:
        return got
    out = np.empty_like(got)
    out[order] = got
    return out


def _distinct(column) -> list:
    """The distinct values of an arrow column; a dictionary-encoded one (as read) from each
    chunk's dictionary when it holds one value, without a pass over the rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = set()
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type) and len(chunk.dictionary) == 1:
            if chunk.null_count < len(chunk):
                out.add(chunk.dictionary[0].as_py())
            if chunk.null_count:
                out.add(None)
        else:
            out.update(pc.unique(chunk).to_pylist())
    return list(out)


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


class _LazyColumns(dict):
    """Zarr arrays or arrow columns read into numpy on first access (refresh needs few columns).
    ``root``: the Zarr group's directory (its arrays' chunks are then read directly, in parallel)."""

    root: Path | None = None
    group = None

    def raw(self, key):
        """The stored object (a Zarr array, an arrow column) or the numpy array read from it."""
        return super().__getitem__(key)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if not isinstance(value, np.ndarray):
            if hasattr(value, "null_count"):  # arrow: empty integer cells are 0 (never a float cast)
                import pyarrow as pa

                if value.null_count and pa.types.is_integer(value.type):
                    value = value.fill_null(0)
                value = value.to_numpy()
            else:
                codec = ChunkCodec.of(value, self.root / key) if self.root is not None else None
                value = codec.read() if codec is not None else np.asarray(value[:])
            self[key] = value
        return value


class _ParquetColumns(_LazyColumns):
    """The columns of a parquet file, each read on first use (the root columns first, alone);
    ``prefetch`` reads the rest in the background (the supervoxel columns first), ``table``
    gives the whole table. Reads are memory-mapped, the row groups split between threads
    (``_refresh_parquet.read_columns``)."""

    def __init__(self, path: Path, schema, dictionary: list[str]):
        super().__init__({c: None for c in schema.names})
        self.path, self.schema = path, schema
        self.dictionary = [c for c in dictionary if c in schema.names]
        self.arrow: dict = {}    # name -> arrow column as read
        self.pending: list = []  # (names, future) of the background reads
        self.settings = parquet_settings(path)
        self.sizes = row_groups(path)
        self.head = None         # (rows, names, future) of the first row group read alone
        self.plans: dict = {}    # kept columns -> SplicePlan, or why the file cannot be spliced
        self.reason = None       # why the last ``splice`` asked for could not be

    def splice(self, replaced: list[str]):
        """The ``SplicePlan`` keeping every column but ``replaced`` as stored, or None where the
        file cannot be spliced (``reason`` says why; it is then rewritten whole)."""
        from ._parquet_splice import SplicePlan

        keep = tuple(c for c in self.schema.names if c not in set(replaced))
        if keep not in self.plans:
            self.plans[keep] = SplicePlan.of(self.path, list(keep)) if SPLICE else "splicing turned off"
        plan = self.plans[keep]
        self.reason = plan if isinstance(plan, str) else None
        return None if isinstance(plan, str) else plan

    def _read(self, names: list[str]) -> dict:
        t = read_columns(self.path, names, dictionary=self.dictionary)
        return {c: t.column(c) for c in names}

    def raw(self, key):
        if key not in self.arrow:
            ahead = [f for names, f in self.pending if key in names]
            self.arrow.update(ahead[0].result() if ahead else self._read([key]))
        value = dict.__getitem__(self, key)
        return self.arrow[key] if value is None else value

    def __getitem__(self, key):
        if dict.__getitem__(self, key) is None:
            import pyarrow as pa

            typ = self.schema.field(key).type
            if key not in self.arrow and (pa.types.is_int64(typ) or pa.types.is_uint64(typ)) and \
                    not any(key in names for names, _ in self.pending):  # an ID column: read straight into numpy
                values, self.arrow[key] = read_ids(self.path, key)
                dict.__setitem__(self, key, values)
            else:
                dict.__setitem__(self, key, self.raw(key))
        return super().__getitem__(key)

    def originals(self, key) -> list[np.ndarray] | None:
        """The arrow column ``key`` as read, chunk by chunk as numpy views (empty cells 0): the
        values as stored, whatever happens to the numpy column (refreshed in place)."""
        import pyarrow as pa

        col = self.arrow.get(key)
        if col is None or not pa.types.is_integer(col.type):
            return None
        return [(c.fill_null(0) if c.null_count else c).to_numpy() for c in col.chunks]

    def prefetch(self, first: list[str] = (), skip: list[str] = ()) -> None:
        """Read in the background the columns not read yet: ``first`` (those needed soonest),
        then the rest but ``skip`` (columns the refresh replaces)."""
        from concurrent.futures import ThreadPoolExecutor

        waiting = {c for names, _ in self.pending for c in names}
        todo = [c for c in self.schema.names if c not in self.arrow and c not in waiting and c not in skip]
        parts = [[c for c in todo if c in set(first)], [c for c in todo if c not in set(first)]]
        parts = [p for p in parts if p]
        if parts:
            pool = ThreadPoolExecutor(1)
            if parts[0][0] in set(first) and len(self.sizes) > 1 and self.head is None:
                # the first row group of the ``first`` columns alone, first (its rows are mapped first)
                self.head = (self.sizes[0], parts[0], pool.submit(self._read_head, parts[0]))
            self.pending += [(p, pool.submit(self._read, p)) for p in parts]
            pool.shutdown(wait=False)  # the thread ends with the reads

    def _read_head(self, names: list[str]) -> dict:
        import pyarrow.parquet as pq

        t = pq.ParquetFile(self.path, memory_map=True).read_row_group(0, columns=names, use_threads=False)
        return {c: t.column(c) for c in names}

    def head_values(self, key, rows: np.ndarray):
        """Column ``key`` at ``rows`` from the first row group read alone (``prefetch``), or None
        where it was not or ``rows`` reach past it."""
        if self.head is None or key not in self.head[1] or not len(rows) or int(rows.max()) >= self.head[0]:
            return None
        return _take_chunks(self.head[2].result()[key], np.asarray(rows, np.int64))

    def table(self, skip: list[str] = ()):
        """The table as read (columns in the file's order, its schema metadata), without the
        columns ``skip`` (not read for it)."""
        import pyarrow as pa

        names = [c for c in self.schema.names if c not in set(skip)]
        for c in names:
            self.raw(c)
        return pa.table({c: self.arrow[c] for c in names}).replace_schema_metadata(self.schema.metadata)
