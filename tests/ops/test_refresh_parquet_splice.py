"""refresh of parquet files by splicing (``_parquet_splice``): the columns a refresh does not
change are copied byte for byte, the root, previous-roots and time columns encoded anew.

Against the truth: a table built at materialization k (the truth's roots of its supervoxels)
and refreshed to k+1 equals the truth's table at k+1 row for row, over 11 row groups, two root
columns, each codec, dictionary-encoded and nullable columns; and against the full rewrite
(``SPLICE = False``): pyarrow, pandas and fastparquet read the same values, types, nulls,
schema and metadata (the refresh record) from both files. A file from fastparquet is spliced
too (its statistics dropped); a file with a feature the splice does not handle (page indexes, a
nested column, INT96 times) is rewritten whole, and equals the truth too."""
from __future__ import annotations

import json
import shutil
from decimal import Decimal

import fastparquet
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crantseg_dask.ops import _parquet_splice, _refresh_columns
from crantseg_dask.ops._refresh_store import RECORD_KEY, TIMESTAMP_COLUMN
from crantseg_dask.ops.refresh import refresh

GROUP = 37  # rows per row group: 400 rows make 11 groups, the last one short
KEPT = ["pre_supervoxel_id", "post_supervoxel_id", "weight", "note", "cell_type", "score", "partner"]


def _versions(truth) -> list[int]:
    return sorted(m["version"] for m in truth.edits["materializations"])


def _u64(values) -> np.ndarray:
    return np.asarray(values).astype(np.uint64)


def _table(truth, n: int, ta, tb, seed: int) -> pa.Table:
    """Synapses built by the truth at ``ta`` (two supervoxel and root columns; the first and last
    rows on supervoxels whose root changes by ``tb``), with a dictionary column, nullable float
    and integer columns (nulls in every row group) and the time column."""
    rng = np.random.default_rng(seed)
    svs = truth.supervoxels
    pre, post = svs[rng.integers(0, len(svs), n)], svs[rng.integers(0, len(svs), n)]
    movers = svs[truth.root_of(svs, ta) != truth.root_of(svs, tb)]
    assert len(movers), "no supervoxel changes root in this interval"
    for row in (0, n - 1):
        post[row] = movers[rng.integers(0, len(movers))]
    empty = rng.random(n) < 0.2
    kinds = pa.array(rng.choice(["KC", "PN", "LN"], n), pa.string()).dictionary_encode()
    return pa.table({
        "pre_supervoxel_id": pa.array(pre.astype(np.int64)), "post_supervoxel_id": pa.array(post.astype(np.int64)),
        "pre_root_id": pa.array(truth.root_of(pre, ta).astype(np.int64)),
        "post_root_id": pa.array(truth.root_of(post, ta).astype(np.int64)),
        "weight": pa.array(np.arange(n, dtype=np.int32)), "note": pa.array([f"s{i}" for i in range(n)]),
        "cell_type": pa.DictionaryArray.from_arrays(pa.array(np.where(empty, None, kinds.indices.to_numpy()),
                                                             pa.int32()), kinds.dictionary),
        "score": pa.array(np.where(empty, None, rng.random(n)), pa.float64()),
        "partner": pa.array(np.where(~empty, None, rng.integers(0, 10**12, n)), pa.int64()),
        TIMESTAMP_COLUMN: pa.array([ta.isoformat()] * n)})


def _spy(monkeypatch) -> list:
    """The files the splice wrote (``SpliceWriter.close`` calls), as they are written."""
    closed, real = [], _parquet_splice.SpliceWriter.close

    def close(self, template):
        closed.append(self.plan.path)
        return real(self, template)

    monkeypatch.setattr(_parquet_splice.SpliceWriter, "close", close)
    return closed


