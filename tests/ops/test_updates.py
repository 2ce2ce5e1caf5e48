"""is_latest_roots / update_ids: checklist 5-8 and 31-41, anchor §8 items 7, 10, 12, 15."""
import collections
import dataclasses
import logging
from datetime import datetime, timedelta, timezone

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from crantseg_dask.dataset.generate import make_dataset
from crantseg_dask.dataset.layout import PRESETS
from crantseg_dask.dataset.truth import Truth
from crantseg_dask.ops import latest, updates
from crantseg_dask.ops.updates import (
    UPDATE_DTYPE,
    is_latest_kernel,
    is_latest_roots,
    is_latest_roots_graph,
    overlap_kernel,
    update_cache,
    update_ids,
    update_ids_graph,
)
from crantseg_dask.sources import open_source

STAMPS = ["before", "between", "mat_2", "now"]
COLUMNS = ["old_id", "new_id", "confidence", "changed"]


def when(truth, label):
    """(argument to pass, time the truth is evaluated at)."""
    ops = truth.operation_times()
    if label == "before":
        t = (truth.created(truth.all_roots[0]) + (ops[0] - truth.created(truth.all_roots[0])) / 2).replace(microsecond=0)
        return int(t.timestamp()), t  # unix seconds
    if label == "between":
        t = (ops[9] + (ops[10] - ops[9]) / 2).replace(microsecond=0)
        return t.replace(tzinfo=None).isoformat(), t
    if label == "mat_2":
        return "mat_2", truth.materialization(2)
    return None, ops[-1] + timedelta(days=1)


def fixed_hierarchy(truth) -> bool:
    """Whether the dataset's layer >= 4 chunks follow PyChunkedGraph (issue 16.1, generator > 1)."""
    return truth.info.get("generator_version", 1) > 1


def check_update(truth, old, new, conf, t, layer=2, sv=0):
    """Hold the engine's answer ``(new, conf)`` for ``old`` at ``t`` (``stop_layer=layer``, the
    row's supervoxel ``sv`` or 0) to the truth, which answers by supervoxel overlap
    (``Truth.update``). With a supervoxel, a stale root takes that supervoxel's root. Otherwise:

    * current, unknown, or no supervoxel in any root at ``t``: exactly the truth's answer;
    * else ``new`` is a current root holding some of the old root's supervoxels, and the
      confidence is a share at the level used: either the supervoxel level (``new`` is the truth's
      winner and ``conf`` its share), or layer ``layer``: ``conf`` is m / (the old root's
      layer-``layer`` nodes, from the truth) and ``new`` wholly holds at least m of them. When
      no node lies wholly in a current root, only the supervoxel level is possible; a sole holder
      is always the answer; at layer 1 the two levels coincide (exactly the truth).
    """
    old, new = int(old), int(new)
    want = truth.update(old, t)
    if sv and not truth.is_latest(old, t) and old in truth.objects and truth.root_of([sv], t)[0]:
        assert (new, conf) == (int(truth.root_of([sv], t)[0]), 1.0), old
        return
    held = truth.holders(old, t) if old in truth.objects else {}
    if old not in truth.objects or truth.is_latest(old, t) or not held:
        assert (new, conf) == (want[0], pytest.approx(want[1])), (old, layer)
        return
    assert new in held and truth.is_latest(new, t), (old, t, layer, new, held)
    if len(held) == 1 or layer == 1:
        assert new == want[0], (old, layer)
    if layer == 1:
        assert conf == pytest.approx(want[1])
    if (new, conf) == (want[0], pytest.approx(want[1])):
        return  # the supervoxel level
    if layer >= 4 and not fixed_hierarchy(truth):
        return  # the layer >= 4 nodes of the v1 generator do not follow the PCG rule (issue 16.1)
    nodes = truth.layer_nodes(old, layer)
    m = conf * len(nodes)
    assert 0 < conf <= 1 and m == pytest.approx(round(m)), (old, layer, conf, len(nodes))
    whole = sum(bool(np.isin(g, truth.leaves(new)).all()) for g in nodes)
    assert whole >= round(m), (old, layer, new, whole, m)


def check_frame(truth, df, t, layer=2, svs=None):
    assert list(df.columns[:4]) == COLUMNS
    for k, (old, new, conf, changed) in enumerate(df[COLUMNS].itertuples(index=False)):
        check_update(truth, old, new, conf, t, layer, 0 if svs is None else int(svs[k]))
        assert changed == (new != old)


