"""Every HTTP(S) read of a precomputed layer in a process goes through one libcurl multi handle.

One daemon thread per process (and per in-flight cap) drives a ``pycurl.CurlMulti`` with the
socket interface on an epoll selector: connections are kept alive and reused by every task of the
process, libcurl does the HTTP work without the GIL, and at most ``size`` transfers run at once.
Callers ``submit`` a ``Job``; its ``done`` callback gets the finished answer, called on the driver
thread: ``("ok", status, content_encoding, body)``, ``("missing",)`` (404) or ``("error", exc)``.
The driver retries transient failures under the store's ``RetryPolicy`` (connection errors,
timeouts, HTTP 429/502/503/504) after the policy's backoff, without holding a connection while
it waits; it never inflates or decodes: the caller's thread does (in parallel with the others).

Why libcurl: with a thread and an ``http.client`` connection per read, each GET cost about 0.2 ms
of client CPU under the GIL (header parsing in ``email.feedparser``, 96-256 threads switching);
the multi handle costs about 0.05 ms (``benchmarks/bench_storage.py``), and at 50 ms per GET a
process needs hundreds of reads in flight to keep 2 cores busy.

Timeouts: ``policy.timeout`` bounds connecting, and a transfer that receives no byte for that
long (rounded up to whole seconds: libcurl's low-speed check) is aborted and retried.
Proxies: libcurl follows ``https_proxy`` / ``http_proxy`` / ``no_proxy`` of the environment; this
machine's own addresses (127.0.0.1, localhost, ::1) never go through a proxy. Certificates: those
requests would use (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's).
"""
from __future__ import annotations

import heapq
import io
import itertools
import math
import os
import selectors
import threading
import time
from collections import deque
from typing import Callable

import pycurl

from . import _http

__all__ = ["Job", "driver", "TRANSIENT_CURL"]

#: libcurl errors worth another attempt: cannot connect, timeout, the connection dropped mid-way
#: (TLS, DNS, proxy and protocol errors are not: they do not go away on their own).
TRANSIENT_CURL = frozenset({
    pycurl.E_COULDNT_CONNECT, pycurl.E_OPERATION_TIMEDOUT, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR,
    pycurl.E_GOT_NOTHING, pycurl.E_PARTIAL_FILE,
})
_LOCAL = "127.0.0.1,localhost,::1"


class Job:
    """One GET: ``url``, the request ``headers`` (lines), its ``policy``, and ``done(answer)``."""

    __slots__ = ("url", "headers", "policy", "done", "attempt", "cancelled", "body", "encoding")

    def __init__(self, url: str, headers: list[str], policy, done: Callable):
        self.url, self.headers, self.policy, self.done = url, headers, policy, done
        self.attempt = 0
        self.cancelled = False

    def _header(self, line: bytes) -> None:
        if line[:5] == b"HTTP/":  # a new response (after a 100 Continue or an interim answer)
            self.encoding = None
            return
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-encoding":
            self.encoding = value.strip().decode("latin-1").lower()


