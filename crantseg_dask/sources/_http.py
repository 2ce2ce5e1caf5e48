"""HTTP for remote sources: one pooled transport per process and one narrow retry policy.

* **Pool.** One urllib3 ``PoolManager`` per process, shared by every ``requests`` session we
  touch: the process session (``session()``) and every caveclient service session (``mount()``
  puts our adapter on them). The adapter does no retries of its own and applies the policy's
  timeout to every request (caveclient sets none).
* **Concurrency.** At most ``crantseg.cave.max-concurrency`` requests per process are in flight
  at once (``request_slot``), whatever the number of threads; a Dask cluster's total is that
  times its worker processes.
* **Retries.** ``RetryPolicy.call`` retries only connection errors (not TLS or proxy errors),
  timeouts, 429 and 502/503/504, with full-jitter exponential backoff capped at ``backoff_max``. Any other failure
  raises at once: 401/403 as ``AuthError``, anything else as ``SourceError``, each naming the
  endpoint, the status and a truncated body. A request that exhausts its retries raises too; it
  is never turned into an ID 0.

Settings come from ``crantseg.http.*`` (crantseg.yaml) as pinned in the dataset's spec when it was
resolved in the caller's process (``SourceSpec.setting``), overridable per dataset with
``SourceSpec`` options of the same names (``retries``, ``backoff``, ``backoff-max`` or
``backoff_max``, ``timeout``), e.g. ``cave_dataset(server, datastack, retries=3, timeout=10)``.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.util.retry import Retry

from ..config import setting
from ..errors import AuthError, SourceError

__all__ = ["RetryPolicy", "TRANSIENT_STATUS", "session", "mount", "is_transient", "error_for", "request",
           "request_slot", "status_error", "body_text"]

log = logging.getLogger("crantseg.http")

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
T = TypeVar("T")

_BODY_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures.

    retries : retries after the first attempt (0: try once).
    backoff : seconds; attempt k waits uniform(0, min(backoff_max, backoff * 2**k)).
    backoff_max : cap of one wait, seconds.
    timeout : connect and read timeout of one request, seconds.
    """

    retries: int = 6
    backoff: float = 0.5
    backoff_max: float = 20.0
    timeout: float = 30.0
    max_concurrency: int | None = None  # requests in flight per process (None: the setting now)
    pool_maxsize: int | None = None     # connections kept per host (None: the setting now)

    @classmethod
    def from_spec(cls, spec=None) -> "RetryPolicy":
        """The policy from the spec's options, else the spec's pinned ``crantseg.http.*`` settings
        (no spec: this process's settings)."""
        get_setting = spec.setting if spec is not None else setting

        def get(key, cast, prefix="http."):
            v = None
            if spec is not None:  # "backoff-max" or backoff_max (a keyword of cave_dataset)
                v = spec.option(key, spec.option(key.replace("-", "_")))
            if v is None:
                v = get_setting(f"{prefix}{key}", getattr(cls, key.replace("-", "_"), None))
            return cast(v)

        return cls(retries=get("retries", int), backoff=get("backoff", float),
                   backoff_max=get("backoff-max", float), timeout=get("timeout", float),
                   max_concurrency=get("max-concurrency", int, "cave."), pool_maxsize=get("pool-maxsize", int))

    def delay(self, attempt: int, rng=random) -> float:
        """Full-jitter wait before retry number ``attempt`` (0-based)."""
        return rng.uniform(0.0, min(self.backoff_max, self.backoff * (2 ** attempt)))

    def call(self, fn: Callable[[], T], endpoint: str, *, sleep=time.sleep) -> T:
        """``fn()`` with transient failures retried; other failures raised as crantseg errors.

        ``endpoint`` names the call in messages (e.g. ``"POST roots_binary"``)."""
        for attempt in range(self.retries + 1):
            try:
                with request_slot(self.max_concurrency):
                    return fn()
            except Exception as e:  # classified below; anything unknown is re-raised untouched
                if (host := unresolved_host(e)) is not None:  # offline or a misspelt address: no 30 s of retries
                    raise SourceError(f"{endpoint}: cannot resolve the host name {host!r} (no network, or a "
                                      "misspelt server address)") from e
                if not is_transient(e):
                    mapped = error_for(e, endpoint)
                    if mapped is None:
                        raise
                    raise mapped from e
                if attempt == self.retries:
                    raise SourceError(
                        f"{endpoint} failed after {self.retries + 1} attempts; last error: {_describe(e)}"
                    ) from e
                wait = self.delay(attempt)
                log.debug("%s: %s; retry %d/%d in %.2fs", endpoint, _describe(e), attempt + 1, self.retries, wait)
                sleep(wait)
        raise AssertionError("unreachable")


