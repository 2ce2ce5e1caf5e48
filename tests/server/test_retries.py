"""The retry policy (sources/_http.py) against the server's fault mode.

Transient failures (503, 429, stalls past the client timeout, connection errors) are retried with
capped jittered backoff and then succeed; any other 4xx fails at once with a clear message.
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from crantseg_dask.errors import AuthError, SourceError
from crantseg_dask.server import Faults
from crantseg_dask.sources import _http
from crantseg_dask.sources.cave import CaveSource
from crantseg_dask.testing.conformance import check_times
from crantseg_dask.testing.server import fast_spec


@pytest.fixture
def scripted(cave_server):
    """The session server; the test scripts its next answers. Faults are cleared afterwards."""
    yield cave_server
    cave_server.set_faults(Faults())


@pytest.fixture(scope="module")
def src(cave_server):
    return CaveSource(fast_spec(cave_server))


@pytest.mark.parametrize("statuses", [[503], [429], [503, 429, 502, 504]])
def test_transient_statuses_are_retried_then_succeed(scripted, src, truth, statuses):
    t = check_times(truth)[-1]
    scripted.set_faults(Faults(script=list(statuses)))
    n0 = scripted.state.n_requests
    got = src.roots(truth.supervoxels, t)
    np.testing.assert_array_equal(got, truth.root_of(truth.supervoxels, t))
    assert scripted.state.faults.injected == len(statuses)
    assert scripted.state.n_requests - n0 == len(statuses) + 1


def test_stall_past_the_timeout_is_retried(scripted, truth):
    src = CaveSource(fast_spec(scripted, timeout=0.3))
    scripted.set_faults(Faults(script=["stall"], stall_s=2.0))
    t0 = time.monotonic()
    got = src.is_latest(truth.all_roots, check_times(truth)[-1])
    assert time.monotonic() - t0 < 1.5  # gave up on the stalled request after ~0.3 s
    np.testing.assert_array_equal(got, [truth.is_latest(r, check_times(truth)[-1]) for r in truth.all_roots])


def test_400_fails_at_once_with_endpoint_status_and_message(scripted, src, truth):
    n0 = scripted.state.n_requests
    with pytest.raises(SourceError, match=r"POST roots_binary: HTTP 400 .*roots_binary: stop_layer=99 must be") as e:
        src.roots(truth.supervoxels[:5], check_times(truth)[-1], stop_layer=99)
    assert scripted.state.n_requests - n0 == 1
    assert not isinstance(e.value, AuthError) and e.value.status == 400


def test_other_4xx_and_500_are_not_retried(scripted, src, truth):
    for status in (404, 409, 500):
        scripted.set_faults(Faults(script=[status]))
        n0 = scripted.state.n_requests
        with pytest.raises(SourceError, match=f"HTTP {status}"):
            src.is_latest(truth.all_roots[:3], check_times(truth)[-1])
        assert scripted.state.n_requests - n0 == 1


def test_retries_are_capped(scripted, truth):
    src = CaveSource(fast_spec(scripted, retries=3))
    scripted.set_faults(Faults(fail_rate=1.0))
    with pytest.raises(SourceError, match=r"POST is_latest_roots failed after 4 attempts; last error: HTTP (503|429)"):
        src.is_latest(truth.all_roots[:3], check_times(truth)[-1])


def test_backoff_is_jittered_exponential_and_capped():
    p = _http.RetryPolicy(retries=10, backoff=0.5, backoff_max=4.0)
    rng = random.Random(0)
    waits = [[p.delay(k, rng) for _ in range(200)] for k in range(8)]
    for k, w in enumerate(waits):
        assert 0 <= min(w) and max(w) <= min(4.0, 0.5 * 2 ** k)
        assert len(set(w)) > 150  # jittered
    assert max(waits[7]) > 3.0  # reaches the cap


def test_policy_reads_settings_and_spec_options(cave_server):
    import dask.config

    with dask.config.set({"crantseg.http.retries": 2, "crantseg.http.timeout": 7.5}):
        p = _http.RetryPolicy.from_spec(None)
    assert (p.retries, p.timeout) == (2, 7.5)
    p = _http.RetryPolicy.from_spec(fast_spec(cave_server, retries=1))
    assert p.retries == 1 and p.backoff == 0.005


def test_one_pool_per_process(src):
    pools = {id(src.cg.session.get_adapter("http://x").poolmanager),
             id(src.mat.session.get_adapter("http://x").poolmanager),
             id(src.client.info.session.get_adapter("http://x").poolmanager),
             id(_http.session().get_adapter("http://x").poolmanager)}
    assert len(pools) == 1


def test_direct_request_helper(scripted):
    policy = _http.RetryPolicy(retries=3, backoff=0.001, backoff_max=0.002, timeout=5)
    headers = {"Authorization": f"Bearer {scripted.token}"}
    scripted.set_faults(Faults(script=[429, 503]))
    r = _http.request("GET", scripted.address + "/info/version", policy=policy, headers=headers)
    assert r.json() == "4.3.1"
    with pytest.raises(AuthError, match="HTTP 401"):
        _http.request("GET", scripted.address + "/info/version", policy=policy)
    with pytest.raises(SourceError, match="HTTP 404"):
        _http.request("GET", scripted.address + "/nothing", policy=policy, headers=headers)
