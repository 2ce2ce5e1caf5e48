"""Request handling shared by every route: auth, faults, argument parsing, JSON and error bodies.

Every handler derives from ``ApiHandler``. Path segments are matched by strict regular
expressions (integers, or names of letters, digits, ``_`` and ``-``) and then compared with the one
datastack and table this server knows, so no request can name anything outside the dataset.
Errors are JSON ``{"code", "message", "timestamp", "duration"}`` like PyChunkedGraph's; a request
without the token gets 401; nothing is ever answered with a redirect.

Hardening every route inherits (routes added later included): synchronous ``get``/``post``/...
methods run in a small thread pool, not on the event loop (``offload = False`` opts out), so one
heavy request never stalls the others; their ``finish()`` is deferred to the loop. Request bodies
are parsed strictly (no NaN/Infinity, no floats or booleans as IDs, nesting bounded) and every
malformed body or argument is a 400, never a 500. IDs whose layer bits are impossible are 400.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import tornado.web

from ..dataset.layout import json_default
from ..errors import InvalidInputError, UnknownIDError
from .state import ServedDataset

__all__ = ["ApiError", "ApiHandler", "NotFoundHandler", "ID", "NAME"]

log = logging.getLogger("crantseg.server")

ID = r"([0-9]{1,20})"            # a node / version / operation ID path segment
NAME = r"([A-Za-z0-9_\-]{1,100})"  # a datastack or table name path segment
_U64_MAX = (1 << 64) - 1
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="crantseg-handler")
_MAX_DEPTH = 32  # JSON nesting accepted in a request body
_MAX_IDS = 1_000_000  # IDs per request body
_DEPTH = re.compile(rb"[\[{]")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON here")


def _nesting(body: bytes) -> int:
    """An upper bound of the body's JSON nesting depth (brackets in strings counted too)."""
    depth = best = 0
    for ch in body:
        if ch in (0x5B, 0x7B):
            depth += 1
            best = max(best, depth)
            if best > _MAX_DEPTH:
                return best
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return best


def _offloaded(fn):
    """Run a synchronous route method in the handler pool; finish on the event loop."""
    @functools.wraps(fn)
    async def run(self, *args, **kwargs):
        if not self.offload:
            return fn(self, *args, **kwargs)
        self._in_thread = True
        try:
            await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, self, *args, **kwargs))
        finally:
            self._in_thread = False
        if self._deferred_finish and not self._finished:
            tornado.web.RequestHandler.finish(self)
    run._offloaded = True
    return run


