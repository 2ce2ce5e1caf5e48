"""Concurrent byte reads from a precomputed layer: many GETs in flight, transient retries only.

A ``Store`` reads one object (or a byte range of it) of a layer: ``file://`` directly from disk,
``http(s)://`` with a kept-alive ``http.client`` connection per read thread (Range reads, a
per-request timeout, the CAVE token only when the layer is on the CAVE server's own host),
anything else (``gs://``, ``s3://``) through cloud-files. ``fetch(store, requests)`` runs many reads on the process's
thread pool with at most ``crantseg.storage.max-in-flight`` in flight (per worker process,
whatever the number of tasks; ``file://`` at most ``storage.file-in-flight``, 4 per core) and
yields each result as it arrives, so the caller decodes
while the other reads are still on the wire. A missing object is ``None``; a transient failure
(connection error, timeout, 429, 502-504) is retried under the source's ``RetryPolicy``; any
other failure raises ``SourceError`` naming the object. Nothing here ever turns a failure into
background.

Why not cloud-files' threaded ``get(list)`` or cloud-volume for HTTP: cloud-files' HTTP
interface sends no bearer token, has no request timeout (a stalled GET hangs) and reads
403 as "missing"; see ``benchmarks/bench_storage.py`` for the measured comparison.
"""
from __future__ import annotations

import gzip
import http.client
import os
import queue
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from ..config import setting
from ..errors import SourceError
from . import _http

try:
    import deflate as _deflate
except ImportError:  # pragma: no cover - a dependency of cloud-files
    _deflate = None

__all__ = ["Store", "open_store", "fetch", "file_in_flight", "stats", "reset_stats", "gunzip_if"]

#: Per-process counters: reads issued (incl. retries), peak reads in flight, bytes received.
stats = {"gets": 0, "peak_in_flight": 0, "bytes": 0, "retries": 0}
_stats_lock = threading.Lock()
_in_flight = 0


def reset_stats() -> None:
    with _stats_lock:
        stats.update(gets=0, peak_in_flight=0, bytes=0, retries=0)


def _count(delta: int, nbytes: int = 0) -> None:
    global _in_flight
    with _stats_lock:
        _in_flight += delta
        if delta > 0:
            stats["gets"] += 1
            stats["peak_in_flight"] = max(stats["peak_in_flight"], _in_flight)
        stats["bytes"] += nbytes


def gunzip_if(data: bytes, name: str) -> bytes:
    """``data`` gunzipped when it starts with the gzip magic; ``SourceError`` naming ``name`` if bad."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        if _deflate is not None:  # libdeflate: 2-4x zlib (perf-baseline.md); cloud-files' own choice
            return bytes(_deflate.gzip_decompress(data))
        return gzip.decompress(data)
    except Exception as e:  # zlib.error, OSError, EOFError, deflate.DeflateError
        raise SourceError(f"{name}: corrupt or truncated gzip data ({e})") from e


class Store:
    """Reads objects of one layer (``base`` URL); subclasses implement ``_get``. ``cap``: at most
    this many reads in flight whatever the caller asks (None: no cap)."""

    cap: int | None = None

    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def url(self, key: str) -> str:
        return f"{self.base}/{key}"

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` of object ``key`` (whole object when None); None if missing."""
        _count(+1)
        try:
            data = self._get(key, start, end)
        finally:
            _count(-1)
        if data is not None:
            _count(0, len(data))
        return data

    def _get(self, key, start, end) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError


