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

import base64
import hmac
import os
import re
import stat

from ._base import ApiError, ApiHandler
from .state import STORAGE_PREFIX

__all__ = ["routes", "STORAGE_PREFIX", "parse_range"]

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


class StorageFile(ApiHandler):
    """One file of the precomputed layer (GET, HEAD)."""

    async def prepare(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("Basic "):  # cloud-files' http credentials: the token as password
            try:
                _, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                password = ""
            if password and hmac.compare_digest(password.encode(), self.state.token.encode()):
                self.request.headers["Authorization"] = f"Bearer {password}"
        await super().prepare()

    def compute_etag(self) -> None:  # no MD5 of every chunk body (a bucket's ETag is stored, not computed)
        return None

    def _open(self, key: str):
        """The open file of ``key`` (or ``key.gz``) and its Content-Encoding; 404 when neither exists."""
        if any(part in ("", ".", "..") for part in key.split("/")):
            raise ApiError(404, f"no object {key!r}")
        base = f"{self.state.path}/segmentation/{key}"
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

    def _answer(self, key: str, body: bool) -> None:
        f, encoding = self._open(key)
        with f:
            size = os.fstat(f.fileno()).st_size
            rng = parse_range(self.request.headers.get("Range"), size)
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Accept-Ranges", "bytes")
            if encoding:
                self.set_header("Content-Encoding", encoding)
            start, end = rng if rng is not None else (0, size)
            if rng is not None:
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.set_header("Content-Length", str(end - start))
            self.state.n_storage_reads += 1
            if not body:
                self.finish()
                return
            f.seek(start)
            self.finish(f.read(end - start))

    # a chunk is a small read from the page cache: answered on the event loop, without the two
    # thread handoffs of the handler pool (the fault mode's delays are asynchronous, in prepare)
    offload = False

    def get(self, key: str) -> None:
        self._answer(key, body=True)

    def head(self, key: str) -> None:
        self._answer(key, body=False)


def routes(state) -> list:
    return [(rf"{STORAGE_PREFIX}/{_KEY}", StorageFile, {"state": state})]
