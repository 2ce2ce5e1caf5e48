"""The ``cave`` source (real caveclient + cloud-volume) against the local CAVE server.

The conformance suite runs twice: against a clean server, and against one that answers a fifth
of all requests with 503 or 429 (every answer must still be right). Expected values come from
``truth`` (brute force), never from another source.
"""
from __future__ import annotations

import socket
from datetime import timedelta

import numpy as np
import pytest

from crantseg_dask.errors import AuthError, SourceError, UnknownIDError
from crantseg_dask.sources.cave import CaveSource
from crantseg_dask.testing.conformance import SourceConformance, check_times
from crantseg_dask.testing.server import fast_spec, faulty_server


@pytest.fixture(scope="module")
def cave_source(cave_spec):
    return CaveSource(cave_spec)


class TestCaveSource(SourceConformance):
    @pytest.fixture
    def source(self, cave_source):
        return cave_source


@pytest.fixture(scope="module")
def flaky_server(tiny_path, cave_home):
    server = faulty_server(tiny_path, fail_rate=0.2, seed=7)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flaky_source(flaky_server):
    return CaveSource(fast_spec(flaky_server))


class TestCaveSourceUnderFaults(SourceConformance):
    """fail_rate 0.2: a fifth of the requests fail with 503/429; every answer is still correct.

    Every route is faulted here, so the default run keeps a check of each source method; the
    exhaustive sweeps (every root, every layer, every check time) run over this server with
    ``-m slow`` and, in the default run, over the clean server (TestCaveSource)."""

    slow_tests = frozenset({"test_leaves_of_every_root", "test_latest_roots", "test_node_chunks_follow_the_pcg_rule"}
                           | {f"test_layer_nodes_like_truth[{k}]" for k in (2, 3, 5, 6, 7)}
                           | {f"test_leaves_within_bounds_are_chunk_granular[{k}]" for k in (1, 2, 3, 4, 6, 7)}
                           | {f"test_leaves_within_bounds_match_brute_force[{k}]" for k in (3, 4, 5, 6, 7)})

    @pytest.fixture
    def source(self, flaky_source):
        return flaky_source

    def test_faults_were_injected(self, flaky_source, flaky_server, truth):
        flaky_source.roots(truth.supervoxels, check_times(truth)[-1])
        assert flaky_server.state.faults.injected > 10

    def test_latest_roots_on_a_sample(self, source, truth):
        """``test_latest_roots`` (slow here) on every 11th root at every 5th check time: forwards
        from a root's creation and backwards to its ancestors (truth: a sweep of the edit log)."""
        before = 0
        for t in check_times(truth)[2::5]:
            for root in truth.all_roots[::11].tolist():
                assert set(source.latest_roots(root, t).tolist()) == truth.latest_roots(root, t), (root, t)
                before += t < truth.created(root)
        assert before


# -- beyond the suite ------------------------------------------------------------------------------
def test_errors_name_the_cause(cave_source, truth):
    with pytest.raises(UnknownIDError, match="not in dataset"):
        cave_source.leaves(12345)
    with pytest.raises(UnknownIDError, match="not a root"):
        cave_source.root_timestamps(truth.supervoxels[:1])
    with pytest.raises(UnknownIDError):
        cave_source.lineage([int(truth.supervoxels[0])])


def test_latest_roots_backwards_and_forwards(cave_source, truth):
    """Before a root's creation: its ancestors alive then (the truth's one definition, shared
    with ``local`` and the conformance suite), found walking back."""
    late = max(truth.created_ms, key=truth.created_ms.get)
    before = truth.created(late) - timedelta(seconds=1)
    got = set(cave_source.latest_roots(late, before).tolist())
    assert got == truth.latest_roots(late, before) and got
    assert set(cave_source.latest_roots(late, truth.created(late)).tolist()) == {late}


def test_batches_respect_batch_size(cave_server, truth):
    if cave_server.state.faults.active:  # CRANTSEG_TEST_STORAGE=*faulty: retried requests count too
        pytest.skip("counts requests exactly; the faulty test storage adds retries")
    src = CaveSource(fast_spec(cave_server, **{"batch-size": 100}))
    n0 = cave_server.state.n_requests
    t = check_times(truth)[-1]
    np.testing.assert_array_equal(src.roots(truth.supervoxels, t), truth.root_of(truth.supervoxels, t))
    n_batches = -(-len(np.unique(truth.supervoxels)) // 100)
    assert cave_server.state.n_requests - n0 == n_batches
    np.testing.assert_array_equal(src.is_latest(truth.all_roots, t), [truth.is_latest(r, t) for r in truth.all_roots])


def test_wrong_token_is_a_clear_auth_error(cave_server):
    spec = fast_spec(cave_server, token="0" * 32)
    with pytest.raises(AuthError, match=r"refused the token \(HTTP 401\)") as e:
        CaveSource(spec)
    assert cave_server.token not in str(e.value)


def test_unreachable_server_fails_after_retries(cave_home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from crantseg_dask.sources.resolve import cave_dataset

    spec = cave_dataset(f"http://127.0.0.1:{port}", "nothing", token="a" * 32, retries=2, backoff=0.001,
                        **{"backoff-max": 0.002})
    with pytest.raises(SourceError, match="after 3 attempts"):
        CaveSource(spec)


def test_no_traffic_beyond_loopback(cave_server, cave_home, truth, monkeypatch):
    """Building caveclient and cloud-volume (and using them) connects only to 127.0.0.1."""
    seen = []
    real_connect = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return real_connect(self, address)

    looked_up = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    src = CaveSource(fast_spec(cave_server))
    src.cloudvolume(0)
    src.materialization_versions()
    off, size = truth.bounds(0)
    src.cutout(np.array([off, off + [8, 8, 8]]), 0)
    hosts = {a[0] for a in seen if isinstance(a, tuple)}
    assert hosts == {"127.0.0.1"}, seen
    assert set(looked_up) <= {"127.0.0.1"}, looked_up
    assert not (cave_home / ".cloudvolume" / "secrets" / "cave_datastack_to_server_map.json").exists()


def test_open_source_and_eager_ops_over_cave(cave_spec, truth):
    """The public ops run unchanged on the cave source (timestamp "mat" via materialize)."""
    from crantseg_dask.ops.mapping import roots_to_supervoxels, supervoxels_to_roots
    from crantseg_dask.sources import open_source

    assert isinstance(open_source(cave_spec), CaveSource)
    svs = truth.supervoxels
    got = supervoxels_to_roots(svs, timestamp="mat_2", batch_size=300, progress=False, dataset=cave_spec)
    np.testing.assert_array_equal(got.astype(np.uint64), truth.root_of(svs, truth.materialization(2)))
    roots = truth.all_roots[:4]
    leaves = roots_to_supervoxels(roots, progress=False, dataset=cave_spec)
    for r in roots.tolist():
        np.testing.assert_array_equal(np.sort(np.asarray(leaves[r], dtype=np.uint64)), truth.leaves(r))