@pytest.fixture(autouse=True)
def _fresh_cache():
    update_cache.clear()
    yield
    update_cache.clear()


@pytest.fixture(scope="module")
def unknown_root(truth):
    return truth.all_roots.max() + np.uint64(1000)


def count_calls(monkeypatch, src, names=("is_latest", "roots", "leaves", "leaves_many")):
    calls = collections.Counter()
    for name in names:
        real = getattr(src, name)
        monkeypatch.setattr(src, name, (lambda n, f: lambda *a, **k: (calls.update([n]), f(*a, **k))[1])(name, real))
    return calls


# -- is_latest_roots --------------------------------------------------------------------------
@pytest.mark.parametrize("label", STAMPS)
def test_is_latest_truth_c5_c6_bug7_bug12(spec, truth, unknown_root, label):
    arg, t = when(truth, label)
    roots = truth.all_roots
    x = np.concatenate([roots, roots[:5], np.array([0, unknown_root, 0], np.uint64)])[::-1].copy()
    got = is_latest_roots(x, timestamp=arg, dataset=spec, progress=False)
    exp = np.array([truth.is_latest(r, t) for r in x])  # 0 and unknown: False
    assert got.dtype == bool and len(got) == len(x)
    np.testing.assert_array_equal(got, exp)
    assert not got[x == 0].any()  # anchor bug 12: zeros False in mixed input too


def test_is_latest_empty_all_zero_c5(local_spec):
    assert is_latest_roots([], dataset=local_spec).dtype == bool
    assert is_latest_roots([], dataset=local_spec).shape == (0,)
    np.testing.assert_array_equal(is_latest_roots([0, 0], dataset=local_spec, progress=False), [False, False])


def test_validate_ids_before_request_c6(spec, truth, monkeypatch):
    src = open_source(spec)
    monkeypatch.setattr(src, "is_latest", lambda *a, **k: pytest.fail("request made"))
    with pytest.raises(ValueError, match="Invalid root IDs found"):
        is_latest_roots([truth.all_roots[0], truth.supervoxels[0]], dataset=spec)


def test_mat_strings_c7(spec, truth):
    roots = truth.all_roots
    latest = np.array([truth.is_latest(r, truth.materialization()) for r in roots])
    for arg in ("mat", "mat_latest"):
        np.testing.assert_array_equal(is_latest_roots(roots, timestamp=arg, dataset=spec, progress=False), latest)
    v1 = np.array([truth.is_latest(r, truth.materialization(1)) for r in roots])
    np.testing.assert_array_equal(is_latest_roots(roots, timestamp="mat_1", dataset=spec, progress=False), v1)
    for fn in (is_latest_roots, update_ids):
        with pytest.raises(ValueError, match="Invalid materialization timestamp format"):
            fn(roots[:2], timestamp="mat_x", dataset=spec)
    with pytest.raises(ValueError, match="does not exist"):
        is_latest_roots(roots[:2], timestamp="mat_99", dataset=spec)


def test_timestamp_forms_c8_bug15(spec, truth):
    """ISO without zone = UTC; ints, np.int32 and floats are unix SECONDS (the anchor reads
    np.int32/floats as nanoseconds); aware datetimes convert exactly; sub-seconds truncate."""
    ops = truth.operation_times()
    t = ops[12] + timedelta(seconds=3)
    roots = truth.all_roots
    exp = np.array([truth.is_latest(r, t) for r in roots])
    assert exp.any() and not np.array([truth.is_latest(r, datetime(1970, 1, 2, tzinfo=timezone.utc)) for r in roots]).any()
    u = int(t.timestamp())
    forms = [u, np.int64(u), np.int32(u), float(u) + 0.7, t.replace(tzinfo=None).isoformat(),
             t.astimezone(timezone(timedelta(hours=5))), t.isoformat().replace("+00:00", "Z")]
    for form in forms:
        np.testing.assert_array_equal(is_latest_roots(roots, timestamp=form, dataset=spec, progress=False), exp,
                                      err_msg=repr(form))
    day = datetime(2025, 6, 5, tzinfo=timezone.utc)
    assert day.timestamp() == 1749081600
    np.testing.assert_array_equal(is_latest_roots(roots, timestamp="2025-06-05", dataset=spec, progress=False),
                                  [truth.is_latest(r, day) for r in roots])