_slots: dict[int, threading.BoundedSemaphore] | None = None
_slots_lock = threading.Lock()


def request_slot(limit: int | None = None) -> threading.BoundedSemaphore:
    """The process-wide cap on concurrent requests to CAVE servers: ``limit`` (a policy's pinned
    ``crantseg.cave.max-concurrency``; None: the setting now) per worker process, shared by every
    caller with that limit; waits for retries do not hold a slot."""
    global _slots
    limit = max(1, int(setting("cave.max-concurrency", 4) if limit is None else limit))
    with _slots_lock:
        if _slots is None:
            _slots = {}
        if limit not in _slots:
            _slots[limit] = threading.BoundedSemaphore(limit)
        return _slots[limit]


def _response_of(e: BaseException):
    r = getattr(e, "response", None)
    return r if isinstance(r, requests.Response) else None


def unresolved_host(e: BaseException) -> str | None:
    """The host name whose DNS lookup failed behind ``e`` (a requests ``ConnectionError``), or None."""
    if not isinstance(e, requests.ConnectionError):
        return None
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if type(x).__name__ == "NameResolutionError" or isinstance(x, socket.gaierror):
            import re

            m = re.search(r"host='([^']+)'", str(e)) or re.search(r"Failed to resolve '([^']+)'", str(x))
            return m.group(1) if m else "?"
        todo += [getattr(x, "reason", None), x.__cause__, x.__context__] + [a for a in x.args
                                                                            if isinstance(a, BaseException)]
    return None


