"""Request handling shared by every route: auth, faults, argument parsing, JSON and error bodies.

Every handler derives from ``ApiHandler``. Path segments are matched by strict regular
expressions (integers, or names of letters, digits, ``_`` and ``-``) and then compared with the one
datastack and table this server knows, so no request can name anything outside the dataset.
Errors are JSON ``{"code", "message", "timestamp", "duration"}`` like PyChunkedGraph's; a request
without the token gets 401; nothing is ever answered with a redirect.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
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


class ApiError(tornado.web.HTTPError):
    """An error answered as JSON with ``status`` and ``message`` (plus optional extra fields)."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(status, log_message=None)
        self.message = message
        self.extra = extra


class ApiHandler(tornado.web.RequestHandler):
    """Base of every route."""

    state: ServedDataset

    def initialize(self, state: ServedDataset) -> None:
        self.state = state
        self._t0 = time.monotonic()

    # -- before the route -----------------------------------------------------------------------
    async def prepare(self) -> None:
        self.state.n_requests += 1
        cookie = self.request.cookies.get("middle_auth_token")
        if not self.state.authorized(self.request.headers.get("Authorization"),
                                     cookie.value if cookie is not None else None):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                "with the token printed by `crantseg serve`")
        faults = self.state.faults
        if not faults.active:
            return
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
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

    @staticmethod
    def node_id(text: str) -> int:
        v = int(text)
        if v > _U64_MAX:
            raise ApiError(400, f"{text} is not a uint64 node ID")
        return v

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
            axes = [tuple(int(v) for v in part.split("-")) for part in raw.split("_")]
            if len(axes) != 3 or any(len(a) != 2 for a in axes):
                raise ValueError
        except ValueError:
            raise ApiError(400, f"bounds={raw!r} must look like x0-x1_y0-y1_z0-z1 (integer voxels)") from None
        return np.array(axes, dtype=np.int64).T

    def json_body(self) -> dict:
        """The body parsed as JSON whatever the Content-Type (GET bodies included)."""
        body = self.request.body or b""
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    def ids_from_body(self, key: str = "node_ids") -> np.ndarray:
        raw = self.json_body().get(key)
        if raw is None:
            raise ApiError(400, f"the JSON body needs a list {key!r}")
        if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            try:
                raw = [int(v) for v in raw]  # int64_as_str clients send strings
            except (TypeError, ValueError):
                raise ApiError(400, f"{key!r} must be a list of integer IDs") from None
        if any(v < 0 or v > _U64_MAX for v in raw):
            raise ApiError(400, f"{key!r} holds values outside uint64")
        return np.array(raw, dtype=np.uint64)

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
