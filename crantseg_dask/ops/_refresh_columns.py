"""The columns of a table that ``refresh`` reads, each read on first use: a job's Zarr arrays
and a parquet file's (arrow) columns, and the arrow helpers ``_refresh_store`` reads them with.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ._refresh_parquet import parquet_settings, read_columns, read_ids, row_groups
from ._zarr_chunks import ChunkCodec

#: parquet: write a refreshed file by splicing where it can (``_parquet_splice``); False: rewrite it whole
SPLICE = True


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
