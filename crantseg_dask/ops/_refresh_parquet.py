"""Parquet tables for ``refresh``: read in parallel by row group, written row group by row group.

A refresh changes a file's root columns, their previous-roots columns and its time column; a
changed root re-encodes its column chunk (compressed pages). Every other column chunk is copied
from the old file byte for byte (``_parquet_splice``); a file the splice does not handle is
rewritten whole. Reads and writes are overlapped with the requests:

* the columns are read memory-mapped, the row groups split between threads (each decompresses
  its own; pyarrow releases the GIL); the root columns first, the supervoxel columns next (the
  touched rows' supervoxels are needed for the requests), the rest after (only when the file
  is rewritten whole);
* the refreshed file is written in a background thread (``ParquetStage``) as soon as the roots
  are known, row group by row group with the original file's row groups, codec per column and
  schema (plus the previous-roots columns and the time), while the caller still waits on its
  last requests (spliced: the changed columns encoded in ``N_ENCODERS`` threads, the others
  copied); it is then closed, fsynced and renamed over the old file (``finish``), or dropped
  (``cancel``) when what it was started with turns out not to be the final table.

A crash before the rename leaves the old file; the partial file beside it
(``.<name>.refresh-tmp``) is deleted by the next run (``_refresh_store.recover``).
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["ParquetStage", "copy_parquet", "parquet_settings", "read_columns", "read_ids", "row_groups"]

N_READERS = 2       # threads reading row groups (each its own file handle)
N_ENCODERS = 2      # threads encoding a spliced file's changed columns, row group by row group
PARQUET_COMPRESSION = "snappy"  # a column the file lacks, without a root column to follow


def parquet_settings(path: Path) -> dict:
    """How the parquet file at ``path`` is written: each column's compression codec and the row
    group size (of its first row group), which a refresh keeps."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    codecs, rows = {}, None
    if meta.num_row_groups:
        group = meta.row_group(0)
        rows = group.num_rows or None
        for i in range(group.num_columns):
            col = group.column(i)
            codecs[col.path_in_schema] = col.compression.lower().replace("uncompressed", "none")
    return {"compression": codecs, "row_group_size": rows}


def row_groups(path: Path) -> list[int]:
    """The number of rows of each row group of the parquet file at ``path``."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _split(sizes: list[int], parts: int) -> list[list[int]]:
    """Row group indices in at most ``parts`` consecutive runs of about equal rows."""
    if not sizes:
        return []
    ends = np.cumsum(sizes)
    cut = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts, side="left") + 1
    runs = np.split(np.arange(len(sizes)), np.unique(np.clip(cut, 1, len(sizes) - 1)) if len(sizes) > 1 else [])
    return [r.tolist() for r in runs if len(r)]


def read_columns(path: Path, names: list[str], dictionary: list[str] = ()):
    """Columns ``names`` of the parquet file at ``path`` as an arrow table (the file's schema
    metadata), the row groups split between ``N_READERS`` threads, each reading memory-mapped
    through its own handle; ``dictionary``: string columns read as dictionary arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    opts = {"memory_map": True, "read_dictionary": [c for c in dictionary if c in names] or None}
    runs = _split(row_groups(path), N_READERS)

    def one(groups: list[int]):
        return pq.ParquetFile(path, **opts).read_row_groups(groups, columns=names, use_threads=False)

    if len(runs) <= 1:
        return pq.ParquetFile(path, **opts).read(columns=names, use_threads=True)
    with ThreadPoolExecutor(len(runs)) as pool:
        return pa.concat_tables(list(pool.map(one, runs)))


