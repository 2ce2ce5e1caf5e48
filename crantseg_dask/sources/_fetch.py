"""Concurrent byte reads from a precomputed layer: many GETs in flight, transient retries only.

A ``Store`` reads one object (or a byte range of it) of a layer: ``file://`` directly from disk,
``http(s)://`` through the process's one libcurl multi handle (``_curl``: kept-alive connections,
Range reads, a per-request timeout, the CAVE token only when the layer is on the CAVE server's
own host), anything else (``gs://``, ``s3://``) through cloud-files. ``fetch(store, requests)``
runs many reads at once: at most ``crantseg.storage.max-in-flight`` HTTP transfers in flight per
worker process whatever the number of tasks, ``file://`` and cloud-files reads on the process's
thread pool (``file://`` at most ``storage.file-in-flight``, 2 per core), and
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

import functools
import gzip
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from ..config import setting
from ..errors import SourceError
from . import _curl, _http

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


def _count(delta: int, nbytes: int = 0, gets: int = 1) -> None:
    """A read started (``delta`` 1: ``gets`` more requests, read one after another) or ended
    (``delta`` -1, ``nbytes`` read)."""
    global _in_flight
    with _stats_lock:
        _in_flight += delta
        if delta > 0:
            stats["gets"] += gets
            stats["peak_in_flight"] = max(stats["peak_in_flight"], _in_flight)
        stats["bytes"] += nbytes


def gunzip_if(data: bytes, name: str) -> bytes | bytearray:
    """``data`` gunzipped when it starts with the gzip magic; ``SourceError`` naming ``name`` if bad.

    libdeflate's answer is a ``bytearray``, returned as it is: a copy to ``bytes`` cost 30 ms per
    10^6 points under the GIL (every consumer reads it through the buffer protocol)."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        if _deflate is not None:  # libdeflate: 2-4x zlib (perf-baseline.md); cloud-files' own choice
            return _deflate.gzip_decompress(data)
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
        data = None
        try:
            data = self._get(key, start, end)
        finally:
            _count(-1, 0 if data is None else len(data))
        return data

    def get_many(self, requests: list[tuple]) -> list:
        """``get`` of each request, in order (one pool task reads several local files), counted
        in the stats as one batch (the stats lock once per batch, not per read)."""
        _count(+1, gets=len(requests))  # one thread reads them in turn: one in flight
        out: list = []
        try:
            for r in requests:
                out.append(self._get(*r))
        finally:
            _count(-1, sum(len(d) for d in out if d is not None))
        return out

    def _get(self, key, start, end) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError


class FileStore(Store):
    """``file://`` layers: whole files (``key`` or ``key.gz``, gunzipped) or byte ranges.

    Reads in flight are capped at ``cap`` (``file_in_flight``: 2 per CPU core by default): a
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
                    with open(names[0], "rb", buffering=0) as f:  # unbuffered: one read of the whole file
                        data = f.read()
                except FileNotFoundError:
                    with open(names[1], "rb", buffering=0) as f:
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

    Every GET of the process goes through one libcurl multi handle (``_curl``): kept-alive
    connections shared by all tasks, at most ``size`` transfers at once, transient failures
    (connection errors, timeouts, 429/502-504) retried under the policy; 404 is a missing object;
    401/403 raise ``AuthError``; anything else ``SourceError`` naming the URL. A gzip body
    (``Content-Encoding: gzip``, as buckets serve gzipped chunk files) is inflated with libdeflate
    in the caller's thread. The CAVE token is sent only when ``token`` is given (``open_store``
    gives it to a layer on the CAVE server's own host).
    """

    def __init__(self, base: str, *, policy, token: str | None = None, n_connections: int = 256):
        super().__init__(base)
        u = urlsplit(self.base)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SourceError(f"{base!r} is not an http(s):// layer URL")
        self.policy = policy
        self.size = max(1, int(n_connections))
        self.headers = ["Accept-Encoding: gzip"] + ([f"Authorization: Bearer {token}"] if token else [])

    def job(self, key: str, start: int | None, end: int | None, done) -> "_curl.Job":
        headers = self.headers
        if start is not None or end is not None:
            headers = headers + [f"Range: bytes={start or 0}-{'' if end is None else end - 1}"]
        return _curl.Job(self.url(key), headers, self.policy, done)

    def result(self, key: str, start: int | None, end: int | None, answer) -> bytes | None:
        """The bytes of a finished job's ``answer`` (gunzipped, cut to the range), or None."""
        if answer[0] == "missing":
            return None
        if answer[0] == "error":
            raise answer[1]
        _, status, encoding, body = answer
        url = self.url(key)
        if encoding and encoding != "identity":
            if encoding != "gzip":
                raise SourceError(f"GET {url}: unsupported Content-Encoding {encoding!r}")
            if body[:2] != b"\x1f\x8b":
                raise SourceError(f"GET {url}: Content-Encoding gzip but the body is not gzip data")
            body = gunzip_if(body, url)
        if status == 200 and (start is not None or end is not None):  # a server that ignores Range
            body = body[start or 0: end]
        return body

    def driver(self, size: int | None = None):
        """The process's libcurl driver of ``size`` (default: this store's) transfers at once."""
        return _curl.driver(size or self.size, _count, _count_retry)

    def get(self, key, start=None, end=None):
        box: queue.SimpleQueue = queue.SimpleQueue()
        self.driver().submit([self.job(key, start, end, box.put)])
        return self.result(key, start, end, box.get())