class _Driver:
    def __init__(self, size: int, count: Callable, on_retry: Callable):
        self.size, self._count, self._on_retry = size, count, on_retry
        self.lock = threading.Lock()
        self.queue: deque = deque()  # jobs waiting for a free transfer slot
        self.later: list = []  # (time, seq, job): retries waiting for their backoff
        self.seq = itertools.count()
        self.free: list = []  # idle easy handles (each remembers its connection)
        self.handles: list = []  # every easy handle made
        self.active = 0
        self.deadline: float | None = None
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.multi.setopt(pycurl.M_MAXCONNECTS, size)
        self.thread = threading.Thread(target=self._run, name="crantseg-curl", daemon=True)
        self.thread.start()

    # -- called from any thread --------------------------------------------------------------------
    def submit(self, jobs) -> None:
        with self.lock:
            self.queue.extend(jobs)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: the driver is awake anyway
            pass

    # -- libcurl callbacks (driver thread) -----------------------------------------------------------
    def _on_socket(self, what, fd, multi, data) -> None:
        if what == pycurl.POLL_REMOVE:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            return
        events = ((selectors.EVENT_READ if what & pycurl.POLL_IN else 0) |
                  (selectors.EVENT_WRITE if what & pycurl.POLL_OUT else 0))
        try:
            self.sel.modify(fd, events)
        except KeyError:
            self.sel.register(fd, events)
        except OSError:  # a stale entry: the socket was closed and its number reused
            self.sel.unregister(fd)
            self.sel.register(fd, events)

    def _on_timer(self, ms: int) -> None:
        self.deadline = None if ms < 0 else time.monotonic() + ms / 1000

    # -- the loop (driver thread) -------------------------------------------------------------------
    def _handle(self) -> pycurl.Curl:
        if self.free:
            return self.free.pop()
        c = pycurl.Curl()
        self.handles.append(c)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.NOPROXY, ",".join(filter(None, (os.environ.get("no_proxy") or os.environ.get("NO_PROXY"),
                                                       _LOCAL))))
        c.setopt(pycurl.BUFFERSIZE, 256 * 1024)
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.CAINFO, _ca_bundle())
        return c

    def _start(self, job: Job) -> None:
        c = self._handle()
        job.body = io.BytesIO()
        job.encoding = None
        c.job = job
        c.setopt(pycurl.URL, job.url)
        c.setopt(pycurl.HTTPHEADER, job.headers)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(job.policy.timeout * 1000)))
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(job.policy.timeout)))
        c.setopt(pycurl.WRITEFUNCTION, job.body.write)
        c.setopt(pycurl.HEADERFUNCTION, job._header)
        self.multi.add_handle(c)
        self.active += 1
        self._count(+1)

    def _finish(self, c: pycurl.Curl, errno: int, message: str) -> None:
        job: Job = c.job
        status = c.getinfo(pycurl.RESPONSE_CODE) if not errno else 0
        self.multi.remove_handle(c)
        c.job = None
        self.free.append(c)
        self.active -= 1
        body = job.body.getvalue()
        job.body = None
        self._count(-1, len(body))
        if job.cancelled:
            return
        if errno:
            if errno not in TRANSIENT_CURL:
                return self._answer(job, ("error", _error(f"GET {job.url} failed: {message} (libcurl error {errno})")))
            why = f"{message} (libcurl error {errno})"
        elif status in (200, 206):
            return self._answer(job, ("ok", status, job.encoding, body))
        elif status == 404:
            return self._answer(job, ("missing",))
        elif status not in _http.TRANSIENT_STATUS:
            return self._answer(job, ("error", _http.status_error(status, body, job.url, f"GET {job.url}")))
        else:
            why = f"HTTP {status}: {_http.body_text(body, 120)}"
        if job.attempt >= job.policy.retries:
            return self._answer(job, ("error", _error(f"GET {job.url} failed after {job.attempt + 1} attempts: {why}")))
        self._on_retry()
        delay = job.policy.delay(job.attempt)
        job.attempt += 1
        heapq.heappush(self.later, (time.monotonic() + delay, next(self.seq), job))

    @staticmethod
    def _answer(job: Job, answer) -> None:
        try:
            job.done(answer)
        except Exception:  # pragma: no cover - a caller's callback must not stop the driver
            pass

    def _run(self) -> None:
        while True:
            try:
                self._step()
            except Exception as e:  # pragma: no cover - a bug here must fail the reads, not hang them
                self._fail_all(e)

    def _fail_all(self, e: Exception) -> None:
        err = _error(f"the HTTP read loop failed: {type(e).__name__}: {e}")
        with self.lock:
            jobs, self.queue = list(self.queue) + [j for _, _, j in self.later], deque()
            self.later = []
        for c in self._busy():
            jobs.append(c.job)
            self.multi.remove_handle(c)
            c.job = None
            self.free.append(c)
            self.active -= 1
            self._count(-1)
        for job in jobs:
            if job is not None and not job.cancelled:
                self._answer(job, ("error", err))

    def _busy(self):
        return [c for c in self.handles if getattr(c, "job", None) is not None]

    def _step(self) -> None:
        multi = self.multi
        now = time.monotonic()
        with self.lock:
            while self.later and self.later[0][0] <= now:
                self.queue.append(heapq.heappop(self.later)[2])
            start = []
            while self.queue and self.active + len(start) < self.size:
                job = self.queue.popleft()
                if not job.cancelled:
                    start.append(job)
        for job in start:
            self._start(job)
        timeout = 1.0
        if self.deadline is not None:
            timeout = min(timeout, max(0.0, self.deadline - now))
        if self.later:
            timeout = min(timeout, max(0.0, self.later[0][0] - now))
        for key, mask in self.sel.select(timeout):
            if key.fd == self.wake_r:
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            ev = ((pycurl.CSELECT_IN if mask & selectors.EVENT_READ else 0) |
                  (pycurl.CSELECT_OUT if mask & selectors.EVENT_WRITE else 0))
            multi.socket_action(key.fd, ev)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.deadline = None
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        while True:
            n_left, ok, failed = multi.info_read()
            for c in ok:
                self._finish(c, 0, "")
            for c, errno, message in failed:
                self._finish(c, errno, message)
            if not n_left:
                break


def _ca_bundle() -> str:
    """The CA certificates requests would use: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    import certifi

    return certifi.where()


def _error(message: str):
    from ..errors import SourceError

    return SourceError(message)


_drivers: dict[tuple[int, int], _Driver] = {}
_drivers_lock = threading.Lock()


def driver(size: int, count: Callable, on_retry: Callable) -> _Driver:
    """The process's driver for ``size`` transfers at once (made anew after a fork)."""
    key = (os.getpid(), size)
    with _drivers_lock:
        d = _drivers.get(key)
        if d is None:
            d = _drivers[key] = _Driver(size, count, on_retry)
        return d