def _check_truth(truth, table: pa.Table, path, ta, tb) -> None:
    """The refreshed file equals the truth's table at ``tb`` row for row (roots, previous roots
    of the rows that moved, 0 elsewhere); the other columns as they were; the row groups kept."""
    out = pq.read_table(path)
    assert out.num_rows == table.num_rows
    for side in ("pre", "post"):
        svs = _u64(table[f"{side}_supervoxel_id"])
        want, before = truth.root_of(svs, tb), truth.root_of(svs, ta)
        moved = want != before
        assert (_u64(out[f"{side}_root_id"]) == want).all(), side
        prev = _u64(out[f"{side}_root_id_previous"])
        assert (prev[moved] == before[moved]).all() and (prev[~moved] == 0).all(), side
    for c in KEPT:
        assert out[c].equals(table[c]), c
    assert set(out[TIMESTAMP_COLUMN].to_pylist()) == {tb.isoformat()}
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == \
        [min(GROUP, table.num_rows - i) for i in range(0, table.num_rows, GROUP)]
    record = json.loads(pq.ParquetFile(path).schema_arrow.metadata[RECORD_KEY.encode()])[-1]
    assert record["from_timestamp"] == ta.isoformat() and record["to_timestamp"] == tb.isoformat()
    assert not list(path.parent.glob(f".{path.name}.refresh-*")), "leftovers beside the table"


def _chunk_bytes(path, group: int, name: str) -> bytes:
    """The bytes of column ``name``'s chunk in row group ``group`` (offsets as pyarrow reads them)."""
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(group).column(meta.schema.names.index(name))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(col.total_compressed_size)


def _valid_layout(path) -> None:
    """The file's layout as the format requires it, read by fastparquet's own parser: each row
    group's column chunks one after the other inside the data (between the magic and the
    footer), its file offset the first chunk's, its sizes the sums of its chunks'."""
    data = path.read_bytes()
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    assert data[:4] == data[-4:] == b"PAR1"
    end = 4
    for group in fastparquet.ParquetFile(str(path)).fmd.row_groups:
        spans = []
        for cc in group.columns:
            md = cc.meta_data
            start = md.dictionary_page_offset if md.dictionary_page_offset else md.data_page_offset
            spans.append((start, md.total_compressed_size, md.total_uncompressed_size))
        assert group.file_offset == spans[0][0]
        assert group.total_compressed_size == sum(c for _, c, _ in spans)
        assert group.total_byte_size == sum(u for _, _, u in spans)
        for start, size, _ in spans:
            assert start >= end
            end = start + size
    assert end <= footer_start


