"""refresh of parquet files written row group by row group (``_refresh_parquet``), against the
truth: a table built at materialization k and refreshed to k+1 equals the table the truth builds
at k+1, row for row, over several row groups, with changed rows in the first and last groups;
a refresh killed mid-write leaves the old file and the rerun completes it."""
from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crantseg_dask.ops import refresh as refresh_module
from crantseg_dask.ops._refresh_parquet import copy_parquet
from crantseg_dask.ops._refresh_store import RECORD_KEY, TIMESTAMP_COLUMN, RefreshTable
from crantseg_dask.ops.refresh import refresh
from crantseg_dask.testing.kill import kill_at

GROUP = 37  # rows per row group: 400 rows make 11 groups, the last one short


def _versions(truth) -> list[int]:
    return sorted(m["version"] for m in truth.edits["materializations"])


def _u64(series) -> np.ndarray:
    return series.to_numpy().astype(np.uint64)


def _movers(truth, ta, tb) -> np.ndarray:
    """Supervoxels whose root changes between ``ta`` and ``tb`` (the truth's replay)."""
    svs = truth.supervoxels
    return svs[truth.root_of(svs, ta) != truth.root_of(svs, tb)]


def _table(truth, n: int, ta, tb, seed: int) -> pd.DataFrame:
    """Synapses built by the truth at ``ta``; the first and last rows (and the first row of the
    last row group) on supervoxels whose root changes by ``tb``."""
    rng = np.random.default_rng(seed)
    svs = truth.supervoxels
    pre, post = svs[rng.integers(0, len(svs), n)], svs[rng.integers(0, len(svs), n)]
    movers = _movers(truth, ta, tb)
    assert len(movers), "no supervoxel changes root in this interval"
    last_group = (n - 1) // GROUP * GROUP
    for row in (0, last_group, n - 1):
        post[row] = movers[rng.integers(0, len(movers))]
    return pd.DataFrame({"pre_supervoxel_id": pre.astype(np.int64), "post_supervoxel_id": post.astype(np.int64),
                         "pre_root_id": truth.root_of(pre, ta).astype(np.int64),
                         "post_root_id": truth.root_of(post, ta).astype(np.int64),
                         "weight": np.arange(n, dtype=np.int32), "note": [f"s{i}" for i in range(n)],
                         TIMESTAMP_COLUMN: ta.isoformat()})


def _write(table: pd.DataFrame, path, compression: str = "snappy") -> None:
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path, row_group_size=GROUP,
                   compression=compression)


def _first_interval_file(truth, tmp_path, n: int, seed: int):
    """``_table`` of ``n`` rows between the first two materializations, written to ``t.parquet``:
    (path, table, ta, tb, the refresh target "mat_<second version>")."""
    versions = _versions(truth)
    ta, tb = truth.materialization(versions[0]), truth.materialization(versions[1])
    table = _table(truth, n, ta, tb, seed=seed)
    path = tmp_path / "t.parquet"
    _write(table, path)
    return path, table, ta, tb, f"mat_{versions[1]}"


def _check_against_truth(truth, table: pd.DataFrame, path, ta, tb, rep=None) -> pd.DataFrame:
    """The refreshed file equals the truth's table at ``tb`` row for row; the previous roots are
    those of the rows whose root changed; the other columns and the file's layout are kept."""
    out = pd.read_parquet(path)
    assert len(out) == len(table)
    for side in ("pre", "post"):
        want = truth.root_of(_u64(table[f"{side}_supervoxel_id"]), tb)
        before = truth.root_of(_u64(table[f"{side}_supervoxel_id"]), ta)
        assert (_u64(out[f"{side}_root_id"]) == want).all(), side
        moved = want != before
        prev = _u64(out[f"{side}_root_id_previous"])
        assert (prev[moved] == before[moved]).all() and (prev[~moved] == 0).all(), side
        if rep is not None:
            assert rep.rows_changed[f"{side}_root_id"] == int(moved.sum())
    for c in ("pre_supervoxel_id", "post_supervoxel_id", "weight", "note"):
        assert (out[c].to_numpy() == table[c].to_numpy()).all(), c
    assert (out[TIMESTAMP_COLUMN].astype(str) == tb.isoformat()).all()
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == \
        [min(GROUP, len(table) - i) for i in range(0, len(table), GROUP)]
    assert not list(path.parent.glob(f".{path.name}.refresh-*")), "leftovers beside the table"
    return out


