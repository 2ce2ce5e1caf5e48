"""What the server serves: one embedded dataset, its token, and the fault settings.

``ServedDataset`` wraps a ``LocalSource`` (the chunked-graph state of a dataset written by
``crantseg make-dataset``) and builds the documents the CAVE protocol needs from the source's
documented answers: the datastack info, the graphene info (the source's ``graphene_info()`` plus
``app``, with ``data_dir`` pointed at this server's storage route) and the materialization
version metadata. Nothing here reads the source's tables. ``Faults`` describes the fault mode used by tests and
benchmarks.
"""
from __future__ import annotations

import hmac
import random
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ..dataset.layout import read_params
from ..errors import InvalidInputError
from ..sources.base import SourceSpec
from ..sources.local import LocalSource

__all__ = ["Faults", "ServedDataset", "new_token", "check_token", "VERSIONS"]

#: Version strings the clients gate on (cave-protocol.md section 1.4).
VERSIONS = {"info": "4.3.1", "chunkedgraph": "2.21.1", "materialize": "5.13.0"}

_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")
MAT_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
#: URL path of the layer; the graphene info's ``data_dir`` is ``<server>`` + this.
STORAGE_PREFIX = "/storage/segmentation"


def new_token() -> str:
    """A fresh random token: 32 lowercase hex characters (what cloud-volume accepts)."""
    return secrets.token_hex(16)


def check_token(token: str) -> str:
    """``token`` if it is 32 lowercase hex characters, else ``InvalidInputError`` (value not echoed)."""
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise InvalidInputError(
            "the server token must be 32 lowercase hex characters (cloud-volume refuses other forms); "
            "leave it out to have one generated"
        )
    return token


