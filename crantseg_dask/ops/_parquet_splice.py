"""Splice a refreshed parquet file: the unchanged column chunks copied byte for byte, only the
changed columns encoded.

A parquet file is ``PAR1``, the column chunks of each row group, the thrift ``FileMetaData``,
its 4-byte length and ``PAR1``. A refresh changes a few columns (the root columns, their
``_previous`` columns, the time column); every other column chunk (supervoxel columns, the
user's columns) is copied verbatim from the old file (``os.copy_file_range``: no decoding, no
re-compression). The changed columns of each row group are encoded by pyarrow (the writer
options of a full rewrite) into a small parquet file in memory, whose column chunks are lifted
out. The footer is that of pyarrow writing the new schema (the same schema elements, key-value
metadata, column orders and ``created_by`` as a full rewrite), with the row groups' column
chunk metadata, their offsets moved to where the chunks now are.

A copied chunk decodes under the new schema element as under its old one when both have the
same physical type (and length), repetition and no children (the logical annotations are
pyarrow's for the arrow type it read the column as: a file from another writer, say
fastparquet, is spliced too); its statistics are kept when the old file was written by the
same pyarrow (``created_by``), else dropped (the new ``created_by`` would vouch for another
writer's sort orders and bugs). The footers are read and written with ``_thrift`` (every field
kept as it was, with its wire type).

A file with a feature whose offsets this module does not move (page indexes, bloom filters,
encryption, column chunks in other files), nested columns, a column a full rewrite would store
with another physical type or repetition (INT96 times, say), or no rows is not spliced:
``SplicePlan.of`` gives the reason and the caller rewrites the file whole.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._thrift import I64, LIST, STRUCT, Field, List, Struct, dumps, loads

__all__ = ["SplicePlan", "SpliceWriter", "encode", "read_footer"]

MAGIC = b"PAR1"
# field numbers of parquet.thrift
CC_FILE_PATH, CC_FILE_OFFSET, CC_META = 1, 2, 3
CC_INDEXES = (4, 5, 6, 7)         # offset / column index offsets and lengths
CC_CRYPTO = (8, 9)
MD_TOTAL_UNCOMPRESSED, MD_TOTAL_COMPRESSED = 6, 7
MD_DATA_PAGE, MD_INDEX_PAGE, MD_DICT_PAGE = 9, 10, 11
MD_BLOOM = (14, 15)
FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS = 2, 3, 4
FMD_CRYPTO = (8, 9)
FMD_CREATED_BY = 6
MD_STATISTICS = 12
SE_PHYSICAL = (1, 3, 5)  # a schema element's physical type, repetition, children
FIXED_LEN_BYTE_ARRAY = 7  # (then its type_length, field 2, too)


def read_footer(path: Path) -> tuple[Struct, int]:
    """The ``FileMetaData`` of the parquet file at ``path`` (a ``_thrift.Struct``) and the
    offset where it starts; ValueError where the file does not end in ``PAR1``."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(size - 8, 0))
        tail = f.read(8)
        n = int.from_bytes(tail[:4], "little")
        if head != MAGIC or tail[4:] != MAGIC or n + 12 > size:
            raise ValueError(f"{path}: not a plain parquet file (magic {head!r} ... {tail[4:]!r})")
        f.seek(size - 8 - n)
        raw = f.read(n)
    return loads(raw), size - 8 - n


def _footer_of(data: bytes) -> Struct:
    n = int.from_bytes(data[-8:-4], "little")
    return loads(data[-8 - n: -8])


def _span(meta: Struct) -> tuple[int, int]:
    """(start, length) of a column chunk's pages: from its dictionary page where it has one."""
    start = meta.value(MD_DATA_PAGE)
    dict_page = meta.value(MD_DICT_PAGE)
    if dict_page is not None and 0 < dict_page < start:
        start = dict_page
    return start, meta.value(MD_TOTAL_COMPRESSED)