def test_several_row_groups_refreshed_equal_the_truth_at_each_next_materialization(tmp_path, truth, local_spec):
    """Built at mat k, refreshed to k+1, for each k: equal to the truth's table at k+1, row for
    row, over 11 row groups (changed rows in the first and the last); zstd stays zstd; the
    record names the from/to times; refreshed on from k+1 to k+2 it still equals the truth."""
    versions = _versions(truth)
    chained = None
    for a, b in zip(versions, versions[1:]):
        ta, tb = truth.materialization(a), truth.materialization(b)
        table = _table(truth, 400, ta, tb, seed=a)
        path = tmp_path / f"t{a}.parquet"
        _write(table, path, compression="zstd")
        rep = refresh(path, f"mat_{b}", dataset=local_spec)
        assert rep.status == "refreshed"
        out = _check_against_truth(truth, table, path, ta, tb, rep)
        moved = _u64(out["post_root_id_previous"]) != 0
        assert moved[0] and moved[(len(out) - 1) // GROUP * GROUP] and moved[-1]  # first and last groups
        group = pq.ParquetFile(path).metadata.row_group(0)
        assert {group.column(i).compression for i in range(group.num_columns)} == {"ZSTD"}
        record = json.loads(pq.ParquetFile(path).schema_arrow.metadata[RECORD_KEY.encode()])[-1]
        assert record["from_timestamp"] == ta.isoformat() and record["to_timestamp"] == tb.isoformat()
        if chained is not None:  # the previous step's file, refreshed once more
            c_path, c_table, c_from = chained
            refresh(c_path, f"mat_{b}", dataset=local_spec)
            _check_against_truth(truth, c_table, c_path, c_from, tb)
        chained = (path, table, tb)


def test_the_check_reads_the_roots_as_they_were(tmp_path, truth, local_spec, monkeypatch):
    """The validity check runs while the window's rows are refreshed and the file is staged: it
    must see the table's roots at its time, not the refreshed ones (roots created after it,
    which it would count as outdated already). Its read of the roots is held until the file is
    staged."""
    path, table, ta, tb, to = _first_interval_file(truth, tmp_path, 200, seed=11)
    staged = threading.Event()
    real_check, real_stage = refresh_module._unique_roots, RefreshTable.stage

    def stage(self, *args, **kw):
        try:
            return real_stage(self, *args, **kw)
        finally:
            staged.set()

    def check(*args, **kw):
        assert staged.wait(60), "the file was not staged before the check answered"
        return real_check(*args, **kw)

    monkeypatch.setattr(RefreshTable, "stage", stage)
    monkeypatch.setattr(refresh_module, "_unique_roots", check)
    rep = refresh(path, to, dataset=local_spec)
    assert rep.stale_roots == 0 and rep.unknown_roots == 0
    _check_against_truth(truth, table, path, ta, tb, rep)


def test_a_root_outdated_at_the_table_time_drops_the_staged_file(tmp_path, truth, local_spec):
    """A root already superseded at the table's time is found by the check after the file was
    staged: the staged file is dropped and the table written again with that row updated (the
    truth's root of its supervoxel); no leftovers."""
    versions = _versions(truth)
    ta, tb = truth.materialization(versions[1]), truth.materialization(versions[2])
    table = _table(truth, 120, ta, tb, seed=5)
    old = next(r for r in truth.all_roots.tolist() if truth.superseded(r) and truth.superseded(r) < ta)
    sv = int(truth.leaves(old)[0])
    table.loc[50, ["pre_supervoxel_id", "pre_root_id"]] = [sv, old]
    path = tmp_path / "t.parquet"
    _write(table, path)
    rep = refresh(path, f"mat_{versions[2]}", dataset=local_spec)
    assert rep.stale_roots == 1
    out = pd.read_parquet(path)
    assert _u64(out["pre_root_id"])[50] == truth.root_of(np.array([sv], np.uint64), tb)[0]
    assert _u64(out["pre_root_id_previous"])[50] == old
    want = truth.root_of(_u64(table["post_supervoxel_id"]), tb)
    assert (_u64(out["post_root_id"]) == want).all()
    assert not list(tmp_path.glob(".t.parquet.refresh-*"))


KILLED = r"""
import sys, time
from crantseg_dask.ops import _refresh_parquet as rp
from crantseg_dask.ops.refresh import refresh

table, to, dataset, stage = sys.argv[1:5]

def hang():
    print("HANG", flush=True)
    time.sleep(600)

if stage == "mid-write":      # two row groups of the new file written, the rest not
    real_group, done = rp.ParquetStage._group, []
    def group(self, lo, hi):
        if len(done) == 2:
            hang()
        done.append(lo)
        return real_group(self, lo, hi)
    rp.ParquetStage._group = group
elif stage == "before-rename":  # the new file written whole and fsynced beside the old one
    rp.replace_file = lambda new, path: hang()
refresh(table, to, dataset=dataset)
"""


@pytest.mark.parametrize("stage", ["mid-write", "before-rename"])
def test_killed_mid_write_leaves_the_old_file_and_the_rerun_completes(tmp_path, truth, local_spec, stage):
    path, table, ta, tb, to = _first_interval_file(truth, tmp_path, 300, seed=2)
    before = pd.read_parquet(path)
    kill_at(KILLED, [str(path), to, str(local_spec.path), stage], stage)
    leftovers = list(tmp_path.glob(".t.parquet.refresh-*"))
    assert leftovers, "the killed refresh left no work in progress: it was not killed mid-write"
    pd.testing.assert_frame_equal(pd.read_parquet(path), before)  # the old file, whole
    rep = refresh(path, to, dataset=local_spec)
    assert rep.status == "refreshed"
    _check_against_truth(truth, table, path, ta, tb, rep)


@pytest.mark.parametrize("roots", [[], ["pre_root_id", "post_root_id"]])
def test_copy_parquet_reads_and_writes_the_file_unchanged(tmp_path, truth, roots):
    """The benchmark's floor (``copy_parquet``) writes the same rows, columns and row groups
    (with ``roots``: their previous-roots columns added, all 0)."""
    ta = truth.materialization(_versions(truth)[0])
    table = _table(truth, 100, ta, truth.materialization(_versions(truth)[1]), seed=4)
    _write(table, tmp_path / "a.parquet")
    copy_parquet(tmp_path / "a.parquet", tmp_path / "b.parquet", TIMESTAMP_COLUMN, roots=roots,
                 read=["pre_supervoxel_id"])
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    b[TIMESTAMP_COLUMN] = b[TIMESTAMP_COLUMN].astype(str)
    for c in roots:
        assert (b.pop(f"{c}_previous") == 0).all()
        b[c] = b[c].astype(a[c].dtype)
    pd.testing.assert_frame_equal(a, b)
    assert pq.ParquetFile(tmp_path / "b.parquet").metadata.num_row_groups == 3


def test_a_row_group_is_written_only_once_its_rows_are_final(tmp_path, truth, local_spec, monkeypatch):
    """The first row group's rows are mapped first and written while the rest are mapped: the
    later row groups must wait for their rows. The mapping of the rest is held (up to 3 s)
    until the writer takes a later row group; a writer that did not wait would take it with the
    old roots, and the file would differ from the truth's table."""
    from crantseg_dask.ops import _refresh_parquet as rp

    path, table, ta, tb, to = _first_interval_file(truth, tmp_path, 300, seed=9)
    later = threading.Event()
    real_group, real_successors = rp.ParquetStage._group, refresh_module._successors
    calls = []

    def group(self, lo, hi):
        if lo >= GROUP:
            later.set()
        return real_group(self, lo, hi)

    def successors(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second wave: the rows after the first row group
            later.wait(3)
        return real_successors(*args, **kw)

    monkeypatch.setattr(rp.ParquetStage, "_group", group)
    monkeypatch.setattr(refresh_module, "_successors", successors)
    rep = refresh(path, to, dataset=local_spec)
    assert len(calls) == 2, "the window's rows were not mapped in two waves"
    _check_against_truth(truth, table, path, ta, tb, rep)


def test_memo_asks_each_pair_once_over_the_waves():
    """The waves' (root, supervoxel) pairs: those asked in an earlier wave are looked up, the
    others asked (and only they); the answers are those of asking every pair directly."""
    from crantseg_dask.ops.refresh import _Memo

    rng = np.random.default_rng(0)
    asked = []

    def fn(pairs):
        asked.append(pairs.copy())
        return pairs[:, 0] * np.uint64(1000) + pairs[:, 1]

    memo = _Memo(fn)
    first = np.unique(rng.integers(1, 50, (40, 2)).astype(np.uint64), axis=0)
    second = np.unique(np.concatenate([first[::2], rng.integers(1, 50, (20, 2)).astype(np.uint64)]), axis=0)
    assert (memo(first) == fn(first)).all() and (memo(second) == fn(second)).all()
    seen = {tuple(p) for p in first.tolist()}
    new = [tuple(p) for p in second.tolist() if tuple(p) not in seen]
    assert new and len(new) < len(second)
    assert len(asked) == 4 and [tuple(p) for p in asked[2].tolist()] == new  # the memo's second call: new pairs only


@pytest.mark.parametrize("small_window", [True, False])
def test_roots_only_over_row_groups_equal_the_truth_update(tmp_path, truth, local_spec, monkeypatch, small_window):
    """Two root columns without supervoxels, 11 row groups, each step k -> k+1: every root
    equals the truth's update step at k+1 (``Truth.update``: the root holding most of its
    supervoxels), the rows holding no expired root untouched; with a small window its roots are
    mapped ahead while the rows are found (``PREFILL``), else wave by wave."""
    monkeypatch.setattr(refresh_module, "PREFILL", 10**6 if small_window else 0)
    versions = _versions(truth)
    for a, b in zip(versions, versions[1:]):
        ta, tb = truth.materialization(a), truth.materialization(b)
        table = _table(truth, 400, ta, tb, seed=20 + a)[["pre_root_id", "post_root_id", "weight", TIMESTAMP_COLUMN]]
        path = tmp_path / f"r{a}.parquet"
        _write(table, path)
        rep = refresh(path, f"mat_{b}", dataset=local_spec)
        out = pd.read_parquet(path)
        for col in ("pre_root_id", "post_root_id"):
            old = _u64(table[col])
            want = np.array([truth.update(r, tb)[0] for r in old.tolist()], dtype=np.uint64)
            assert (_u64(out[col]) == want).all(), (a, col)
            assert rep.rows_touched[col] == int(sum(not truth.is_latest(r, tb) for r in old.tolist()))
            assert (_u64(out[f"{col}_previous"]) == np.where(want != old, old, 0)).all()
        assert (out["weight"] == table["weight"]).all()
        assert not list(tmp_path.glob(".*.refresh-*"))