class FileStore(Store):
    """``file://`` layers: whole files (``key`` or ``key.gz``, gunzipped) or byte ranges.

    Reads in flight are capped at ``cap`` (``file_in_flight``: 4 per CPU core by default): a
    local read is CPU-bound (inflating), so more threads only contend for the GIL."""

    def __init__(self, base: str, cap: int | None = None):
        super().__init__(base)
        self.cap = cap

    #: try ``key.gz`` first (the last whole-file read found the gzipped name): one failed open
    #: less per read of a gzipped layer
    _gz_first = False

    def _get(self, key, start, end):
        path = self.base[len("file://"):] + "/" + key
        try:
            if start is None and end is None:
                names = (path + ".gz", path) if self._gz_first else (path, path + ".gz")
                try:
                    with open(names[0], "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    with open(names[1], "rb") as f:
                        data = f.read()
                    names = names[::-1]
                    self._gz_first = names[0].endswith(".gz")
                return gunzip_if(data, self.url(key)) if names[0].endswith(".gz") else data
            with open(path, "rb") as f:
                f.seek(start or 0)
                return f.read(None if end is None else end - (start or 0))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SourceError(f"reading {self.url(key)} failed: {e}") from e


class HttpStore(Store):
    """``http(s)://`` layers: plain GETs with ``Range``, a timeout, transient retries.

    Each read thread keeps its own kept-alive ``http.client`` connection per host (about 4x less
    client CPU per GET than a ``requests`` session: no per-request settings merge, hooks,
    cookie jar or header re-parsing; ``benchmarks/bench_storage.py``). A gzip body
    (``Content-Encoding: gzip``, as buckets serve gzipped chunk files) is inflated with libdeflate.
    A reused connection that the server closed while idle is reopened at once (not a retry); any
    other connection error, timeout, or 429/502-504 is retried under the policy; 404 is a missing
    object; 401/403 raise ``AuthError``; anything else ``SourceError`` naming the URL. When the
    environment names a proxy for the host, the GETs go through ``requests`` (which honours it).
    """

    _OPEN_FAILED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError)

    def __init__(self, base: str, *, policy, token: str | None = None, n_connections: int = 32):
        super().__init__(base)
        u = urlsplit(self.base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SourceError(f"{base!r} is not an http(s):// layer URL")
        self.policy = policy
        self.scheme, self.netloc, self.path = u.scheme, u.netloc, u.path
        self.host, self.port = u.hostname, u.port
        self.headers = {"Accept-Encoding": "gzip"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._session = None
        if self.host not in ("127.0.0.1", "localhost", "::1") and _proxied(self.scheme, self.host):
            self._session = _http.session(policy)

    def _connection(self, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to the host (``True``: newly made), made after a fork anew."""
        conns = getattr(_tls, "conns", None)
        if conns is None:
            conns = _tls.conns = {}
        key = (os.getpid(), self.scheme, self.netloc, self.policy.timeout)
        conn = conns.get(key)
        if conn is not None and not fresh:
            return conn, False
        if conn is not None:
            conn.close()
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = conns[key] = cls(self.host, self.port, timeout=self.policy.timeout)
        return conn, True

    def _drop(self) -> None:
        conns = getattr(_tls, "conns", None) or {}
        conn = conns.pop((os.getpid(), self.scheme, self.netloc, self.policy.timeout), None)
        if conn is not None:
            conn.close()

    def _once(self, path: str, headers: dict) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one GET; reopens a connection the server closed while idle."""
        conn, fresh = self._connection()
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
        except self._OPEN_FAILED:
            if fresh:
                raise
            conn, _ = self._connection(fresh=True)  # closed while idle: not a failure of the read
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
        body = r.read()
        return r.status, {"encoding": r.getheader("Content-Encoding"), "retry": r.getheader("Retry-After")}, body

    def _get(self, key, start, end):
        url = self.url(key)
        if self._session is not None:
            return self._get_requests(url, start, end)
        headers = self.headers
        if start is not None or end is not None:
            headers = {**headers, "Range": f"bytes={start or 0}-{'' if end is None else end - 1}"}
        path = f"{self.path}/{key}"
        for attempt in range(self.policy.retries + 1):
            try:
                status, h, body = self._once(path, headers)
            except (OSError, http.client.HTTPException) as e:  # timeouts and connection errors included
                self._drop()
                if isinstance(e, ssl.SSLError) or not isinstance(e, _TRANSIENT_ERRORS):
                    raise SourceError(f"GET {url} failed: {type(e).__name__}: {e}") from e
                why = f"{type(e).__name__}: {str(e)[:200]}"
            else:
                if status in (200, 206):
                    return self._body(url, body, h["encoding"], status, start, end)
                if status == 404:
                    return None
                if status not in _http.TRANSIENT_STATUS:
                    raise _http.status_error(status, body, url, f"GET {url}")
                why = f"HTTP {status}: {_http.body_text(body, 120)}"
            if attempt == self.policy.retries:
                raise SourceError(f"GET {url} failed after {attempt + 1} attempts: {why}")
            with _stats_lock:
                stats["retries"] += 1
            time.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")

    @staticmethod
    def _body(url, body, encoding, status, start, end) -> bytes:
        if encoding and encoding != "identity":
            if encoding != "gzip":
                raise SourceError(f"GET {url}: unsupported Content-Encoding {encoding!r}")
            if body[:2] != b"\x1f\x8b":
                raise SourceError(f"GET {url}: Content-Encoding gzip but the body is not gzip data")
            body = gunzip_if(body, url)
        if status == 200 and start:  # a server that ignores Range: cut it here
            body = body[start: end]
        return body

    def _get_requests(self, url, start, end):
        """A GET through ``requests`` (used when a proxy applies), under the same rules."""
        headers = {k: v for k, v in self.headers.items() if k != "Accept-Encoding"}
        if start is not None or end is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        for attempt in range(self.policy.retries + 1):
            try:
                r = self._session.get(url, headers=headers, timeout=self.policy.timeout, allow_redirects=False)
                if r.status_code == 404:
                    return None
                r.raise_for_status()
                if r.status_code not in (200, 206):
                    raise SourceError(f"GET {url}: unexpected HTTP {r.status_code}")
                data = r.content  # requests undoes Content-Encoding: gzip
                return data[start: end] if r.status_code == 200 and start else data
            except Exception as e:
                if not _http.is_transient(e):
                    raise (_http.error_for(e, f"GET {url}") or SourceError(f"GET {url} failed: {e}")) from e
                if attempt == self.policy.retries:
                    raise SourceError(f"GET {url} failed after {attempt + 1} attempts: {_http._describe(e)}") from e
                with _stats_lock:
                    stats["retries"] += 1
                time.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")


#: Connection-level failures worth another attempt (TLS errors are not; checked first).
_TRANSIENT_ERRORS = (ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead,
                     http.client.BadStatusLine, http.client.RemoteDisconnected,
                     http.client.CannotSendRequest, http.client.ResponseNotReady)
_tls = threading.local()  # each read thread's connections: {(pid, scheme, host, timeout): conn}


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends ``scheme``://``host`` through a proxy."""
    import urllib.request

    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)


class CloudFilesStore(Store):
    """Other protocols (``gs://``, ``s3://`` ...) through cloud-files (its own retries)."""

    def __init__(self, base: str):
        from cloudfiles import CloudFiles

        super().__init__(base)
        self.cf = CloudFiles(self.base, progress=False)

    def _get(self, key, start, end):
        try:
            if start is None and end is None:
                return self.cf.get(key)
            return self.cf.get({"path": key, "start": start, "end": end})
        except Exception as e:
            raise SourceError(f"reading {self.url(key)} failed: {e}") from e


def open_store(base: str, *, policy=None, token: str | None = None, token_host: str | None = None,
               in_flight: int | None = None, file_in_flight_value=None) -> Store:
    """The ``Store`` for layer URL ``base``. The token is sent only to ``token_host`` (the CAVE server).
    ``in_flight``: connections of an HTTP store (default: the setting ``storage.max-in-flight``);
    ``file_in_flight_value``: the cap of a ``file://`` store (``file_in_flight``)."""
    scheme = urlsplit(base).scheme
    if scheme == "file":
        return FileStore(base, cap=file_in_flight(file_in_flight_value))
    if scheme in ("http", "https"):
        same = token_host is not None and urlsplit(base).netloc == token_host
        return HttpStore(base, policy=policy or _http.RetryPolicy.from_spec(), token=token if same else None,
                         n_connections=max_in_flight(in_flight))
    return CloudFilesStore(base)


def max_in_flight(value=None) -> int:
    """Reads in flight per worker process: ``value`` (a spec's pinned ``storage.max-in-flight``),
    else the setting ``crantseg.storage.max-in-flight`` of this process."""
    return max(1, int(setting("storage.max-in-flight", 96) if value is None else value))


def file_in_flight(value=None) -> int:
    """Reads in flight per process from a ``file://`` layer: ``value`` (a spec's pinned
    ``storage.file-in-flight``), else that setting of this process, else 4 per CPU core this
    process may use. A local read is CPU-bound (inflating, GIL released), so more threads only
    contend for the GIL with the decoding thread. Measured on the demo, 2 cores shared with other
    work (noisy): reading all 2,048 gzipped mip-0 chunks took 0.36 s with 2 threads, 0.52 s with
    8, 0.58 s with 96; 10^4-10^6-point lookups were fastest with 8-16 and slowest with 96."""
    if value is None:
        value = setting("storage.file-in-flight", None)
    if value is None:
        try:
            value = 4 * len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            value = 4 * (os.cpu_count() or 2)
    return max(1, int(value))


_pool: dict[tuple[int, int], ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor(size: int) -> ThreadPoolExecutor:
    """The process's read pool of ``size`` threads (rebuilt after a fork); its size bounds the
    reads in flight."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = {}
        key = (os.getpid(), size)
        if key not in _pool:
            _pool[key] = ThreadPoolExecutor(size, thread_name_prefix="crantseg-read")
        return _pool[key]


def fetch(store: Store, requests: Iterable[tuple], *, window: int | None = None,
          in_flight: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """Run ``store.get(*r)`` for each request ``r = (key, start, end)``; yield ``(index, bytes|None)``
    in completion order, at most ``in_flight`` at once (``max_in_flight``). At most ``window``
    (default 2 x in flight) reads are queued or
    running for this call, so the bytes held at once stay bounded. The first failure is raised
    (the reads still queued are cancelled)."""
    reqs = list(requests)
    if not reqs:
        return
    n = max_in_flight(in_flight)
    if store.cap is not None:
        n = min(n, store.cap)
    pool = _executor(n)
    window = window or 2 * n
    done: queue.SimpleQueue = queue.SimpleQueue()  # completed futures, in completion order
    pending = {}
    nxt = 0
    try:
        while nxt < len(reqs) or pending:
            while nxt < len(reqs) and len(pending) < window:
                fut = pool.submit(store.get, *reqs[nxt])
                pending[fut] = nxt
                fut.add_done_callback(done.put)
                nxt += 1
            fut = done.get()
            yield pending.pop(fut), fut.result()
    finally:
        for fut in pending:
            fut.cancel()
