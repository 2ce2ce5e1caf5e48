"""The dataset's precomputed segmentation layer over HTTP, answered as a cloud bucket answers.

``GET /storage/segmentation/<key>`` returns the file ``segmentation/<key>`` of the served dataset
(the graphene info's ``data_dir`` points here). Like GCS or S3:

* ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` answers 206 with ``Content-Range``; a range
  past the end answers 416; ``HEAD`` answers the headers only.
* A file written gzip-compressed (``<key>.gz``, as cloud-volume writes chunk files) is served with
  ``Content-Encoding: gzip`` (the stored bytes, never re-encoded); a missing file answers 404.
* The same token rules as every route (``Authorization: Bearer``, the ``middle_auth_token``
  cookie), plus HTTP Basic auth with the token as password, which is the only credential
  cloud-files sends to an ``http(s)://`` bucket (``secrets={"user": "token", "password": TOKEN}``).
* The fault mode (latency, failures, stalls) applies to every read, as to every other route.

Keys are matched by a strict pattern and resolved inside the layer directory; nothing outside it
can be named.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import stat
import time
from datetime import datetime, timezone

import tornado.httputil
import tornado.iostream

from ._base import ApiError
from .state import STORAGE_PREFIX

__all__ = ["router", "StorageRoute", "STORAGE_PREFIX", "parse_range"]

log = logging.getLogger("crantseg.server")

_KEY = r"([A-Za-z0-9_.\-]{1,100}(?:/[A-Za-z0-9_.\-]{1,100}){0,2})"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Half-open byte range ``(start, end)`` of a ``Range`` header for a file of ``size`` bytes.

    None without a header. Raises ``ApiError(416)`` for a malformed or unsatisfiable range
    (multi-range requests are refused too: buckets answer them with the whole object, we refuse)."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise ApiError(416, f"unsupported Range {header[:60]!r}: use bytes=a-b, bytes=a- or bytes=-n")
    a, b = m.group(1), m.group(2)
    if a == "":  # suffix: the last n bytes
        n = int(b)
        start, end = max(0, size - n), size
    else:
        start = int(a)
        end = size if b == "" else min(size, int(b) + 1)
    if start >= size or end <= start:
        raise ApiError(416, f"Range {header[:60]!r} is outside the {size}-byte object")
    return start, end


class StorageRequest(tornado.httputil.HTTPMessageDelegate):
    """One request under ``STORAGE_PREFIX``, answered without tornado's ``RequestHandler`` layer.

    A chunk GET is by far the most frequent request, and on this 2-core machine the server shares
    the CPU with the client it simulates a bucket for: through ``RequestHandler`` (and an
    ``asyncio.sleep`` for the fault mode's latency) a GET cost about 0.3-0.45 ms of server CPU, as
    a raw delegate with ``call_later`` about half that (``benchmarks/bench_storage.py`` reports it).
    The rules are the ones every route has: the token (Bearer, cookie, or Basic with the token as
    password), the fault mode, JSON error bodies ``{"code", "message", "timestamp", "duration"}``.
    """

    def __init__(self, state, conn) -> None:
        self.state, self.conn = state, conn
        self.t0 = time.monotonic()
        self.closed = False

    def headers_received(self, start_line, headers) -> None:
        self.method, self.path = start_line.method, start_line.path.split("?", 1)[0]
        self.headers = headers

    def data_received(self, chunk) -> None:  # request bodies are ignored (bounded by the server)
        return None

    def on_connection_close(self) -> None:
        self.closed = True

    def finish(self) -> None:
        state = self.state
        state.n_requests += 1
        if not self._authorized():
            return self._error(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                    "with the token printed by `crantseg serve`")
        faults = state.faults
        if not faults.applies_to(self.path):
            return self._answer()
        delay = faults.latency_for(self.path) / 1000
        kind, status = faults.draw()
        if kind == "stall":
            delay += faults.stall_s
        loop = asyncio.get_running_loop()
        if kind is None:
            if delay:
                loop.call_later(delay, self._answer)
            else:
                self._answer()
            return
        extra = {"Retry-After": "0"} if kind == "fail" and status in (429, 503) else {}
        message = "fault mode: stalled request" if kind == "stall" else f"fault mode: injected {status}"
        if delay:
            loop.call_later(delay, self._error, status, message, extra)
        else:
            self._error(status, message, extra)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization")
        if auth and auth.startswith("Basic "):  # cloud-files' http credentials: the token as password
            try:
                _, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                password = ""
            auth = f"Bearer {password}" if password else None
        cookie = None
        if "Cookie" in self.headers:
            cookie = tornado.httputil.parse_cookie(self.headers["Cookie"]).get("middle_auth_token")
        return self.state.authorized(auth, cookie)

    def _answer(self) -> None:
        if self.closed:
            return
        m = _PATH.fullmatch(self.path)
        if m is None:
            return self._error(404, f"no route {self.method} {self.path} on this server")
        if self.method not in ("GET", "HEAD"):
            return self._error(405, f"{self.method} is not allowed on {self.path}: GET or HEAD")
        try:
            f, encoding = _open(self.state, m.group(1))
            with f:
                size = os.fstat(f.fileno()).st_size
                rng = parse_range(self.headers.get("Range"), size)
                start, end = rng if rng is not None else (0, size)
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                           "Content-Length": str(end - start)}
                if encoding:
                    headers["Content-Encoding"] = encoding
                if rng is not None:
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
                body = b""
                if self.method == "GET":
                    f.seek(start)
                    body = f.read(end - start)
        except ApiError as e:
            return self._error(e.status_code, e.message)
        self.state.n_storage_reads += 1
        self._send(206 if rng is not None else 200, headers, body)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        if self.closed:
            return
        body = json.dumps({"code": status, "message": message, "timestamp": datetime.now(timezone.utc).isoformat(),
                           "duration": round(time.monotonic() - self.t0, 6)}).encode()
        self._send(status, {"Content-Type": "application/json", "Content-Length": str(len(body)), **(extra or {})},
                   body if self.method != "HEAD" else b"")

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        log.debug("%d %s %s %.1fms", status, self.method, self.path, 1000 * (time.monotonic() - self.t0))
        start = tornado.httputil.ResponseStartLine("HTTP/1.1", status, tornado.httputil.responses.get(status, "Unknown"))
        try:
            self.conn.write_headers(start, tornado.httputil.HTTPHeaders(headers), body or None)
            self.conn.finish()
        except tornado.iostream.StreamClosedError:
            pass


class StorageRoute(tornado.httputil.HTTPServerConnectionDelegate):
    """The ``tornado.routing`` target of ``STORAGE_PREFIX``: a ``StorageRequest`` per request."""

    def __init__(self, state) -> None:
        self.state = state

    def start_request(self, server_conn, request_conn) -> StorageRequest:
        return StorageRequest(self.state, request_conn)


def _open(state, key: str):
    """The open file of ``key`` (or ``key.gz``) and its Content-Encoding; 404 when neither exists."""
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ApiError(404, f"no object {key!r}")
    base = f"{state.path}/segmentation/{key}"
    for suffix, encoding in (("", None), (".gz", "gzip")):
        try:
            f = open(base + suffix, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            continue
        return f, encoding
    raise ApiError(404, f"no object {key!r}")


_PATH = re.compile(rf"{re.escape(STORAGE_PREFIX)}/{_KEY}")


def router(state, app):
    """``app`` behind a router that sends every path under ``STORAGE_PREFIX`` to ``StorageRoute``."""
    from tornado.routing import AnyMatches, PathMatches, Rule, RuleRouter

    return RuleRouter([Rule(PathMatches(rf"{re.escape(STORAGE_PREFIX)}/.*"), StorageRoute(state)),
                       Rule(AnyMatches(), app)])
