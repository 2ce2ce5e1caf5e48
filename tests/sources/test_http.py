"""The per-process cap on concurrent CAVE requests."""
import threading
import time

import dask
import pytest
import requests

from crantseg_dask.errors import SourceError
from crantseg_dask.sources import _http


def test_requests_in_flight_never_exceed_the_cap(monkeypatch):
    monkeypatch.setattr(_http, "_slots", None)
    active, peak, lock = [0], [0], threading.Lock()

    def request():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return "ok"

    with dask.config.set({"crantseg.cave.max-concurrency": 2}):
        policy = _http.RetryPolicy(retries=0)
        threads = [threading.Thread(target=policy.call, args=(request, "GET test")) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak[0] == 2
    monkeypatch.setattr(_http, "_slots", None)


@pytest.mark.parametrize("error", [requests.exceptions.SSLError("certificate verify failed"),
                                   requests.exceptions.ProxyError("proxy refused")])
def test_tls_and_proxy_errors_are_not_retried(error):
    calls = []

    def fail():
        calls.append(1)
        raise error

    assert not _http.is_transient(error)
    with pytest.raises(SourceError, match=type(error).__name__):
        _http.RetryPolicy(retries=3).call(fail, "GET test", sleep=lambda s: None)
    assert len(calls) == 1
    assert _http.is_transient(requests.exceptions.ConnectionError("reset"))


def test_no_thread_gets_the_session_before_its_adapter_is_mounted(monkeypatch):
    monkeypatch.setattr(_http, "_session", None)
    original = _http.mount

    def slow_mount(s, policy):
        time.sleep(0.3)
        return original(s, policy)

    monkeypatch.setattr(_http, "mount", slow_mount)
    first = threading.Thread(target=_http.session)
    first.start()
    time.sleep(0.05)
    adapter = _http.session().get_adapter("https://example.org")  # while the first call is still mounting
    first.join()
    assert isinstance(adapter, _http.PooledAdapter)
    monkeypatch.setattr(_http, "_session", None)
