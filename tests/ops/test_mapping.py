"""supervoxels_to_roots / roots_to_supervoxels: checklist 9-20 against truth, both sources."""
from datetime import timedelta

import dask.array as da
import numpy as np
import pytest

from crantseg_dask._cache import cache_identity
from crantseg_dask.ops import mapping
from crantseg_dask.ops.mapping import (
    roots_kernel,
    roots_to_supervoxels,
    roots_to_supervoxels_graph,
    supervoxels_to_roots,
    supervoxels_to_roots_graph,
)
from crantseg_dask.sources import open_source

STAMPS = ["before", "between", "mat_2", "now"]


def when(truth, label):
    """(argument to pass, time the truth is evaluated at) for a timestamp label."""
    ops = truth.operation_times()
    if label == "before":  # after ingest, before the first edit
        t = (truth.created(truth.all_roots[0]) + (ops[0] - truth.created(truth.all_roots[0])) / 2).replace(microsecond=0)
        return int(t.timestamp()), t  # unix seconds
    if label == "between":  # between edits 10 and 11, as a naive ISO string (UTC)
        t = (ops[9] + (ops[10] - ops[9]) / 2).replace(microsecond=0)
        return t.replace(tzinfo=None).isoformat(), t
    if label == "mat_2":
        return "mat_2", truth.materialization(2)
    return None, ops[-1] + timedelta(days=1)  # now: after every edit


def unknown_sv(truth):
    seg = truth.layout.segment(truth.supervoxels).max() + np.uint64(7)
    sv = truth.layout.encode(1, *truth.layout.chunk_coords(truth.supervoxels[:1])[0], seg)
    assert sv not in truth.supervoxels
    return np.uint64(sv)


@pytest.fixture(scope="module")
def svids(truth):
    """Zipf-ish repeated supervoxels, zeros and one unknown ID, shuffled."""
    rng = np.random.default_rng(5)
    pick = truth.supervoxels[rng.integers(0, len(truth.supervoxels), 400)]
    x = np.concatenate([pick, pick[:50], np.zeros(20, np.uint64), [unknown_sv(truth)]]).astype(np.uint64)
    return x[rng.permutation(len(x))]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRANTSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CRANTSEG_RETRY_WAIT", "0.01")


# -- supervoxels_to_roots ---------------------------------------------------------------------
@pytest.mark.parametrize("label", STAMPS)
def test_roots_match_truth_c9_c10_c15(spec, truth, svids, label):
    arg, t = when(truth, label)
    got = supervoxels_to_roots(svids, timestamp=arg, dataset=spec, progress=False)
    assert got.dtype == np.int64 and got.shape == svids.shape
    np.testing.assert_array_equal(got.astype(np.uint64), truth.root_of(svids, t))
    assert (got[svids == 0] == 0).all() and got[svids == unknown_sv(truth)][0] == 0


def test_default_timestamp_is_mat_c14(spec, truth, svids):
    """C14 and anchor §8 item 8: the default is the latest materialization, None is now."""
    mat = supervoxels_to_roots(svids, dataset=spec, progress=False).astype(np.uint64)
    now = supervoxels_to_roots(svids, timestamp=None, dataset=spec, progress=False).astype(np.uint64)
    np.testing.assert_array_equal(mat, truth.root_of(svids, truth.materialization()))
    np.testing.assert_array_equal(now, truth.root_of(svids, truth.operation_times()[-1]))
    assert (mat != now).any()  # edits after the last materialization are visible only with None


def test_shape_strings_and_scalars_c9(local_spec, truth):
    sv = truth.supervoxels[:6].reshape(2, 3)
    t = truth.materialization()
    got = supervoxels_to_roots(sv, dataset=local_spec, progress=False)
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got.astype(np.uint64), truth.root_of(sv, t))
    one = supervoxels_to_roots(str(sv[0, 0]), dataset=local_spec, progress=False)
    assert one.shape == (1,) and one[0] == truth.root_of(sv[:1, 0], t)[0]


def test_batches_dedupe_no_zeros_c10_c13(spec, truth, svids, monkeypatch):
    src = open_source(spec)
    sent = []
    real = src.roots
    monkeypatch.setattr(src, "roots", lambda ids, *a, **k: (sent.append(np.array(ids)), real(ids, *a, **k))[1])
    ref = truth.root_of(svids, truth.materialization())
    for bs in (1, 7, 10_000):
        sent.clear()
        got = supervoxels_to_roots(svids, batch_size=bs, dataset=spec, progress=False)
        np.testing.assert_array_equal(got.astype(np.uint64), ref)
        allsent = np.concatenate(sent)
        assert max(len(s) for s in sent) <= bs and 0 not in allsent
        assert len(allsent) == len(np.unique(allsent)) == len(np.unique(svids[svids != 0]))