def _count_retry() -> None:
    with _stats_lock:
        stats["retries"] += 1


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
    return max(1, int(setting("storage.max-in-flight", 256) if value is None else value))


def file_in_flight(value=None) -> int:
    """Reads in flight per process from a ``file://`` layer: ``value`` (a spec's pinned
    ``storage.file-in-flight``), else that setting of this process, else 2 per CPU core this
    process may use. A local read is CPU-bound (inflating, GIL released), so more threads only
    contend for the GIL with the decoding thread. Measured on the demo, 2 cores shared with other
    work (noisy): reading all 2,048 gzipped mip-0 chunks took 0.36 s with 2 threads, 0.52 s with
    8, 0.58 s with 96. Since point decoding is compiled (no GIL), median of 12 calls of 10^4 uniform
    points in one process (demo, 2026-11-30): 0.240 / 0.248 / 0.234 / 0.269 / 0.331 s with
    2 / 3 / 4 / 8 / 16 threads; 10^6 points: 4 threads 0.49 s, 8 threads 0.54 s."""
    if value is None:
        value = setting("storage.file-in-flight", None)
    if value is None:
        try:
            value = 2 * len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            value = 2 * (os.cpu_count() or 2)
    return max(1, int(value))


#: local reads per pool task at most
_FILE_GROUP = 8
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
    if isinstance(store, HttpStore):
        yield from _fetch_http(store, reqs, n, window or 2 * n)
        return
    if store.cap is not None:
        n = min(n, store.cap)
    pool = _executor(n)
    window = window or 2 * n
    # a local store's reads go ``group`` per pool task (each thread still has ~4 tasks queued):
    # a task per read cost ~40 ms of GIL-held pool overhead per 2,000 reads
    group = max(1, min(_FILE_GROUP, len(reqs) // (4 * n))) if isinstance(store, FileStore) else 1
    done: queue.SimpleQueue = queue.SimpleQueue()  # completed futures, in completion order
    pending: dict = {}  # future -> its first request's index
    held = 0  # requests in pending futures
    nxt = 0
    try:
        while nxt < len(reqs) or pending:
            while nxt < len(reqs) and held < window:
                k = min(group, len(reqs) - nxt, window - held)
                fut = pool.submit(store.get_many, reqs[nxt:nxt + k])
                pending[fut] = nxt
                fut.add_done_callback(done.put)
                nxt += k
                held += k
            fut = done.get()
            first = pending.pop(fut)
            datas = fut.result()
            held -= len(datas)
            yield from enumerate(datas, first)
    finally:
        for fut in pending:
            fut.cancel()


def _fetch_http(store: HttpStore, reqs: list, n: int, window: int) -> Iterator[tuple[int, bytes | None]]:
    """``fetch`` through the process's libcurl driver of ``n`` transfers at once: ``window`` jobs
    submitted and unread at most."""
    drv = store.driver(n)
    done: queue.SimpleQueue = queue.SimpleQueue()
    jobs: dict[int, _curl.Job] = {}
    nxt = 0
    try:
        while nxt < len(reqs) or jobs:
            batch = []
            while nxt < len(reqs) and len(jobs) < window:
                jobs[nxt] = job = store.job(*reqs[nxt], functools.partial(_put, done, nxt))
                batch.append(job)
                nxt += 1
            if batch:
                drv.submit(batch)
            i, answer = done.get()
            del jobs[i]
            yield i, store.result(*reqs[i], answer)
    finally:
        for job in jobs.values():
            job.cancelled = True


def _put(q: queue.SimpleQueue, i: int, answer) -> None:
    q.put((i, answer))