def _same_content(a, b) -> None:
    """pyarrow, pandas and fastparquet read the same from the files ``a`` and ``b``: values,
    types, nulls, schema and metadata, every column of every row group."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.equals(tb.schema, check_metadata=True)
    assert ta.equals(tb)
    ma, mb = pq.ParquetFile(a).metadata, pq.ParquetFile(b).metadata
    assert ma.metadata == mb.metadata and ma.num_rows == mb.num_rows and ma.num_row_groups == mb.num_row_groups
    assert ma.schema.equals(mb.schema)
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    for i in range(ma.num_row_groups):
        assert ma.row_group(i).num_rows == mb.row_group(i).num_rows
        for name in ta.column_names:
            assert fa.read_row_group(i, columns=[name]).equals(fb.read_row_group(i, columns=[name])), (i, name)
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    pd.testing.assert_frame_equal(fastparquet.ParquetFile(str(a)).to_pandas(), fastparquet.ParquetFile(str(b)).to_pandas())


@pytest.mark.parametrize("codec", ["snappy", "zstd", "gzip", "none"])
def test_spliced_refresh_equals_the_truth_and_the_full_rewrite(tmp_path, truth, local_spec, monkeypatch, codec):
    """Built at mat k, refreshed to k+1 by splicing: equal to the truth's table at k+1; the
    kept columns' chunks are the source's bytes (copied, not re-encoded); the same content as
    the same refresh rewriting the file whole; refreshed on to k+2 (a spliced file spliced
    again) still equal to the truth."""
    versions = _versions(truth)
    ta, tb, tc = (truth.materialization(v) for v in versions[:3])
    table = _table(truth, 400, ta, tb, seed=len(codec))
    src, spliced, whole = tmp_path / "src.parquet", tmp_path / "spliced.parquet", tmp_path / "whole.parquet"
    pq.write_table(table, src, row_group_size=GROUP, compression=codec)
    assert pq.ParquetFile(src).metadata.row_group(0).column(KEPT.index("cell_type") + 2).has_dictionary_page
    shutil.copy(src, spliced)
    shutil.copy(src, whole)
    closed = _spy(monkeypatch)
    rep = refresh(spliced, f"mat_{versions[1]}", dataset=local_spec)
    assert closed == [spliced] and rep.status == "refreshed"
    _check_truth(truth, table, spliced, ta, tb)
    _valid_layout(spliced)
    for i in range(pq.ParquetFile(src).metadata.num_row_groups):
        for name in KEPT:
            assert _chunk_bytes(spliced, i, name) == _chunk_bytes(src, i, name), (i, name)
    group = pq.ParquetFile(spliced).metadata.row_group(0)
    assert {group.column(i).compression for i in range(group.num_columns)} == {codec.upper().replace("NONE", "UNCOMPRESSED")}
    monkeypatch.setattr(_refresh_columns, "SPLICE", False)
    refresh(whole, f"mat_{versions[1]}", dataset=local_spec)
    assert closed == [spliced]  # the full rewrite: no splice
    _check_truth(truth, table, whole, ta, tb)
    _same_content(spliced, whole)
    monkeypatch.setattr(_refresh_columns, "SPLICE", True)
    refresh(spliced, f"mat_{versions[2]}", dataset=local_spec)
    assert closed == [spliced, spliced]
    _check_truth(truth, table, spliced, tb, tc)  # previous roots: those at k+1


@pytest.mark.parametrize("feature", ["page index", "nested column", "int96 times"])
def test_a_file_the_splice_does_not_handle_is_rewritten_whole(tmp_path, truth, local_spec, monkeypatch, feature):
    """A file with page indexes (offsets the splice would have to move), a nested column or a
    column pyarrow would store with another physical type (INT96 times) is not spliced (the
    reason named), rewritten whole, and equals the truth's table."""
    versions = _versions(truth)
    ta, tb = truth.materialization(versions[0]), truth.materialization(versions[1])
    table = _table(truth, 200, ta, tb, seed=3)
    extra = {"nested column": ("tags", pa.array([[i, i + 1] for i in range(table.num_rows)])),
             "int96 times": ("seen", pa.array(np.arange(table.num_rows) * 10**9, pa.timestamp("ns")))}.get(feature)
    if extra:
        table = table.append_column(*extra)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=GROUP, write_page_index=feature == "page index",
                   use_deprecated_int96_timestamps=feature == "int96 times")
    kept = [c for c in table.column_names if c not in ("pre_root_id", "post_root_id", TIMESTAMP_COLUMN)]
    reason = _parquet_splice.SplicePlan.of(path, kept)
    assert reason == {"page index": "page indexes", "nested column": "nested columns",
                      "int96 times": "column 'seen' is stored as a full rewrite would not store it"}[feature]
    closed = _spy(monkeypatch)
    rep = refresh(path, f"mat_{versions[1]}", dataset=local_spec)
    assert rep.status == "refreshed" and closed == []
    _check_truth(truth, table, path, ta, tb)
    if extra:
        assert pq.read_table(path)[extra[0]].equals(table[extra[0]])


def test_thrift_round_trip_is_exact(tmp_path):
    """The footers pyarrow writes (several types, statistics, a page index, 8-bit integer
    widths) read and written back by ``_thrift`` are the same bytes."""
    from crantseg_dask.ops._thrift import dumps, loads

    n = 100
    table = pa.table({"u": pa.array(np.arange(n), pa.uint64()), "i8": pa.array(np.arange(n) % 100, pa.int8()),
                      "f": pa.array(np.arange(n) / 3), "s": [f"x{i}" for i in range(n)],
                      "t": pa.array(np.arange(n), pa.timestamp("ms", tz="UTC")), "l": [[1, 2]] * n,
                      "dec": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
                      "empty": pa.array([None] * n, pa.int32())})
    for i, kw in enumerate([{}, {"write_page_index": True}, {"compression": "zstd", "version": "1.0"}]):
        path = tmp_path / f"{i}.parquet"
        pq.write_table(table, path, row_group_size=30, **kw)
        data = path.read_bytes()
        size = int.from_bytes(data[-8:-4], "little")
        footer = data[-8 - size: -8]
        assert dumps(loads(footer)) == footer, kw


