"""The per-process cap on concurrent CAVE requests."""
import threading
import time

import dask

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