def _template(schema, options: dict) -> bytes:
    """A parquet file without rows as pyarrow writes ``schema`` with ``options`` (its footer:
    the schema elements, column orders and ``created_by`` of a full rewrite)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, schema, **_only(options, schema.names)).close()
    return sink.getvalue().to_pybytes()


def _only(options: dict, names: list[str]) -> dict:
    """Writer ``options`` restricted to the columns ``names``."""
    out = dict(options)
    if isinstance(out.get("compression"), dict):
        out["compression"] = {c: v for c, v in out["compression"].items() if c in names}
    for key in ("use_dictionary", "write_statistics"):
        if isinstance(out.get(key), (list, tuple)):
            out[key] = [c for c in out[key] if c in names]
    return out


@dataclass
class SplicePlan:
    """What a splice of the parquet file ``path`` copies: the columns ``keep`` (the source's
    column index of each, per row group), checked to be copyable as they are."""

    path: Path
    footer: object          # the source ``FileMetaData``
    footer_start: int
    keep: list[str]
    index: dict             # kept column -> its position in the source's row groups
    statistics: bool = True  # the copied chunks keep their statistics (written by this pyarrow)

    @classmethod
    def of(cls, path: Path, keep: list[str]) -> "SplicePlan | str":
        """The plan to splice ``path`` keeping the columns ``keep`` as they are, or the reason
        it cannot be spliced (a str: then rewrite the file whole)."""
        import pyarrow.parquet as pq

        try:
            fmd, start = read_footer(path)
        except Exception as e:  # unreadable: the full rewrite's reader says why
            return f"footer not read: {e}"
        if any(k in fmd for k in FMD_CRYPTO):
            return "encrypted footer"
        groups = list(fmd.value(FMD_ROW_GROUPS, List(STRUCT, [])).items)
        if not groups or not fmd.value(FMD_NUM_ROWS) or any(not g.value(3) for g in groups):
            return "no rows, or an empty row group"
        elements = fmd.value(FMD_SCHEMA).items
        if elements[0].value(5) != len(elements) - 1 or any(e.value(5) for e in elements[1:]):
            return "nested columns"
        names = [e.value(4).decode() for e in elements[1:]]
        if len(set(names)) != len(names) or not set(keep) <= set(names):
            return "columns not found once each"
        index = {c: names.index(c) for c in keep}
        arrow = pq.read_schema(path)
        template = _footer_of(_template(arrow.remove_metadata(), {}))
        mine = template.value(FMD_SCHEMA).items
        for c in keep:  # stored as a full rewrite would store its values, else not copyable
            want, have = mine[1 + arrow.names.index(c)], elements[1 + index[c]]
            if any(want.value(k) != have.value(k) for k in SE_PHYSICAL) or \
                    (want.value(1) == FIXED_LEN_BYTE_ARRAY and want.value(2) != have.value(2)):
                return f"column {c!r} is stored as a full rewrite would not store it"
        spans = []
        for g in groups:
            cols = g.value(1).items
            if len(cols) != len(names):
                return "a row group without every column"
            for c in keep:
                cc = cols[index[c]]
                meta = cc.value(CC_META)
                if meta is None or CC_FILE_PATH in cc or any(k in cc for k in CC_CRYPTO):
                    return "column chunks in other files or encrypted"
                if any(k in cc for k in CC_INDEXES):
                    return "page indexes"
                if any(k in meta for k in MD_BLOOM):
                    return "bloom filters"
                if MD_INDEX_PAGE in meta:
                    return "index pages"
            spans += [_span(cc.value(CC_META)) for cc in cols]
        spans.sort()
        ends = np.array([s + n for s, n in spans])
        if spans[0][0] < 4 or ends[-1] > start or (len(spans) > 1 and (ends[:-1] > [s for s, _ in spans[1:]]).any()):
            return "column chunks overlapping or outside the data"
        # another writer's statistics (its sort orders, its known bugs) are not vouched for by
        # the new file's ``created_by`` (pyarrow's): they are dropped from the copied chunks
        own = fmd.value(FMD_CREATED_BY) == template.value(FMD_CREATED_BY)
        return cls(Path(path), fmd, start, list(keep), index, own)


class SpliceWriter:
    """Writes a spliced parquet file at ``out``, row group by row group (``group``), then its
    footer (``close``).

    Parameters
    ----------
    plan : SplicePlan
        The source file and the columns copied from it.
    out : Path
        The file written (created or truncated).
    names : list of str
        The new file's columns in order: those of ``plan.keep`` copied, the others given to
        ``group``.
    """

    def __init__(self, plan: SplicePlan, out: Path, names: list[str]):
        self.plan, self.names = plan, list(names)
        self.src = os.open(plan.path, os.O_RDONLY)
        self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos, self.groups = 0, []
        self._write(MAGIC)

    def _write(self, data) -> None:
        _write_all(self.fd, data)
        self.pos += len(data)

    def _copy(self, offset: int, length: int) -> None:
        """Bytes ``offset .. offset + length`` of the source appended (in the kernel where it can)."""
        done = 0
        with contextlib.suppress(OSError):  # another file system, an old kernel: through user space below
            while done < length:
                n = os.copy_file_range(self.src, self.fd, length - done, offset + done)
                if n == 0:
                    break
                done += n
        while done < length:
            piece = os.pread(self.src, min(length - done, 1 << 24), offset + done)
            if not piece:
                raise OSError(f"{self.plan.path}: ends before byte {offset + length}")
            _write_all(self.fd, piece)
            done += len(piece)
        self.pos += length

    def group(self, i: int, parts: list[bytes]) -> None:
        """Row group ``i``: the columns of ``plan.keep`` copied from the source's row group
        ``i``, the others lifted from ``parts`` (``encode``: parquet files of one row group
        holding them)."""
        fresh, owner = {}, {}
        for data in parts:
            (made,) = _footer_of(data).value(FMD_ROW_GROUPS).items
            for cc in made.value(1).items:
                name = cc.value(CC_META).value(3).items[0].decode()
                fresh[name], owner[name] = cc, data
        source = self.plan.footer.value(FMD_ROW_GROUPS).items[i]
        if {n.value(3) for n in (_footer_of(d) for d in parts)} != {source.value(3)}:
            raise ValueError(f"row group {i}: not the {source.value(3)} rows of {self.plan.path}")
        columns = []
        for name in self.names:
            if name in fresh:
                cc = fresh[name]
                start, n = _span(cc.value(CC_META))
                at = self.pos
                self._write(owner[name][start: start + n])
            else:
                cc = source.value(1).items[self.plan.index[name]]
                start, n = _span(cc.value(CC_META))
                at = self.pos
                self._copy(start, n)
            columns.append(_moved(cc, at - start, keep_statistics=name in fresh or self.plan.statistics))
        metas = [cc.value(CC_META) for cc in columns]
        self.groups.append(Struct({
            1: Field(LIST, List(STRUCT, columns)),
            2: Field(I64, sum(m.value(MD_TOTAL_UNCOMPRESSED) for m in metas)),
            3: Field(I64, source.value(3)),
            5: Field(I64, _span(metas[0])[0]),
            6: Field(I64, sum(m.value(MD_TOTAL_COMPRESSED) for m in metas))}))
        os.fdatasync(self.fd)  # on disk as it goes: the final fsync has only the footer left

    def close(self, template: bytes) -> int:
        """Write the footer: that of ``template`` (a file without rows as pyarrow writes the new
        schema and metadata) with the row groups written. Returns the file's size."""
        head = Struct(_footer_of(template))
        head[FMD_NUM_ROWS] = Field(I64, sum(g.value(3) for g in self.groups))
        head[FMD_ROW_GROUPS] = Field(LIST, List(STRUCT, self.groups))
        footer = dumps(head)
        self._write(footer + len(footer).to_bytes(4, "little") + MAGIC)
        os.fsync(self.fd)
        self.release()
        return self.pos

    def release(self) -> None:
        for fd in (self.src, self.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.src = self.fd = -1


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def encode(table, options: dict) -> bytes:
    """``table`` (the changed columns of one row group) as a parquet file of one row group,
    written by pyarrow with the writer ``options`` (those of a full rewrite; thread-safe)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=max(len(table), 1), **_only(options, table.column_names))
    return sink.getvalue().to_pybytes()


def _moved(cc: Struct, delta: int, keep_statistics: bool = True) -> Struct:
    """Column chunk metadata ``cc`` with its page offsets moved by ``delta`` bytes (a copy;
    without its statistics unless ``keep_statistics``)."""
    cc, meta = Struct(cc), Struct(cc.value(CC_META))
    if not keep_statistics:
        meta.pop(MD_STATISTICS, None)
    for n in (MD_DATA_PAGE, MD_DICT_PAGE):
        if meta.value(n):
            meta[n] = Field(meta[n].type, meta[n].value + delta)
    if cc.value(CC_FILE_OFFSET):
        cc[CC_FILE_OFFSET] = Field(cc[CC_FILE_OFFSET].type, cc[CC_FILE_OFFSET].value + delta)
    cc[CC_META] = Field(STRUCT, meta)
    return cc
