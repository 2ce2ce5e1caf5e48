"""The ``cave`` source: any CAVE deployment through the real ``caveclient`` and cloud-volume.

The only module that imports caveclient and cloudvolume. The same code talks to the CRANT
servers (``latest``, ``sandbox``) and to a local ``crantseg serve``; only the spec differs.

* Chunked graph and materialization: ``caveclient.CAVEclient(datastack,
  server_address=spec.server, auth_token=token, write_server_cache=False)``. Its service sessions
  get the process's pooled adapter (``_http.mount``) and every call runs under one
  ``RetryPolicy`` (transient failures only; see ``_http``). caveclient's own retries are off.
* Voxels: point lookups and cutouts read storage chunks of the graphene info's ``data_dir``
  (``file://``, the server's HTTP storage, or a bucket) with the shared ``ChunkReader``: many
  reads in flight, shard indexes cached (missing chunks are background, as cloud-volume's
  ``fill_missing``). The CAVE token goes only to a ``data_dir`` on the CAVE server's own host.
* IDs travel in batches of ``batch-size`` (binary ``roots_binary``; ``leaves_many``,
  ``is_latest_roots`` as JSON). Timestamps go out as aware UTC datetimes (caveclient sends
  them as unix seconds).
* Token: the spec option ``token``, else caveclient's usual mechanism (``~/.cloudvolume/secrets``).
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from functools import cached_property
from urllib.parse import urlsplit

import numpy as np

from .._unique import batches, map_unique
from ..errors import InvalidInputError, OutOfBoundsError, SourceError, UnknownIDError
from . import _http
from ._chunks import ChunkReader, ChunkReads, cutout_from_chunks
from .base import SegmentationSource, SourceSpec, VolumeMeta

__all__ = ["CaveSource"]


def _u64(ids) -> np.ndarray:
    return np.atleast_1d(np.asarray(ids, dtype=np.uint64))


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _seconds(dt: datetime) -> float:
    """Unix seconds at millisecond precision (PCG's resolution), without float noise."""
    return round(_aware(dt).timestamp() * 1000) / 1000


class CaveSource(ChunkReads, SegmentationSource):
    """A datastack on a CAVE server (``SourceSpec(kind="cave", server=..., datastack=...)``)."""

    def __init__(self, spec: SourceSpec):
        if not spec.server or not spec.datastack:
            raise SourceError(f"a cave dataset needs a server and a datastack, got server={spec.server!r}, "
                              f"datastack={spec.datastack!r}")
        self.spec = spec
        self.policy = _http.RetryPolicy.from_spec(spec)
        self.batch_size = int(spec.option("batch-size", spec.option("batch_size")) or spec.setting("batch-size", 10000))
        self._lock = threading.RLock()
        self._services: dict = {}
        self._cloudvolumes: dict = {}
        self._token = spec.option("token")
        self.client = self._call(self._make_client, "CAVEclient construction")
        self.token = self.client.auth.token
        info = self.segmentation_info
        self._meta = VolumeMeta.from_info(info, viewer_resolution=self._viewer_resolution())
        self.data_dir = info["data_dir"]
        self._reader = ChunkReader(self.data_dir, self._meta, fill_missing=True, scales=info["scales"],
                                   policy=self.policy, token=self.token, token_host=urlsplit(spec.server).netloc,
                                   settings=spec.setting)

    def __repr__(self) -> str:  # never shows the token
        return f"CaveSource({self.spec.server!r}, {self.spec.datastack!r})"

    # -- clients --------------------------------------------------------------------------------
    def _call(self, fn, endpoint: str):
        return self.policy.call(fn, endpoint)

    def _make_client(self):
        from caveclient import CAVEclient

        client = CAVEclient(datastack_name=self.spec.datastack, server_address=self.spec.server,
                            auth_token=self._token, write_server_cache=False, max_retries=0)
        _http.mount(client.info.session, self.policy)
        return client

    def _service(self, name: str):
        """A caveclient service client (built lazily, under the retry policy, on our pool)."""
        with self._lock:
            svc = self._services.get(name)
            if svc is None:
                svc = self._call(lambda: getattr(self.client, name), f"{name} client construction")
                _http.mount(svc.session, self.policy)
                self._services[name] = svc
            return svc

    @property
    def cg(self):
        return self._service("chunkedgraph")

    @property
    def mat(self):
        return self._service("materialize")

    @cached_property
    def segmentation_info(self) -> dict:
        cg = self.cg
        return self._call(lambda: cg.segmentation_info, "GET segmentation info")

    def _viewer_resolution(self):
        try:
            return tuple(float(v) for v in self.client.info.viewer_resolution())
        except (KeyError, TypeError):
            return (8.0, 8.0, 42.0)

    def cloudvolume(self, mip: int = 0):
        """cloud-volume's graphene frontend on this server at ``mip`` (for users; the package's own
        reads go through the chunk reader). The token is also given as HTTP Basic credentials,
        the form cloud-files sends to an ``http(s)://`` data_dir such as the local server's."""
        with self._lock:
            cache = self._cloudvolumes
            if mip not in cache:
                from cloudvolume import CloudVolume

                path = self.client.info.segmentation_source(format_for="cloudvolume")

                def make():
                    secrets = {"token": self.token, "user": "token", "password": self.token}
                    return CloudVolume(path, secrets=secrets, fill_missing=True, bounded=True,
                                       progress=False, mip=mip)

                cache[mip] = self._call(make, "cloud-volume construction")
            return cache[mip]

    # -- metadata -------------------------------------------------------------------------------
    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    # -- voxels ---------------------------------------------------------------------------------
    def cutout(self, box, mip: int) -> np.ndarray:
        mip = self._meta.check_mip(mip)
        box = np.asarray(box, dtype=np.int64).reshape(2, 3)
        lo, hi = self._meta.bounds(mip)
        if np.any(box[0] < lo) or np.any(box[1] > hi) or np.any(box[1] <= box[0]):
            raise OutOfBoundsError(
                f"cutout box {box.tolist()} must be non-empty and inside the volume {[lo.tolist(), hi.tolist()]} "
                f"at mip {mip}"
            )
        return cutout_from_chunks(self, box, mip)

    # -- ID helpers -----------------------------------------------------------------------------
    def _batch(self, cap: int | None) -> int:
        """IDs per request: the dataset's batch size, capped by the caller's ``cap``."""
        return min(self.batch_size, int(cap)) if cap else self.batch_size

    def _id_call(self, fn, endpoint: str, ids):
        """``fn()``; an unknown-ID answer becomes ``UnknownIDError`` naming the IDs.

        The local server answers 404 ``{"error": "unknown_id"}``; PyChunkedGraph answers 500 or
        400, so then the IDs are checked with ``valid_nodes`` to tell unknown IDs from failures."""
        try:
            return self._call(fn, endpoint)
        except SourceError as e:
            status, payload = getattr(e, "status", None), getattr(e, "payload", None)
            if status == 404 and isinstance(payload, dict) and payload.get("error") == "unknown_id":
                raise UnknownIDError(f"{payload.get('message')} ({self.spec.name!r}, {endpoint})") from None
            if status in (400, 500):
                ids = _u64(ids)
                valid = self._valid(ids)
                if not valid.all():
                    raise UnknownIDError(
                        f"{ids[~valid].tolist()[:10]} not known to dataset {self.spec.name!r} ({endpoint})"
                    ) from None
            raise

    def _valid(self, ids: np.ndarray) -> np.ndarray:
        cg = self.cg
        return self._call(lambda: cg.is_valid_nodes(ids), "GET valid_nodes")

    # -- the chunked graph ----------------------------------------------------------------------
    def roots(self, ids, timestamp: datetime, stop_layer: int | None = None,
              batch_size: int | None = None) -> np.ndarray:
        ts = _aware(timestamp)
        cg = self.cg

        def batch(u):
            got = self._call(lambda: cg.get_roots(u, timestamp=ts, stop_layer=stop_layer), "POST roots_binary")
            if len(got) != len(u):
                raise SourceError(f"POST roots_binary answered {len(got)} IDs for {len(u)}")
            return got

        return map_unique(ids, batch, batch_size=self._batch(batch_size))

    def leaves(self, node: int, stop_layer: int = 1, bounds=None) -> np.ndarray:
        cg = self.cg
        b = None if bounds is None else np.asarray(bounds, dtype=np.int64).reshape(2, 3).T
        got = self._id_call(lambda: cg.get_leaves(int(node), bounds=b, stop_layer=int(stop_layer)),
                            "GET leaves", [node])
        return np.sort(np.asarray(got).astype(np.uint64))

    def leaves_many(self, nodes, stop_layer: int = 1, bounds=None) -> dict[int, np.ndarray]:
        nodes = _u64(nodes)
        uniq = np.unique(nodes)
        b = None if bounds is None else np.asarray(bounds, dtype=np.int64).reshape(2, 3).T
        cg = self.cg
        found: dict[int, np.ndarray] = {}
        for part in batches(len(uniq), self.batch_size):
            batch = uniq[part]
            got = self._id_call(lambda: cg.get_leaves_many(batch, bounds=b, stop_layer=int(stop_layer)),
                                "POST leaves_many", batch)
            for k, v in got.items():
                found[int(k)] = np.sort(np.atleast_1d(np.asarray(v)).astype(np.uint64))
        return {int(n): found[int(n)] for n in nodes}

    def children(self, node: int) -> np.ndarray:
        cg = self.cg
        got = self._id_call(lambda: cg.get_children(int(node)), "GET children", [node])
        return np.sort(np.asarray(got).astype(np.uint64))

    def is_latest(self, roots, timestamp: datetime) -> np.ndarray:
        ts = _aware(timestamp)
        cg = self.cg
        return map_unique(_u64(roots), lambda u: self._call(lambda: cg.is_latest_roots(u, timestamp=ts),
                                                            "POST is_latest_roots"),
                          dtype=bool, drop_zero=False, batch_size=self.batch_size)

    def root_timestamps(self, roots) -> np.ndarray:
        cg = self.cg

        def batch(u):
            got = self._id_call(lambda: cg.get_root_timestamps(u), "POST root_timestamps", u)
            if len(got) != len(u):
                raise UnknownIDError(f"some of {u.tolist()[:10]} are not roots of {self.spec.name!r}")
            return [_seconds(t) for t in got]

        return map_unique(_u64(roots), batch, dtype=float, drop_zero=False, batch_size=self.batch_size)

    def lineage(self, roots, past: datetime | None = None, future: datetime | None = None):
        """PyChunkedGraph's lineage (one request): the roots, their ancestors and descendants."""
        return self._lineage_once(np.unique(_u64(roots)), past, future)

    def _lineage_once(self, roots: np.ndarray, past: datetime | None, future: datetime | None):
        """One ``lineage_graph_multiple`` request (PyChunkedGraph's semantics), as a DiGraph."""
        import networkx as nx

        cg = self.cg
        # an explicit future: caveclient <= 8.2.1 drops it when None (it sends `name=...`)
        fut = _aware(future) if future is not None else datetime.now(timezone.utc)
        got = self._id_call(lambda: cg.get_lineage_graph(roots, timestamp_past=_aware(past), timestamp_future=fut,
                                                         as_nx_graph=True),
                            "POST lineage_graph_multiple", roots)
        out = nx.DiGraph()
        for n, attrs in got.nodes(data=True):
            d = {"timestamp": float(attrs["timestamp"])}
            if attrs.get("operation_id") is not None:
                d["operation_id"] = int(attrs["operation_id"])
            out.add_node(int(n), **d)
        out.add_edges_from((int(a), int(b)) for a, b in got.edges())
        return out

    def latest_roots(self, root: int, timestamp: datetime) -> np.ndarray:
        """Walk the lineage from ``root`` (forwards, or backwards when ``timestamp`` precedes the
        root's creation) to the roots alive at ``timestamp``: one timestamp and one lineage call."""
        root = int(root)
        ts = _aware(timestamp)
        created = datetime.fromtimestamp(self.root_timestamps([root])[0], tz=timezone.utc)
        forward = created <= ts
        g = self._lineage_once(np.array([root], dtype=np.uint64), past=min(created, ts), future=max(created, ts))
        t = _seconds(ts)

        def alive(n) -> bool:
            if g.nodes[n]["timestamp"] > t:
                return False
            ends = [g.nodes[s]["timestamp"] for s in g.successors(n)]
            return not ends or min(ends) > t

        out, todo, seen = set(), [root], set()
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if alive(r):
                out.add(r)
            else:
                todo += list(g.successors(r) if forward else g.predecessors(r))
        return np.array(sorted(out), dtype=np.uint64)

    def l2_graph(self, root: int, bounds=None) -> np.ndarray:
        cg = self.cg
        b = None if bounds is None else np.asarray(bounds, dtype=np.int64).reshape(2, 3).T
        edges = self._id_call(lambda: cg.level2_chunk_graph(int(root), bounds=b), "GET lvl2_graph", [root])
        e = np.asarray(edges, dtype=np.uint64).reshape(-1, 2)
        e = np.unique(np.sort(e, axis=1), axis=0) if len(e) else e
        return e

    def delta_roots(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        """One ``GET delta_roots`` (caveclient's ``get_delta_roots``); duplicates removed."""
        cg = self.cg
        old, new = self._call(lambda: cg.get_delta_roots(_aware(past), _aware(future)), "GET delta_roots")
        return np.unique(np.asarray(old).astype(np.uint64)), np.unique(np.asarray(new).astype(np.uint64))

    # -- what the local server also answers (issue 14: one interface for both) -----------------
    def delta_root_lists(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        """One ``GET delta_roots`` (caveclient's ``get_delta_roots``), as answered."""
        cg = self.cg
        old, new = self._call(lambda: cg.get_delta_roots(_aware(past), _aware(future)), "GET delta_roots")
        return np.asarray(old).astype(np.uint64), np.asarray(new).astype(np.uint64)

    def valid_nodes(self, ids, end_timestamp: datetime) -> np.ndarray:
        """``GET valid_nodes`` per batch (caveclient's ``is_valid_nodes``)."""
        ids = _u64(ids)
        out = np.zeros(len(ids), dtype=bool)
        ts, cg = _aware(end_timestamp), self.cg
        for part in batches(len(ids), self.batch_size):
            out[part] = self._call(lambda b=ids[part]: cg.is_valid_nodes(b, end_timestamp=ts), "GET valid_nodes")
        return out

    def root_expired(self, roots, timestamp: datetime) -> np.ndarray:
        """``POST root_timestamps?latest=True`` per batch (caveclient takes 1 ms off; added back)."""
        roots = _u64(roots)
        out = np.zeros(len(roots), dtype=float)
        ts, cg = _aware(timestamp), self.cg
        for part in batches(len(roots), self.batch_size):
            got = self._id_call(lambda b=roots[part]: cg.get_root_timestamps(b, latest=True, timestamp=ts),
                                "POST root_timestamps", roots[part])
            out[part] = [(round(_aware(t).timestamp() * 1000) + 1) / 1000 for t in got]
        return out

    def operation_details(self, operation_ids) -> dict[int, dict]:
        """One ``GET operation_details`` (caveclient's ``get_operation_details``)."""
        ids = [int(v) for v in operation_ids]
        cg = self.cg
        got = self._call(lambda: cg.get_operation_details(ids), "GET operation_details") if ids else {}
        out = {}
        for i in dict.fromkeys(ids):
            d = got.get(str(i))
            if d is None:
                continue
            rec = {"user": str(d.get("user")), "timestamp": _aware(datetime.fromisoformat(str(d["timestamp"]))),
                   "roots": [int(r) for r in d.get("roots", [])], "source_coords": d.get("source_coords", []),
                   "sink_coords": d.get("sink_coords", [])}
            rec.update({k: d[k] for k in ("added_edges", "removed_edges") if k in d})
            out[i] = rec
        return out

    def oldest_timestamp(self) -> datetime:
        """One ``GET oldest_timestamp`` (caveclient's ``get_oldest_timestamp``)."""
        cg = self.cg
        return _aware(self._call(cg.get_oldest_timestamp, "GET oldest_timestamp"))

    def l2_chunk_children(self, chunk_id: int, timestamp: datetime) -> dict[int, np.ndarray]:
        """One ``GET l2_chunk_children_binary`` through cloud-volume's ``get_chunk_mappings``
        (caveclient has no call for it)."""
        if int(self.meta.layout.layer(np.array([chunk_id], dtype=np.uint64))[0]) != 2:
            raise InvalidInputError(f"{int(chunk_id)} is not a layer-2 chunk ID")
        cv, ts = self.cloudvolume(0), _aware(timestamp)
        got = self._call(lambda: cv.get_chunk_mappings(int(chunk_id), timestamp=ts), "GET l2_chunk_children")
        return {int(k): np.sort(np.asarray(v, dtype=np.uint64)) for k, v in sorted(got.items())}

    def graphene_info(self) -> dict:
        """The graphene info caveclient read at construction (a copy)."""
        return dict(self.segmentation_info)

    # -- materialization ------------------------------------------------------------------------
    def materialization_versions(self) -> dict[int, datetime]:
        mat = self.mat
        metas = self._call(lambda: mat.get_versions_metadata(expired=True), "GET versions metadata")
        return {int(m["version"]): _aware(m["time_stamp"]) for m in metas}