def test_pass_through_and_stop_layer_c11_c12(spec, truth):
    t = truth.materialization(3)
    old = truth.all_roots  # current and outdated roots alike: returned unchanged
    np.testing.assert_array_equal(
        supervoxels_to_roots(old, timestamp=t, dataset=spec, progress=False).astype(np.uint64), old)
    svs = truth.supervoxels
    l2 = supervoxels_to_roots(svs, timestamp=t, stop_layer=2, dataset=spec, progress=False).astype(np.uint64)
    assert (truth.layout.layer(l2) == 2).all()
    # the L2 partition equals the truth's L2 groups of each supervoxel's root at t
    owner = truth.root_of(svs, t)
    for r in np.unique(owner)[:6]:
        for g in truth.l2_groups(r):
            ids = l2[np.isin(svs, g)]
            assert len(np.unique(ids)) == 1
    assert len(np.unique(l2)) == sum(len(truth.l2_groups(r)) for r in np.unique(owner))
    np.testing.assert_array_equal(  # L2 IDs at stop_layer 2 pass through
        supervoxels_to_roots(l2[:20], timestamp=t, stop_layer=2, dataset=spec, progress=False).astype(np.uint64),
        l2[:20])
    for bad in (0, 9):
        with pytest.raises(ValueError, match="must be between 1 and 8 inclusive"):
            supervoxels_to_roots(svs[:3], stop_layer=bad, dataset=spec)


