"""Info service routes: version, datastack list and the full datastack info (protocol section 1)."""
from __future__ import annotations

import re

from ._base import NAME, ApiError, ApiHandler
from .state import VERSIONS

__all__ = ["routes"]

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9a-fA-F:.]+\](:[0-9]{1,5})?$")


class InfoVersion(ApiHandler):
    def get(self) -> None:
        self.send_json(VERSIONS["info"])


class Datastacks(ApiHandler):
    def get(self) -> None:
        self.send_json([self.state.datastack])


class DatastackFull(ApiHandler):
    def get(self, datastack: str) -> None:
        self.datastack_of(datastack)
        self.send_json(self.state.datastack_info(base_url(self)))


def base_url(handler: ApiHandler) -> str:
    """``http://host:port`` as the client reached us: ``local_server`` must be that address."""
    host = handler.request.host
    if not _HOST.match(host or ""):
        raise ApiError(400, "malformed Host header")
    return f"{handler.request.protocol}://{host}"


def routes(state) -> list:
    kw = {"state": state}
    return [
        (r"/info/version", InfoVersion, kw),
        (r"/info/api/v2/datastacks", Datastacks, kw),
        (rf"/info/api/v2/datastack/full/{NAME}", DatastackFull, kw),
    ]
