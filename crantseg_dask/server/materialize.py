"""Materialization engine routes: API and server versions, version list and version metadata.

Both the v3 routes (what caveclient uses with API versions ``[2, 3]``) and their v2 twins (what it
falls back to when the API-version probe fails) are served. Timestamps use exactly
``%Y-%m-%dT%H:%M:%S.%f`` (naive UTC): caveclient parses them with that format.
"""
from __future__ import annotations

from ._base import ID, NAME, ApiError, ApiHandler
from .state import VERSIONS

__all__ = ["routes"]


class MatApiVersions(ApiHandler):
    def get(self) -> None:
        self.send_json([2, 3])


class MatVersion(ApiHandler):
    def get(self) -> None:
        self.send_json(VERSIONS["materialize"])


class Versions(ApiHandler):
    def get(self, api: str, datastack: str) -> None:
        self.datastack_of(datastack)
        self.bool_arg("expired")  # every version is valid here; the flag is only checked
        self.send_json(sorted(self.state.materializations()))


class VersionMetadata(ApiHandler):
    def get(self, api: str, datastack: str, version: str) -> None:
        self.datastack_of(datastack)
        v = self._version(version)
        self.send_json(self.state.version_metadata(v))

    def _version(self, text: str) -> int:
        v = int(text)
        if v not in self.state.materializations():
            raise ApiError(404, f"materialization version {v} does not exist; known: "
                                f"{sorted(self.state.materializations())}")
        return v


class VersionsMetadata(ApiHandler):
    def get(self, api: str, datastack: str) -> None:
        self.datastack_of(datastack)
        self.bool_arg("expired")
        self.send_json([self.state.version_metadata(v) for v in sorted(self.state.materializations())])


class Tables(VersionMetadata):
    def get(self, datastack: str, version: str) -> None:
        self.datastack_of(datastack)
        self._version(version)
        self.send_json([])  # no annotation tables: queries are out of scope


def routes(state) -> list:
    kw = {"state": state}
    m = rf"/materialize/api/v([23])/datastack/{NAME}"
    return [
        (r"/materialize/api/versions", MatApiVersions, kw),
        (r"/materialize/version", MatVersion, kw),
        (rf"{m}/versions", Versions, kw),
        (rf"{m}/version/{ID}", VersionMetadata, kw),
        (rf"{m}/metadata", VersionsMetadata, kw),
        (rf"/materialize/api/v2/datastack/{NAME}/version/{ID}/tables", Tables, kw),
    ]