def test_retry_c16(spec, truth, monkeypatch):
    src = open_source(spec)
    real, calls = src.roots, []

    def flaky(ids, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("transient")
        return real(ids, *a, **k)

    monkeypatch.setattr(src, "roots", flaky)
    sv = truth.supervoxels[:10]
    got = supervoxels_to_roots(sv, timestamp=None, dataset=spec, progress=False)
    np.testing.assert_array_equal(got.astype(np.uint64), truth.root_of(sv, truth.operation_times()[-1]))
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(ConnectionError):
        supervoxels_to_roots(sv, timestamp=None, retry=False, dataset=spec, progress=False)
    assert len(calls) == 1


def test_empty_c17(local_spec):
    for x in ([], np.zeros(0, np.uint64)):
        got = supervoxels_to_roots(x, dataset=local_spec, progress=False)
        assert got.dtype == np.int64 and got.shape == (0,)
    assert (supervoxels_to_roots([0, 0], dataset=local_spec, progress=False) == 0).all()


def test_timestamp_resolved_once(local_spec, svids, monkeypatch):
    calls = []
    real = mapping.resolve_timestamp
    monkeypatch.setattr(mapping, "resolve_timestamp", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    supervoxels_to_roots(svids, batch_size=5, dataset=local_spec, progress=False)
    assert len(calls) == 1


@pytest.mark.parametrize("chunks", [1, 37, 10_000])
def test_graph_and_kernel_any_chunking_c14(local_spec, truth, svids, chunks):
    t = truth.operation_times()[20]
    ref = truth.root_of(svids, t)
    lazy = supervoxels_to_roots_graph(da.from_array(svids, chunks=chunks), timestamp=t, dataset=local_spec)
    assert lazy.dtype == np.int64
    np.testing.assert_array_equal(lazy.compute().astype(np.uint64), ref)
    np.testing.assert_array_equal(roots_kernel(svids[::-1], local_spec, t, batch_size=chunks), ref[::-1])


# -- roots_to_supervoxels ---------------------------------------------------------------------
def test_leaves_match_truth_c18(spec, truth):
    roots = truth.all_roots[[0, 5, 40, 5, 0]]  # duplicates collapse; outdated roots keep leaves
    got = roots_to_supervoxels(roots, dataset=spec, progress=False)
    assert list(got) == sorted(set(roots.astype(np.int64).tolist()))
    for r, leaves in got.items():
        assert isinstance(r, np.int64) and leaves.dtype == np.uint64
        np.testing.assert_array_equal(leaves, truth.leaves(r))
    assert int(roots[0]) in got  # Python-int lookup works


def test_leaves_cache_c19(spec, truth, monkeypatch, tmp_path):
    src = open_source(spec)
    calls = []
    for name in ("leaves", "leaves_many"):
        real = getattr(src, name)
        monkeypatch.setattr(src, name, (lambda real: lambda *a, **k: (calls.append(1), real(*a, **k))[1])(real))
    roots = truth.all_roots[10:14]
    first = roots_to_supervoxels(roots, dataset=spec, progress=False)
    assert calls
    calls.clear()
    second = roots_to_supervoxels(roots, dataset=spec, progress=False)
    assert not calls  # served from the persistent cache
    for r in roots:
        np.testing.assert_array_equal(second[np.int64(r)], truth.leaves(r))
        np.testing.assert_array_equal(first[np.int64(r)], second[np.int64(r)])
    roots_to_supervoxels(roots, clear_cache=True, dataset=spec, progress=False)
    assert calls  # bypasses reading
    calls.clear()
    fresh = truth.all_roots[20:22]
    roots_to_supervoxels(fresh, clear_cache=True, dataset=spec, progress=False)
    calls.clear()
    roots_to_supervoxels(fresh, dataset=spec, progress=False)
    assert calls  # clear_cache did not write either


def test_single_and_empty_c20(local_spec, truth):
    r = truth.all_roots[3]
    assert roots_to_supervoxels([], dataset=local_spec) == {}
    for x in (int(r), np.int64(r), str(int(r))):  # a numeric string is ONE ID (anchor splits digits)
        got = roots_to_supervoxels(x, dataset=local_spec, progress=False)
        assert list(got) == [np.int64(r)]
        np.testing.assert_array_equal(got[np.int64(r)], truth.leaves(r))


def test_bad_roots_raise(spec, truth):
    with pytest.raises(ValueError, match="Invalid root IDs found"):
        roots_to_supervoxels([truth.all_roots[0], truth.supervoxels[0]], dataset=spec)
    with pytest.raises(ValueError, match="Invalid root IDs found"):
        roots_to_supervoxels([0], dataset=spec)
    with pytest.raises((KeyError, OSError)):
        roots_to_supervoxels(truth.all_roots.max() + np.uint64(1000), dataset=spec, progress=False)


def test_leaves_graph_and_identity(local_spec, truth, tmp_path):
    lazy = roots_to_supervoxels_graph(truth.all_roots[:20], dataset=local_spec, batch=3)
    got = lazy.compute()
    assert sorted(got) == truth.all_roots[:20].tolist()
    np.testing.assert_array_equal(got[int(truth.all_roots[7])], truth.leaves(truth.all_roots[7]))
    other = type(local_spec)(kind="local", name="x", path=str(tmp_path))
    assert cache_identity(other) != cache_identity(local_spec)


# -- lazy builders refuse non-integer ID arrays (float IDs above 2**53 are not exact) -------------
def test_lazy_builders_reject_float_and_negative_ids(local_spec, truth):
    import dask.array as da

    from crantseg_dask.errors import InvalidIDError
    from crantseg_dask.ops.mapping import supervoxels_to_roots_graph
    from crantseg_dask.ops.updates import is_latest_roots_graph, update_ids_graph
    from crantseg_dask.ops.validity import is_valid_root_graph, is_valid_supervoxel_graph

    root = int(truth.all_roots[-1])
    assert float(root) != root  # the value a float cast would silently change
    builders = [lambda x: supervoxels_to_roots_graph(x, timestamp=None, dataset=local_spec),
                lambda x: is_latest_roots_graph(x, dataset=local_spec),
                lambda x: update_ids_graph(x, dataset=local_spec),
                lambda x: is_valid_root_graph(x, dataset=local_spec),
                lambda x: is_valid_supervoxel_graph(x, dataset=local_spec)]
    floats = da.from_array(np.array([float(root), 0.0]), chunks=1)
    negative = da.from_array(np.array([root, -5], dtype=np.int64), chunks=1)
    for build in builders:
        with pytest.raises(InvalidIDError, match="dtype float64"):
            build(floats)
        with pytest.raises(InvalidIDError, match="negative"):
            build(negative).compute()
    good = is_valid_root_graph(da.from_array(np.array([root, 0], dtype=np.int64), chunks=1), dataset=local_spec)
    assert good.compute().tolist() == [True, False]


def test_cave_identity_includes_segmentation_info(tiny_path, cave_home, tmp_path):
    """Two CAVE deployments at the same address and datastack serving different segmentations must
    not share cache entries; the same deployment again gives the same identity. Real servers and
    the real cave source (caveclient, cloud-volume), one after the other on one port."""
    from crantseg_dask.dataset.generate import make_dataset
    from crantseg_dask.dataset.layout import DatasetParams
    from crantseg_dask.server.app import serve_in_thread
    from crantseg_dask.testing.server import fast_spec
    from crantseg_dask.sources import open_source

    other = make_dataset(DatasetParams(name="other", seed=3, size=(96, 80, 40), n_edits=4), tmp_path / "other")
    port, ids = None, []
    for ds in (tiny_path, other, tiny_path):
        server = serve_in_thread(ds, port=port or 0, datastack="ds", token="0123456789abcdef" * 2)
        try:
            port = int(server.address.rsplit(":", 1)[1])
            spec = fast_spec(server)
            open_source.cache_clear()  # a fresh process's view of the deployment
            ids.append(cache_identity(spec))
        finally:
            server.stop()
    open_source.cache_clear()
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert ids[0].split(":")[:-1] == ids[1].split(":")[:-1]  # same address and datastack