def test_resolved_once(local_spec, truth, monkeypatch):
    calls = []
    real = updates.resolve_timestamp
    for module in (updates, latest):  # is_latest_roots lives in ops/latest.py
        monkeypatch.setattr(module, "resolve_timestamp", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    is_latest_roots(truth.all_roots, timestamp="mat", batch_size=3, dataset=local_spec, progress=False)
    assert len(calls) == 1
    update_ids(truth.all_roots, timestamp="mat", dataset=local_spec, progress=False)
    assert len(calls) == 2


def test_is_latest_kernel_and_graph(local_spec, truth):
    t = truth.operation_times()[20]
    x = np.r_[truth.all_roots, 0, truth.all_roots[:3]]
    exp = np.array([truth.is_latest(r, t) for r in x])
    np.testing.assert_array_equal(is_latest_kernel(x, local_spec, t), exp)
    for chunks in (1, 10, len(x)):
        g = is_latest_roots_graph(da.from_array(x, chunks=chunks), timestamp=t, dataset=local_spec)
        np.testing.assert_array_equal(g.compute(), exp)


# -- update_ids -------------------------------------------------------------------------------
@pytest.mark.parametrize("label", STAMPS)
def test_update_truth_c31_c32_c34_c35_c41(spec, truth, unknown_root, label):
    arg, t = when(truth, label)
    x = np.concatenate([truth.all_roots, truth.all_roots[:4], [unknown_root]])
    df = update_ids(x, timestamp=arg, dataset=spec, progress=False)
    assert list(df.columns) == COLUMNS and len(df) == len(x)
    assert df.confidence.dtype == np.float64 and df.changed.dtype == bool and df.new_id.dtype == np.int64
    np.testing.assert_array_equal(df.old_id.to_numpy(), x.astype(np.int64))
    check_frame(truth, df, t)
    assert df.confidence[df.old_id == int(unknown_root)].tolist() == [0.0]


def test_supervoxel_path_c33_c36(spec, truth):
    ops = truth.operation_times()
    t = ops[-1]
    stale = [r for r in truth.all_roots if not truth.is_latest(r, t)][:6]
    svs = [truth.leaves(r)[len(truth.leaves(r)) // 2] for r in stale]
    exp = truth.root_of(np.array(svs, np.uint64), t).astype(np.int64)
    df = update_ids(stale, supervoxels=svs, timestamp=t, dataset=spec, progress=False)
    np.testing.assert_array_equal(df.new_id, exp)
    assert (df.confidence == 1.0).all()
    frame = pd.DataFrame({"root_id": stale, "supervoxel_id": svs, "note": list("abcdef")}, index=list("uvwxyz"))
    out = update_ids(frame, timestamp=t, dataset=spec, progress=False)
    np.testing.assert_array_equal(out.new_id, exp)
    assert list(out.index) == list("uvwxyz") and list(out.note) == list("abcdef")


def test_dataframe_rows_c36_c37(local_spec, truth):
    with pytest.raises(ValueError, match="DataFrame must contain 'root_id' column"):
        update_ids(pd.DataFrame({"id": [1]}), dataset=local_spec)
    t = truth.operation_times()[-1]
    r = truth.all_roots
    frame = pd.DataFrame({"root_id": pd.Series([int(r[0]), 0, None, int(r[-1])], dtype=object),
                          "w": [1, 2, 3, 4]})
    out = update_ids(frame, timestamp=t, dataset=local_spec, progress=False)
    assert len(out) == 4 and list(out.w) == [1, 2, 3, 4] and list(out.columns[:4]) == COLUMNS
    assert out.confidence[1] == 0.0 and out.confidence[2] == 0.0 and not out.changed[1:3].any()
    assert out.new_id[1] == 0 and out.new_id[2] is None
    for k in (0, 3):
        check_update(truth, int(frame.root_id[k]), out.new_id[k], out.confidence[k], t)
    empty = update_ids(pd.DataFrame({"root_id": pd.Series([0, None], dtype=object)}), dataset=local_spec,
                       progress=False)  # (a float64 column of IDs is refused: issue 17)
    assert len(empty) == 2 and (empty.confidence == 0).all()


def test_list_keeps_length_and_order_zero_in_zero_out_c37_c38(local_spec, truth):
    """crantpy drops 0/NaN from a list; issue 17 asks every ID function to keep length and order."""
    for bad in ([0, np.nan, None], [], [0]):
        df = update_ids(bad, dataset=local_spec)
        assert list(df.columns) == COLUMNS and len(df) == len(bad)
        assert (df.new_id == 0).all() and (df.confidence == 0).all() and not df.changed.any()
    r = truth.all_roots
    df = update_ids([int(r[3]), 0, int(r[1]), np.nan, int(r[3])], timestamp="mat", dataset=local_spec, progress=False)
    assert df.old_id.tolist() == [int(r[3]), 0, int(r[1]), 0, int(r[3])]
    single = update_ids(str(int(r[1])), timestamp="mat", dataset=local_spec, progress=False)
    assert single.old_id.tolist() == [int(r[1])]  # one numeric string is one ID


def test_supervoxels_wrong_length_ignored_c39(local_spec, truth, caplog):
    t = truth.operation_times()[-1]
    stale = [r for r in truth.all_roots if not truth.is_latest(r, t)][:3]
    with caplog.at_level(logging.WARNING, logger="crantseg"):
        df = update_ids(stale, supervoxels=truth.supervoxels[:2], timestamp=t, dataset=local_spec, progress=False)
    assert "ignoring" in caplog.text
    check_frame(truth, df, t)


def test_cache_c40_bug10(spec, truth, monkeypatch):
    """Cached per (dataset, timestamp, stop_layer, id); clear_cache recomputes."""
    calls = count_calls(monkeypatch, open_source(spec))
    roots = truth.all_roots
    ops = truth.operation_times()
    t1, t2 = ops[5], ops[-1]
    a = update_ids(roots, timestamp=t1, dataset=spec, progress=False)
    assert calls["is_latest"] and calls["leaves_many"] + calls["leaves"]
    calls.clear()
    b = update_ids(roots, timestamp=t1, dataset=spec, progress=False)
    assert not calls and a.equals(b)
    c = update_ids(roots, timestamp=t2, dataset=spec, progress=False)  # another time: not the cached answer
    assert calls["is_latest"]
    for df, t in ((a, t1), (c, t2)):
        check_frame(truth, df, t)
    calls.clear()
    update_ids(roots, timestamp=t1, dataset=spec, progress=False, clear_cache=True)
    assert calls["is_latest"]


def test_partial_hit_keeps_supervoxels_bug10(local_spec, truth):
    t = truth.operation_times()[-1]
    stale = [r for r in truth.all_roots if not truth.is_latest(r, t)][:6]
    svs = [truth.leaves(r)[0] for r in stale]
    update_ids(stale[:3], timestamp=t, dataset=local_spec, progress=False)
    df = update_ids(stale, supervoxels=svs, timestamp=t, dataset=local_spec, progress=False)
    np.testing.assert_array_equal(df.new_id, truth.root_of(np.array(svs, np.uint64), t).astype(np.int64))
    assert (df.confidence == 1.0).all()


@pytest.fixture(scope="module")
def other_path(tmp_path_factory):
    """A second world: the tiny preset with another seed."""
    return make_dataset(dataclasses.replace(PRESETS["tiny"], seed=11), tmp_path_factory.mktemp("other") / "d")


@pytest.fixture(scope="module")
def other_truth(other_path):
    return Truth(other_path)


def test_cache_keyed_by_dataset_bug10(local_spec, truth, other_path, other_truth):
    path = other_path
    other = type(local_spec)(kind="local", name="other", path=str(path))
    t2 = other_truth
    t = max(truth.operation_times()[-1], t2.operation_times()[-1])
    common = np.intersect1d(truth.all_roots, t2.all_roots)
    assert len(common)
    a = update_ids(common, timestamp=t, dataset=local_spec, progress=False)
    b = update_ids(common, timestamp=t, dataset=other, progress=False)
    for df, tr in ((a, truth), (b, t2)):
        check_frame(tr, df, t)


def test_annotations(local_spec, truth, tmp_path, caplog):
    t = truth.operation_times()[-1]
    stale = [int(r) for r in truth.all_roots if not truth.is_latest(r, t)][:4]
    svs = [int(truth.leaves(r)[-1]) for r in stale]
    exp = truth.root_of(np.array(svs, np.uint64), t).astype(np.int64).tolist()
    table = pd.DataFrame({"root_id": [str(r) for r in stale] + [str(stale[0])],
                          "supervoxel_id": [str(s) for s in svs] + [str(svs[1])]})
    table.to_csv(tmp_path / "a.csv", index=False)
    table.to_parquet(tmp_path / "a.parquet")
    for ann in (table, tmp_path / "a.csv", str(tmp_path / "a.parquet")):
        with caplog.at_level(logging.WARNING, logger="crantseg"):
            df = update_ids(stale, timestamp=t, dataset=local_spec, annotations=ann, progress=False)
        assert df.new_id.tolist() == exp and (df.confidence == 1.0).all()
    assert "Multiple supervoxel IDs found for 1 root IDs" in caplog.text
    off = update_ids(stale, timestamp=t, dataset=local_spec, annotations=table, use_annotations=False, progress=False)
    check_frame(truth, off, t)


def test_overlap_kernel_and_graph(local_spec, truth, unknown_root):
    t = truth.operation_times()[25]
    stale = np.array([r for r in truth.all_roots if not truth.is_latest(r, t)] + [unknown_root], np.uint64)
    for layer in (1, 2, 3, 6):
        rec = overlap_kernel(stale, local_spec, t, layer)
        assert rec.dtype == UPDATE_DTYPE
        for r, (a, b) in zip(stale.tolist(), rec.tolist()):
            check_update(truth, r, a, b, t, layer)
    x = np.r_[truth.all_roots, 0]
    for chunks in (1, 17, len(x)):
        layer = {1: 1, 17: 3}.get(chunks, 2)
        got = update_ids_graph(da.from_array(x, chunks=chunks), timestamp=t, stop_layer=layer,
                               dataset=local_spec).compute()
        for r, (a, b) in zip(x.tolist(), got.tolist()):
            if r:
                check_update(truth, r, a, b, t, layer)
            else:
                assert (a, b) == (0, 0.0)


def test_non_root_ids_not_latest(spec, truth):
    """Without validation, supervoxel IDs are never "latest" (PCG's L2 quirk is not exposed) and
    update_ids leaves them unchanged with confidence 0."""
    x = [int(truth.supervoxels[0]), int(truth.all_roots[-1])]
    got = is_latest_roots(x, validate_ids=False, timestamp=None, dataset=spec, progress=False)
    np.testing.assert_array_equal(got, [False, truth.is_latest(x[1], truth.operation_times()[-1])])
    df = update_ids(x[:1], dataset=spec, progress=False)
    assert df.new_id.tolist() == x[:1] and df.confidence.tolist() == [0.0]


def test_update_ids_job_matches_truth(truth, tiny_path, tmp_path):
    """The batch job (``crantseg run update-ids``) on a table of stale and current roots, with a
    supervoxel on some rows: the same answers as the truth."""
    from crantseg_dask.jobs import run_job
    from crantseg_dask.persist import read_output

    _, t = when(truth, "now")
    roots = truth.all_roots.tolist()
    sv = [int(truth.leaves(r)[0]) if k % 3 == 0 else 0 for k, r in enumerate(roots)]
    pd.DataFrame({"root_id": roots, "supervoxel_id": sv}).to_parquet(tmp_path / "t.parquet")
    from distributed import Client

    # an in-process cluster (the job's process clusters are tests/test_jobs.py's subject)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        run_job("update-ids", tmp_path / "t.parquet", tmp_path / "u.zarr", dataset=str(tiny_path),
                timestamp=int(t.timestamp()), partition_size=17, client=client, progress=False)
    out = read_output(tmp_path / "u.zarr")
    for k, (r, s) in enumerate(zip(roots, sv)):
        check_update(truth, r, int(out["new_id"][k]), float(out["confidence"][k]), t, sv=s)
        want = (int(out["new_id"][k]),)
        assert bool(out["changed"][k]) == (want[0] != r)


# -- update_ids against the truth's supervoxel overlap (issue 16.2, issue 20) ---------------------
def test_fully_replaced_root_gets_its_successor_issue16(spec, truth):
    """A stale root whose supervoxels all lie in one current root gets that root, whatever its
    layer-k nodes became (on the v1 tiny world, ...498 -> ...555: its one L2 node was rebuilt)."""
    _, t = when(truth, "now")
    sole = [r for r in truth.all_roots.tolist()
            if not truth.is_latest(r, t) and len(truth.holders(r, t)) == 1]
    assert sole
    for layer in (2, 3):
        df = update_ids(sole, timestamp=t, stop_layer=layer, dataset=spec, progress=False)
        assert df.new_id.tolist() == [next(iter(truth.holders(r, t))) for r in sole], layer
        assert df.changed.all() and (df.confidence > 0).all()


@pytest.fixture(scope="module", params=["tiny", "seed11-sample", pytest.param("seed11", marks=pytest.mark.slow)])
def world(request, truth, local_spec, other_path, other_truth):
    """(truth, spec, roots): every root of the tiny world; a fixed random quarter of the roots of
    the seed-11 world (all of them with ``-m slow``)."""
    if request.param == "tiny":
        return truth, local_spec, truth.all_roots
    other = other_truth
    spec = type(local_spec)(kind="local", name="seed11", path=str(other_path))
    if request.param == "seed11":
        return other, spec, other.all_roots
    pick = np.random.default_rng(11).choice(len(other.all_roots), len(other.all_roots) // 4, replace=False)
    return other, spec, other.all_roots[np.sort(pick)]


@pytest.mark.parametrize("layer", range(1, 9))
def test_update_every_root_every_materialization(world, layer):
    """Every root (stale, current, not yet created) at every materialization and after the last
    edit, for every stop_layer, without and with a supervoxel per row (the first of three, the
    middle leaf of the second of three, none on the rest)."""
    truth, spec, roots = world
    svs = np.array([truth.leaves(r)[0] if k % 3 == 0 else truth.leaves(r)[len(truth.leaves(r)) // 2]
                    if k % 3 == 1 else 0 for k, r in enumerate(roots.tolist())], dtype=np.uint64)
    times = [truth.materialization(m["version"]) for m in truth.edits["materializations"]]
    times.append(truth.operation_times()[-1] + timedelta(hours=1))
    for t in times:
        df = update_ids(roots, timestamp=t, stop_layer=layer, dataset=spec, progress=False)
        check_frame(truth, df, t, layer)
        dfs = update_ids(roots, supervoxels=svs, timestamp=t, stop_layer=layer, dataset=spec, progress=False)
        check_frame(truth, dfs, t, layer, svs)


@pytest.mark.parametrize("layer", [1, 2, 5])
def test_update_through_each_source(spec, truth, layer):
    """The same against the local CAVE server (and locally) at the second materialization."""
    t = truth.materialization(2)
    df = update_ids(truth.all_roots, timestamp=t, stop_layer=layer, dataset=spec, progress=False)
    check_frame(truth, df, t, layer)


# -- review fixes: errors are not answers; the cache ----------------------------------------------
def test_source_errors_propagate_not_cached(local_spec, truth, monkeypatch):
    """A source failure in the overlap step raises (it is no "(old root, 0.0)" answer), and
    nothing about those roots is cached; an unknown root still gives (root, 0.0)."""
    from crantseg_dask.errors import SourceError

    t = truth.operation_times()[-1]
    stale = [int(r) for r in truth.all_roots if not truth.is_latest(r, t)][:3]
    src = open_source(local_spec)

    def down(*a, **k):
        raise SourceError("server unreachable")
    monkeypatch.setattr(src, "leaves_many", down)
    monkeypatch.setattr(src, "leaves", down)
    with pytest.raises(SourceError):
        overlap_kernel(np.array(stale, np.uint64), local_spec, t, 2)
    with pytest.raises(SourceError):
        update_ids(stale, timestamp=t, dataset=local_spec, progress=False)
    assert not any(k[3] == "overlap" for k in update_cache._data)
    monkeypatch.undo()
    df = update_ids(stale, timestamp=t, dataset=local_spec, progress=False)
    check_frame(truth, df, t)


def test_no_cache_without_timestamp(local_spec, truth):
    roots = truth.all_roots[:10]
    update_ids(roots, dataset=local_spec, progress=False)
    assert len(update_cache) == 0
    update_ids(roots, timestamp=truth.operation_times()[-1], dataset=local_spec, progress=False)
    assert len(update_cache) > 0


def test_ttl_cache_bounded_lru():
    from crantseg_dask._cache import TTLCache

    c = TTLCache(max_age=100, max_entries=3)
    for k in "abc":
        c.put(k, k.upper())
    assert c.get("a") == "A"          # a is now the most recently used
    c.put("d", "D")                   # evicts b, the least recently used
    assert len(c) == 3 and c.get("b") is None
    assert [c.get(k) for k in "acd"] == ["A", "C", "D"]