def is_transient(e: BaseException) -> bool:
    """Connection errors, timeouts, and HTTP 429/502/503/504: worth another attempt.

    TLS failures (a bad certificate) and proxy failures subclass ``ConnectionError`` but do not
    go away on their own: they are not transient."""
    if isinstance(e, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):
        return False
    if isinstance(e, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    r = _response_of(e)
    return r is not None and r.status_code in TRANSIENT_STATUS


def truncated_body(r: requests.Response, limit: int = _BODY_CHARS) -> str:
    """The JSON ``message`` of an error body, else its first ``limit`` characters."""
    return body_text(r.content or b"", limit)


def body_text(content: bytes, limit: int = _BODY_CHARS) -> str:
    """The JSON ``message`` of the error body ``content``, else its first ``limit`` characters."""
    try:
        d = json.loads(content)
        if isinstance(d, dict) and "message" in d:
            return str(d["message"])[:limit]
    except (ValueError, UnicodeDecodeError):
        pass
    text = content[:limit].decode("utf-8", errors="replace")
    return text + (f"... ({len(content)} bytes)" if len(content) > limit else "")


def status_error(status: int, content: bytes, url: str, endpoint: str) -> SourceError:
    """The crantseg error for an HTTP ``status`` >= 300 answered at ``url`` with body ``content``
    (401/403: ``AuthError``), with ``status`` and ``payload`` (the parsed JSON body or None)."""
    body = body_text(content)
    if status in (401, 403):
        err: SourceError = AuthError(
            f"{endpoint}: the server refused the token (HTTP {status}) at {url}: {body}. Pass the "
            "right token as cave_dataset(..., token=...) or store it with caveclient "
            "(client.auth.save_token); `crantseg serve` prints the token of a local server"
        )
    elif status < 400:
        err = SourceError(f"{endpoint}: unexpected HTTP {status} (a redirect) from {url}")
    else:
        err = SourceError(f"{endpoint}: HTTP {status} from {url}: {body}")
    err.status = status
    try:
        err.payload = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        err.payload = None
    return err


def error_for(e: BaseException, endpoint: str) -> SourceError | None:
    """The crantseg error for a non-transient failure ``e`` (None: not an HTTP failure)."""
    r = _response_of(e)
    if r is not None and r.status_code >= 400:
        url = r.request.url.split("?")[0] if r.request is not None and r.request.url else "?"
        return status_error(r.status_code, r.content or b"", url, endpoint)
    name = type(e).__name__
    if name == "AuthException":  # caveclient: a redirect happened (a login page)
        return AuthError(f"{endpoint}: the server redirected to a login page; the token is missing or wrong")
    if isinstance(e, requests.RequestException):
        return SourceError(f"{endpoint}: {_describe(e)}")
    return None


def _describe(e: BaseException) -> str:
    r = _response_of(e)
    if r is not None:
        return f"HTTP {r.status_code}: {truncated_body(r, 120)}"
    return f"{type(e).__name__}: {str(e)[:200]}"


# -- the pooled transport ----------------------------------------------------------------------
_lock = threading.RLock()  # re-entered: session() mounts an adapter, which asks for the pool
_pools: dict[tuple[int, int], PoolManager] = {}
_session: tuple[int, requests.Session] | None = None


def _pool_manager(size: int | None = None) -> PoolManager:
    """The process's urllib3 pool of ``size`` connections per host (default: the setting
    ``crantseg.http.pool-maxsize``), rebuilt after a fork."""
    size = max(1, int(setting("http.pool-maxsize", 32) if size is None else size))
    key = (os.getpid(), size)
    with _lock:
        if key not in _pools:
            _pools[key] = PoolManager(num_pools=16, maxsize=size, block=False)
        return _pools[key]


class PooledAdapter(HTTPAdapter):
    """A requests adapter over the process pool: no retries of its own, a default timeout."""

    def __init__(self, timeout: float, pool_maxsize: int | None = None):
        self.timeout = timeout
        self.pool_maxsize = pool_maxsize
        super().__init__(max_retries=Retry(total=0, read=False, redirect=False, raise_on_status=False))

    def init_poolmanager(self, *args, **kwargs) -> None:
        self.poolmanager = _pool_manager(getattr(self, "pool_maxsize", None))

    def send(self, request, stream=False, timeout=None, **kwargs):
        return super().send(request, stream=stream, timeout=self.timeout if timeout is None else timeout, **kwargs)

    def close(self) -> None:  # the pool is shared: closing one session must not close it
        for proxy in self.proxy_manager.values():
            proxy.clear()


def mount(s: requests.Session, policy: RetryPolicy) -> requests.Session:
    """Put the pooled adapter (no own retries, ``policy.timeout``) on session ``s``."""
    adapter = PooledAdapter(policy.timeout, policy.pool_maxsize)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def session(policy: RetryPolicy | None = None) -> requests.Session:
    """The process's own session (for requests made without caveclient)."""
    global _session
    with _lock:  # published only once mounted: no thread ever sees a session without our adapter
        if _session is None or _session[0] != os.getpid():
            _session = (os.getpid(), mount(requests.Session(), policy or RetryPolicy()))
        return _session[1]


def request(method: str, url: str, *, policy: RetryPolicy, endpoint: str | None = None,
            headers: dict | None = None, **kwargs) -> requests.Response:
    """One request on the process session under ``policy``; raises for any non-2xx answer."""
    s = session(policy)

    def once() -> requests.Response:
        r = s.request(method, url, headers=headers, timeout=policy.timeout, allow_redirects=False, **kwargs)
        r.raise_for_status()  # HTTPError carries the response: classified by policy.call
        if r.status_code >= 300:
            raise SourceError(f"{endpoint or url}: unexpected redirect (HTTP {r.status_code})")
        return r

    return policy.call(once, endpoint or f"{method} {url.split('?')[0]}")