def test_the_copy_goes_through_user_space_where_the_kernel_cannot(tmp_path, truth, local_spec, monkeypatch):
    """``copy_file_range`` refused (another file system, an old kernel): the kept chunks are
    copied with reads and writes, the same bytes; the file equals the truth's table."""
    import errno
    import os

    def refuse(*args, **kw):
        raise OSError(errno.EXDEV, "cross-device")

    versions = _versions(truth)
    ta, tb = truth.materialization(versions[0]), truth.materialization(versions[1])
    table = _table(truth, 200, ta, tb, seed=8)
    src, path = tmp_path / "src.parquet", tmp_path / "t.parquet"
    pq.write_table(table, src, row_group_size=GROUP)
    shutil.copy(src, path)
    monkeypatch.setattr(os, "copy_file_range", refuse)
    closed = _spy(monkeypatch)
    refresh(path, f"mat_{versions[1]}", dataset=local_spec)
    assert closed == [path]
    _check_truth(truth, table, path, ta, tb)
    _valid_layout(path)
    for i in range(pq.ParquetFile(src).metadata.num_row_groups):
        for name in KEPT:
            assert _chunk_bytes(path, i, name) == _chunk_bytes(src, i, name), (i, name)


def test_a_file_written_by_fastparquet_is_spliced_and_equals_the_truth(tmp_path, truth, local_spec, monkeypatch):
    """A file from another writer (fastparquet: its own schema annotations and statistics) is
    spliced: equal to the truth's table, the same content as the full rewrite, the kept chunks
    the source's bytes without the other writer's statistics."""
    versions = _versions(truth)
    ta, tb = truth.materialization(versions[0]), truth.materialization(versions[1])
    frame = _table(truth, 200, ta, tb, seed=6).drop_columns(["cell_type", "partner"]).to_pandas()
    src, spliced, whole = tmp_path / "src.parquet", tmp_path / "spliced.parquet", tmp_path / "whole.parquet"
    fastparquet.write(str(src), frame, row_group_offsets=GROUP, compression="SNAPPY", stats=True)
    assert pq.ParquetFile(src).metadata.created_by.startswith("fastparquet")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    shutil.copy(src, spliced)
    shutil.copy(src, whole)
    closed = _spy(monkeypatch)
    refresh(spliced, f"mat_{versions[1]}", dataset=local_spec)
    assert closed == [spliced]
    out = pq.read_table(spliced)
    for side in ("pre", "post"):
        svs = _u64(table[f"{side}_supervoxel_id"])
        assert (_u64(out[f"{side}_root_id"]) == truth.root_of(svs, tb)).all(), side
    for c in ("pre_supervoxel_id", "post_supervoxel_id", "weight", "note", "score"):
        assert out[c].equals(table[c]), c
    _valid_layout(spliced)
    meta, names = pq.ParquetFile(spliced).metadata, pq.ParquetFile(spliced).metadata.schema.names
    for i in range(meta.num_row_groups):
        for name in ("pre_supervoxel_id", "note", "score"):
            assert _chunk_bytes(spliced, i, name) == _chunk_bytes(src, i, name), (i, name)
            assert not meta.row_group(i).column(names.index(name)).is_stats_set
        assert meta.row_group(i).column(names.index("pre_root_id")).is_stats_set  # written by pyarrow
    monkeypatch.setattr(_refresh_columns, "SPLICE", False)
    refresh(whole, f"mat_{versions[1]}", dataset=local_spec)
    _same_content(spliced, whole)