@dataclass
class Faults:
    """Fault injection: a share of requests fails, is delayed, or stalls.

    fail_rate : share of requests answered 503 or 429 (half each), chosen by a seeded RNG.
    latency_ms : delay added to every request.
    storage_latency_ms : delay added to the precomputed layer's reads instead (``/storage/``;
        None: ``latency_ms``), e.g. chunk GETs at 50 ms and CAVE requests at 20 ms.
    stall_rate : share of requests held for ``stall_s`` seconds (past a client's timeout) before
        being answered 503.
    seed : seed of the RNG, so a run's fault pattern is reproducible.
    script : answers for the next requests, in order, before the rates apply (tests): a status
        (503, 429, 500 ...), ``"stall"``, or 200 for a normal answer.
    paths : only requests whose path starts with this prefix are delayed or faulted (e.g.
        ``"/storage/"``: the precomputed layer's reads alone); None: every request.
    """

    fail_rate: float = 0.0
    latency_ms: float = 0.0
    storage_latency_ms: float | None = None
    stall_rate: float = 0.0
    stall_s: float = 60.0
    seed: int = 0
    script: list = field(default_factory=list)
    paths: str | None = None
    rng: random.Random = field(init=False, repr=False)
    injected: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        for name in ("fail_rate", "stall_rate"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise InvalidInputError(f"{name}={v!r} must be between 0 and 1")
        if self.latency_ms < 0 or self.stall_s < 0 or (self.storage_latency_ms or 0) < 0:
            raise InvalidInputError("latency_ms, storage_latency_ms and stall_s must be >= 0")
        self.rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        return bool(self.fail_rate or self.latency_ms or self.storage_latency_ms or self.stall_rate or self.script)

    def latency_for(self, path: str) -> float:
        """The delay in ms for a request to ``path``."""
        if self.storage_latency_ms is not None and path.startswith("/storage/"):
            return self.storage_latency_ms
        return self.latency_ms

    def applies_to(self, path: str) -> bool:
        return self.active and (self.paths is None or path.startswith(self.paths))

    def draw(self) -> tuple[str | None, int]:
        """('stall' | 'fail' | None, status) for the next request."""
        kind, status = self._draw()
        self.injected += kind is not None
        return kind, status

    def _draw(self) -> tuple[str | None, int]:
        if self.script:
            step = self.script.pop(0)
            if step == "stall":
                return "stall", 503
            return (None, 200) if int(step) == 200 else ("fail", int(step))
        u = self.rng.random()
        if u < self.stall_rate:
            return "stall", 503
        if u < self.stall_rate + self.fail_rate:
            return "fail", 503 if self.rng.random() < 0.5 else 429
        return None, 200


class ServedDataset:
    """The state one server instance serves (read-only)."""

    def __init__(self, path, *, datastack: str | None = None, token: str | None = None,
                 faults: Faults | None = None, pcg_errors: bool = False, storage: str = "http"):
        self.path = Path(path).absolute()
        #: answer unknown IDs as PyChunkedGraph does (500, its error body with a traceback) instead
        #: of this server's 404 {"error": "unknown_id"}
        self.pcg_errors = bool(pcg_errors)
        if storage not in ("http", "file"):
            raise InvalidInputError(f"storage={storage!r} must be 'http' (served here) or 'file' (file:// path)")
        self.storage = storage  # what the graphene info's data_dir points at
        self.n_storage_reads = 0  # GETs / HEADs of the precomputed layer answered
        params = read_params(self.path)  # raises DatasetError for a directory that is no dataset
        self.source = LocalSource(SourceSpec(kind="local", name=params.name, path=str(self.path)))
        self.datastack = datastack or params.datastack
        if not _NAME.match(self.datastack):
            raise InvalidInputError(f"datastack name {self.datastack!r} may only hold letters, digits, '_' and '-'")
        self.table = params.table
        self.token = check_token(token) if token is not None else new_token()
        self.faults = faults or Faults()
        self.n_requests = 0  # requests received (all routes, all answers)
        self.viewer_resolution = [float(v) for v in params.viewer_resolution]
        self.name = params.name
        # what the data is, whatever the address: jobs resume across a restart on another port
        import dataclasses
        import hashlib
        import json

        blob = json.dumps(dataclasses.asdict(params), sort_keys=True, default=str).encode()
        self.dataset_digest = hashlib.sha256(blob).hexdigest()[:32]

    def __repr__(self) -> str:  # never shows the token
        return f"ServedDataset({str(self.path)!r}, datastack={self.datastack!r})"

    # -- auth -----------------------------------------------------------------------------------
    def authorized(self, header: str | None, cookie: str | None) -> bool:
        """Whether ``Authorization: Bearer <token>`` or the ``middle_auth_token`` cookie matches."""
        given = None
        if header and header.startswith("Bearer "):
            given = header[len("Bearer "):].strip()
        elif cookie:
            given = cookie
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    # -- documents ------------------------------------------------------------------------------
    def datastack_info(self, base: str) -> dict:
        vx, vy, vz = self.viewer_resolution
        return {
            "datastack_name": self.datastack,
            "description": f"crantseg_dask embedded dataset {self.name!r} served locally",
            "aligned_volume": {"name": f"{self.datastack}_aligned", "id": 1, "image_source": "",
                               "description": "no image layer"},
            "local_server": base,
            "segmentation_source": f"graphene://{base}/segmentation/table/{self.table}",
            "synapse_table": None,
            "soma_table": None,
            "analysis_database": None,
            "viewer_site": None,
            "viewer_resolution_x": vx,
            "viewer_resolution_y": vy,
            "viewer_resolution_z": vz,
        }

    def graphene_info(self, base: str | None = None) -> dict:
        """The source's graphene info plus ``app``; ``data_dir`` is this server's storage route
        (``base`` + prefix) or, with ``storage="file"`` or no ``base``, the source's (the layer's
        ``file://`` path)."""
        info = self.source.graphene_info()
        info["app"] = {"supported_api_versions": [0, 1]}
        if base and self.storage == "http":
            info["data_dir"] = f"{base}{STORAGE_PREFIX}"
        info["crantseg_dataset"] = {"name": self.name, "digest": self.dataset_digest}
        return info

    def materializations(self) -> dict[int, datetime]:
        return self.source.materialization_versions()

    def version_metadata(self, version: int) -> dict:
        ts = self.materializations()[version]
        return {
            "version": version,
            "id": version,
            "datastack": self.datastack,
            "time_stamp": ts.strftime(MAT_FORMAT),
            "expires_on": (ts + timedelta(days=3650)).strftime(MAT_FORMAT),
            "valid": True,
            "status": "AVAILABLE",
            "is_merged": True,
            "parent_version": None,
        }

    def oldest_timestamp(self) -> datetime:
        """The source's ``oldest_timestamp()`` (PCG's: the first operation's time minus 0.5 s)."""
        return self.source.oldest_timestamp()