class ApiError(tornado.web.HTTPError):
    """An error answered as JSON with ``status`` and ``message`` (plus optional extra fields)."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(status, log_message=None)
        self.message = message
        self.extra = extra


class ApiHandler(tornado.web.RequestHandler):
    """Base of every route."""

    state: ServedDataset
    offload = True  # run synchronous route methods in the handler pool (see the module docstring)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for m in ("get", "post", "put", "delete", "patch", "head", "options"):
            fn = cls.__dict__.get(m)
            if fn is not None and not inspect.iscoroutinefunction(fn) and not getattr(fn, "_offloaded", False):
                setattr(cls, m, _offloaded(fn))

    def initialize(self, state: ServedDataset) -> None:
        self.state = state
        self._t0 = time.monotonic()
        self._in_thread = False
        self._deferred_finish = False

    def finish(self, chunk=None):
        """In the handler pool: buffer, and let the event loop finish (tornado is not thread-safe)."""
        if self._in_thread:
            if chunk is not None:
                self.write(chunk)
            self._deferred_finish = True
            return None
        return super().finish(chunk)

    def flush(self, include_footers: bool = False):
        if self._in_thread:
            return None  # buffered; sent when the loop finishes the request
        return super().flush(include_footers)

    # -- before the route -----------------------------------------------------------------------
    async def prepare(self) -> None:
        self.state.n_requests += 1
        cookie = self.request.cookies.get("middle_auth_token")
        if not self.state.authorized(self.request.headers.get("Authorization"),
                                     cookie.value if cookie is not None else None):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                "with the token printed by `crantseg serve`")
        faults = self.state.faults
        if not faults.applies_to(self.request.path):
            return
        delay = faults.latency_for(self.request.path)
        if delay:
            await asyncio.sleep(delay / 1000)
        kind, status = faults.draw()
        if kind == "stall":
            await asyncio.sleep(faults.stall_s)
            raise ApiError(status, "fault mode: stalled request")
        if kind == "fail":
            if status in (429, 503):
                self.set_header("Retry-After", "0")
            raise ApiError(status, f"fault mode: injected {status}")

    # -- arguments ------------------------------------------------------------------------------
    def table_of(self, table: str) -> None:
        if table != self.state.table:
            raise ApiError(404, f"unknown table {table!r}")

    def datastack_of(self, datastack: str) -> None:
        if datastack != self.state.datastack:
            raise ApiError(404, f"unknown datastack {datastack!r}")

    def node_id(self, text: str) -> int:
        v = int(text)
        if v > _U64_MAX:
            raise ApiError(400, f"{text} is not a uint64 node ID")
        self.check_layers(np.array([v], dtype=np.uint64), "node ID", status=404)
        return v

    def check_layers(self, ids: np.ndarray, what: str, status: int = 400) -> None:
        """``status`` (400, or 404 ``unknown_id`` for a path's node) for IDs whose layer bits are
        impossible here (layer 0 or above n_layers); 0 passes."""
        layout = self.state.source.meta.layout
        layer = layout.layer(ids).astype(np.int64)
        bad = (ids != 0) & ((layer < 1) | (layer > layout.n_layers))
        if bad.any():
            v = int(ids[int(np.argmax(bad))])
            extra = {"error": "unknown_id"} if status == 404 else {}
            raise ApiError(status, f"{what} {v} is not in dataset {self.state.datastack!r}: its layer bits say "
                                   f"{int(layer[int(np.argmax(bad))])}, this dataset's layers are 1 to "
                                   f"{layout.n_layers}", **extra)

    def ts_arg(self, name: str, default: str = "now") -> datetime | None:
        """Query timestamp (float unix seconds) as an aware UTC datetime; missing -> now / None."""
        raw = self.get_query_argument(name, None)
        if raw is None:
            return datetime.now(timezone.utc) if default == "now" else None
        try:
            s = float(raw)
            if not np.isfinite(s):
                raise ValueError
            us = round(s * 1_000_000)  # drop float noise below the microsecond
            return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)
        except (ValueError, OverflowError, OSError):
            raise ApiError(400, f"{name}={raw!r} is not a timestamp (float seconds since the epoch)") from None

    def bool_arg(self, name: str, default: bool = False) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ApiError(400, f"{name}={raw!r} is not a boolean")

    def int_arg(self, name: str, lo: int, hi: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "None":
            return None
        try:
            v = int(raw)
        except ValueError:
            raise ApiError(400, f"{name}={raw!r} is not an integer") from None
        if not lo <= v <= hi:
            raise ApiError(400, f"{name}={v} must be between {lo} and {hi}")
        return v

    def stop_layer_arg(self) -> int | None:
        return self.int_arg("stop_layer", 1, self.state.source.meta.n_layers)

    def bounds_arg(self) -> np.ndarray | None:
        """``x0-x1_y0-y1_z0-z1`` (mip-0 voxels) as a (2, 3) [[lo], [hi]] array."""
        raw = self.get_query_argument("bounds", None)
        if raw is None:
            return None
        try:
            if len(raw) > 200:
                raise ValueError
            axes = [tuple(int(v) for v in part.split("-")) for part in raw.split("_")]
            if len(axes) != 3 or any(len(a) != 2 for a in axes) or any(abs(v) >= 2**31 for a in axes for v in a):
                raise ValueError
        except ValueError:
            raise ApiError(400, f"bounds={raw!r} must look like x0-x1_y0-y1_z0-z1 (integer voxels "
                                "below 2**31)") from None
        return np.array(axes, dtype=np.int64).T

    def json_body(self) -> dict:
        """The body parsed as JSON whatever the Content-Type (GET bodies included)."""
        body = self.request.body or b""
        if not body.strip():
            return {}
        if _nesting(body) > _MAX_DEPTH:
            raise ApiError(400, f"the request body is nested deeper than {_MAX_DEPTH} levels")
        try:
            data = json.loads(body, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON (NaN and Infinity are not accepted)") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def ids_from_body(self, key: str = "node_ids", layers: bool = False) -> np.ndarray:
        """The body's list ``key`` of uint64 IDs; ``layers``: 400 for impossible layer bits (list routes
        answer such IDs like unknown ones, as PyChunkedGraph: 0 / false)."""
        raw = self.json_body().get(key)
        if raw is None:
            raise ApiError(400, f"the JSON body needs a list {key!r}")
        if not isinstance(raw, list):
            raise ApiError(400, f"{key!r} must be a list of integer IDs")
        if len(raw) > _MAX_IDS:
            raise ApiError(400, f"{key!r} holds {len(raw)} IDs; at most {_MAX_IDS} per request")
        out = []
        for v in raw:  # ints, or decimal strings (int64_as_str clients); never floats or booleans
            if isinstance(v, str) and v.strip().isdigit() and len(v.strip()) <= 20:
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ApiError(400, f"{key!r} must be a list of integer IDs; got {json.dumps(v)[:40]}")
            if v < 0 or v > _U64_MAX:
                raise ApiError(400, f"{key!r} holds {v}, outside uint64")
            out.append(v)
        ids = np.array(out, dtype=np.uint64)
        if layers:
            self.check_layers(ids, f"{key!r} holds")
        return ids

    # -- answers --------------------------------------------------------------------------------
    def send_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, default=json_default))

    def send_binary(self, arr: np.ndarray) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(np.ascontiguousarray(arr, dtype="<u8").tobytes())

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, UnknownIDError):
            mapped = ApiError(404, str(e), error="unknown_id")
        elif isinstance(e, ApiError) and e.extra.get("error") == "unknown_id" and self.state.pcg_errors:
            mapped = e
        elif isinstance(e, InvalidInputError):
            mapped = ApiError(400, str(e))
        elif isinstance(e, (RecursionError, OverflowError)):
            mapped = ApiError(400, f"the request's values are out of range ({type(e).__name__})")
        else:
            return super()._handle_request_exception(e)
        if self.state.pcg_errors and mapped.extra.get("error") == "unknown_id":
            # PyChunkedGraph: an unknown ID fails inside the graph code -> 500 with a traceback
            mapped = ApiError(500, f"Cannot find root id / node: {mapped.message}",
                              traceback="Traceback (most recent call last):\n  ...\nKeyError: " + mapped.message)
        try:  # tornado reads sys.exc_info(): raise the mapped error so that it is the current one
            raise mapped from e
        except ApiError as m:
            return super()._handle_request_exception(m)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # expected answers; the access log has the status
        log.error("%s %s failed", self.request.method, self.request.path, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        extra = {}
        if isinstance(exc, ApiError):
            message, extra = exc.message, exc.extra
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or self._reason
        elif exc is not None:
            message = f"{type(exc).__name__}: {exc}"
        else:
            message = self._reason
        body = {"code": status_code, "message": message, "timestamp": datetime.now(timezone.utc).isoformat(),
                "duration": round(time.monotonic() - self._t0, 6), **extra}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class NotFoundHandler(ApiHandler):
    """Every route this server does not implement: 404 JSON (after the token check)."""

    def _not_found(self, *args) -> None:
        raise ApiError(404, f"no route {self.request.method} {self.request.path} on this server")

    get = post = put = delete = patch = head = _not_found


def access_log(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings, headers or cookies (the token is never logged)."""
    ms = 1000 * handler.request.request_time()
    log.debug("%d %s %s %.1fms", handler.get_status(), handler.request.method, handler.request.path, ms)