def read_ids(path: Path, name: str):
    """A 64-bit integer column of the parquet file at ``path`` as one writable numpy array (its
    own type; empty cells 0) and as the arrow column read (left unchanged), the row groups split
    between ``N_READERS`` threads, each copying its rows into the array (no copy after)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    typ = pq.read_schema(path).field(name).type
    if not (pa.types.is_int64(typ) or pa.types.is_uint64(typ)):
        raise InvalidInputError(f"{path}: column {name!r} holds {typ}, not 64-bit integers")
    sizes = row_groups(path)
    out = np.empty(sum(sizes), np.int64 if pa.types.is_int64(typ) else np.uint64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def one(groups: list[int]):
        col = pq.ParquetFile(path, memory_map=True).read_row_groups(groups, columns=[name], use_threads=False).column(0)
        at = int(starts[groups[0]])
        for chunk in col.chunks:
            out[at: at + len(chunk)] = (chunk.fill_null(0) if chunk.null_count else chunk).to_numpy()
            at += len(chunk)
        return col

    runs = _split(sizes, N_READERS)
    with ThreadPoolExecutor(max(len(runs), 1)) as pool:
        cols = list(pool.map(one, runs))
    chunks = [c for col in cols for c in col.chunks]
    return out, pa.chunked_array(chunks, type=typ)


def _options(names: list[str], settings: dict, timestamp_column: str) -> dict:
    """The writer's options: the file's codec per column (a column it lacks: that of its root
    column, else snappy); dictionary pages for the root columns, the time and the other columns
    (a table holds far fewer roots than rows: small indices, about half the bytes of plain 64-bit
    values, as fast to write); plain for the supervoxel columns (nearly one per row: a dictionary
    only costs a hash per value before falling back to plain) and the previous roots (mostly 0:
    plain and compressed in half the time of a hash per value); no statistics for the time and
    the previous roots (a min/max pass per page for values nobody filters on)."""
    given = dict(settings.get("compression") or {})
    codecs = {}
    for c in names:
        base = c[: -len("_previous")] if c.endswith("_previous") else c
        codecs[c] = given.get(c) or given.get(base) or PARQUET_COMPRESSION
    plain = ("supervoxel_id", "_previous")
    return {"compression": codecs, "use_dictionary": [c for c in names if not c.endswith(plain)],
            "write_statistics": [c for c in names if c != timestamp_column and not c.endswith("_previous")]}


def _ids_array(values: np.ndarray, typ):
    """A 64-bit integer arrow array of ``values`` (the same bits: a view, no copy)."""
    import pyarrow as pa

    want = np.int64 if pa.types.is_signed_integer(typ) else np.uint64
    values = np.asarray(values)
    return pa.array(values.view(want) if values.dtype.itemsize == 8 and values.dtype.kind in "iu"
                    else values.astype(want))


class ParquetStage:
    """The refreshed parquet file, written beside the old one in a background thread.

    The rows are written as they become final: ``advance(upto)`` says the rows before ``upto``
    hold their final values (the writer writes each row group once all its rows are), so the
    write of the first row groups overlaps the mapping of the later ones. The file's key-value
    metadata (the refresh record) is given at the end (``finish``) and written into the footer
    with the arrow schema pyarrow stores there (the same bytes ``store_schema`` writes, with the
    final metadata).

    Parameters
    ----------
    path : Path
        The file refreshed; its row groups are kept (one written per row group read).
    schema : pyarrow.Schema
        The file's schema (its column order is kept).
    table : pyarrow.Table
        Its columns as read (the columns of ``ids`` and the time may be left out).
    ids : dict
        Column -> uint64/int64 numpy array: the root columns (refreshed) and the previous-roots
        columns; a column the file has keeps its 64-bit integer type, a new one is uint64.
        Rows before the ``advance``d point must not change after it.
    timestamp : (str, str)
        The time column's name and the time it holds on every row (a dictionary column).
    metadata : dict
        The file's schema metadata (``finish`` adds to it).
    settings : dict
        ``parquet_settings`` of the file.
    tmp : Path
        Where to write; ``finish`` renames it over ``path``.
    ready : int
        Rows final from the start (all: ``len`` of the table).
    """

    def __init__(self, path: Path, schema, table, ids: dict, timestamp: tuple[str, str], metadata: dict,
                 settings: dict, tmp: Path, sizes: list[int] | None = None, ready: int = 0, splice=None):
        import pyarrow as pa

        self.path, self.tmp = Path(path), Path(tmp)
        self.sizes = row_groups(path) if sizes is None else sizes
        stamp_col, stamp = timestamp
        names = list(schema.names) + [c for c in ids if c not in schema.names]
        if stamp_col not in names:
            names.append(stamp_col)
        fields = []
        for c in names:
            if c == stamp_col:
                fields.append(pa.field(c, pa.dictionary(pa.int32(), pa.string())))
            elif c in ids:
                old = schema.field(c).type if c in schema.names else pa.uint64()
                fields.append(pa.field(c, pa.int64() if pa.types.is_signed_integer(old) else pa.uint64()))
            else:  # as read (spliced: as stored, not read)
                fields.append((schema if table is None else table.schema).field(c))
        self.schema = pa.schema(fields, metadata=metadata)
        self.splice = splice  # a ``SplicePlan``: the columns not in ``ids`` copied, not rewritten
        self.changed = [c for c in names if c in ids or c == stamp_col]
        if splice is not None and sorted(splice.keep) != sorted(c for c in names if c not in self.changed):
            raise ValueError(f"splice keeps {splice.keep}, not the columns left unchanged")
        self.table, self.ids, self.stamp = table, ids, pa.array([stamp], pa.string())
        self.options = _options(names, settings, stamp_col)
        self.stamp_col = stamp_col
        self._cond = threading.Condition()
        self._ready, self._stop, self._footer = ready, False, None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="crantseg-parquet-stage", daemon=True)
        self._thread.start()

    def advance(self, upto: int) -> None:
        """The rows before ``upto`` hold their final values: write them."""
        with self._cond:
            self._ready = max(self._ready, int(upto))
            self._cond.notify_all()

    def _wait(self, test) -> bool:
        with self._cond:
            while not (self._stop or test()):
                self._cond.wait()
            return not self._stop

    def _group(self, lo: int, hi: int):
        import pyarrow as pa

        cols, fields = [], [f for f in self.schema if self.splice is None or f.name in self.changed]
        for f in fields:
            if f.name == self.stamp_col:  # int32 indices: the writer's own index width (int8 ones are widened)
                cols.append(pa.DictionaryArray.from_arrays(pa.array(np.zeros(hi - lo, np.int32)), self.stamp))
            elif f.name in self.ids:
                cols.append(_ids_array(self.ids[f.name][lo:hi], f.type))
            else:
                cols.append(self.table.column(f.name).slice(lo, hi - lo))
        return pa.Table.from_arrays(cols, schema=pa.schema(fields, metadata=None if self.splice else self.schema.metadata))

    def _write(self) -> None:
        import pyarrow.parquet as pq

        if self.splice is not None:
            return self._write_spliced()
        try:
            with pq.ParquetWriter(self.tmp, self.schema, **self.options) as writer:
                lo = 0
                for size in self.sizes:
                    if not self._wait(lambda: self._ready >= lo + size):
                        return
                    writer.write_table(self._group(lo, lo + size), row_group_size=max(size, 1))
                    lo += size
                if not self.sizes:  # an empty table: its schema alone
                    writer.write_table(self.schema.empty_table())
                if not self._wait(lambda: self._footer is not None):
                    return
                writer.add_key_value_metadata(self._footer)
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # on disk before it replaces the old file
            finally:
                os.close(fd)
        except BaseException as e:  # raised again by ``finish``
            self._error = e

    def _write_spliced(self) -> None:
        """``_write`` by splicing (``_parquet_splice``): each row group's unchanged column chunks
        copied from the old file, its changed columns encoded; the footer that of pyarrow writing
        the schema and metadata (``_template``) with the row groups written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ._parquet_splice import SpliceWriter, encode

        writer, pool, queue, stamps = None, ThreadPoolExecutor(N_ENCODERS), deque(), {}
        try:
            writer = SpliceWriter(self.splice, self.tmp, list(self.schema.names))
            lo = 0
            for i, size in enumerate(self.sizes):
                if not self._wait(lambda: self._ready >= lo + size):
                    return
                # encoded in N_ENCODERS threads, written in order, at most 2 per thread held; the
                # time column (the same in every row group of a size) encoded once per size
                group = self._group(lo, lo + size)
                if size not in stamps:
                    stamps[size] = pool.submit(encode, group.select([self.stamp_col]), self.options)
                rest = group.drop_columns([self.stamp_col])
                queue.append((i, [pool.submit(encode, rest, self.options)] * (rest.num_columns > 0) + [stamps[size]]))
                while queue and (all(f.done() for f in queue[0][1]) or len(queue) > 2 * N_ENCODERS):
                    j, parts = queue.popleft()
                    writer.group(j, [f.result() for f in parts])
                lo += size
            while queue:
                j, parts = queue.popleft()
                writer.group(j, [f.result() for f in parts])
            if not self._wait(lambda: self._footer is not None):
                return
            sink = pa.BufferOutputStream()
            with pq.ParquetWriter(sink, self.schema, **self.options) as template:  # as ``_write`` opens it
                template.add_key_value_metadata(self._footer)
            writer.close(sink.getvalue().to_pybytes())  # fsynced
        except BaseException as e:  # raised again by ``finish``
            self._error = e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if writer is not None:
                writer.release()

    def finish(self, metadata: dict | None = None, replace: bool = True) -> dict:
        """Add ``metadata`` to the file's schema metadata, wait for the write, then put the file
        in place of the old one (one atomic rename; ``replace=False``: leave it at ``tmp``).
        Every row must have been ``advance``d. Returns ``{"files_written": 1, "bytes_written": ..}``."""
        import base64

        meta = {**(self.schema.metadata or {}), **{_bytes(k): _bytes(v) for k, v in (metadata or {}).items()}}
        arrow = base64.b64encode(self.schema.with_metadata(meta).serialize().to_pybytes())
        with self._cond:
            self._footer = {b"ARROW:schema": arrow, **meta}  # replaces the one written at the start
            self._ready = sum(self.sizes)
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
        size = self.tmp.stat().st_size
        if replace:
            replace_file(self.tmp, self.path)
        return {"files_written": 1, "bytes_written": size}

    def cancel(self) -> None:
        """Stop the write and delete what it wrote (the old file untouched)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        if self.tmp.exists():
            self.tmp.unlink()


def _bytes(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def replace_file(new: Path, path: Path) -> None:
    """Put the file ``new`` in place of ``path`` in one atomic step (a reader opens the old file
    or the new one), the rename itself made durable."""
    os.replace(new, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_parquet(path: Path, out: Path, timestamp_column: str, roots: list[str] = (), read: list[str] = ()) -> None:
    """Write the parquet file at ``path`` to ``out`` as a refresh that changes no root would
    (the same readers, writer settings, threads and fsync): the root columns ``roots`` read and
    written anew with their previous-roots columns (zeros) and the time column, the columns
    ``read`` read too (a refresh reads the supervoxel columns), every other column copied
    (``_parquet_splice``; where the file cannot be spliced: read and written). The floor of a
    refresh of that file."""
    import pyarrow.parquet as pq

    from ._parquet_splice import SplicePlan

    schema = pq.read_schema(path)
    ids = {c: read_ids(path, c)[0] for c in roots}
    ids.update({f"{c}_previous": np.zeros(len(ids[c]), np.uint64) for c in roots})
    keep = [c for c in schema.names if c not in ids and c != timestamp_column]
    plan = SplicePlan.of(path, keep)
    plan = None if isinstance(plan, str) else plan
    if plan is not None:
        if read:
            read_columns(path, list(read))
        table = None
    else:
        table = read_columns(path, [c for c in schema.names if c not in ids], dictionary=[timestamp_column])
    n = sum(row_groups(path))
    stamp = ""  # the file's time, written back
    if timestamp_column in schema.names and n:
        stamp = pq.ParquetFile(path).read_row_group(0, columns=[timestamp_column]).column(0)[0].as_py()
    ParquetStage(path, schema, table, ids, (timestamp_column, str(stamp)), schema.metadata, parquet_settings(path),
                 out, ready=n, splice=plan).finish(replace=False)
