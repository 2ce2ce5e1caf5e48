"""The one interface every data source implements, its metadata, and the spec tasks carry.

Operations import only this module. A ``SourceSpec`` (small, frozen, picklable, tokenizable) goes
into the Dask graph; each worker process turns it into a live ``SegmentationSource`` through
``crantseg_dask.sources.open_source`` (a per-process cache). Live clients never travel in a graph.

All IDs are uint64. All timestamps are aware UTC datetimes, resolved once by the caller.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from ..config import setting as _live_setting
from ..errors import InvalidTimestampError
from ._chunks import lookup_points
from .meta import VolumeMeta

__all__ = ["SourceSpec", "VolumeMeta", "SegmentationSource", "PINNED_SETTINGS"]

#: The settings that change a source's answers or requests. ``resolve_dataset`` (on the client)
#: pins their values into the spec, so every worker runs with the settings the caller saw.
PINNED_SETTINGS = (
    "batch-size", "retry-wait",
    "http.retries", "http.backoff", "http.backoff-max", "http.timeout", "http.pool-maxsize",
    "cave.max-concurrency",
    "storage.max-in-flight", "storage.file-in-flight", "storage.index-cache", "storage.coalesce-gap",
    "storage.disk-cache", "storage.disk-cache-size",
)


@dataclass(frozen=True)
class SourceSpec:
    """How to reach a dataset. Equal specs share one live source per process.

    kind : "local" (an embedded dataset directory) or "cave" (a CAVE deployment).
    path : dataset directory (local).
    server, datastack : CAVE global server address and datastack name (cave).
    name : the user-facing dataset name ("local", "latest", "sandbox", a path ...).
    options : extra settings as sorted (key, value) pairs (retry policy, batch sizes ...); they
        override the settings below.
    settings : the ``crantseg.*`` settings of ``PINNED_SETTINGS`` as (key, value) pairs, pinned by
        ``resolve_dataset`` in the caller's process (see ``sources.resolve.pin_settings``).
    """

    kind: str
    name: str
    path: str | None = None
    server: str | None = None
    datastack: str | None = None
    options: tuple[tuple[str, object], ...] = field(default=())
    settings: tuple[tuple[str, object], ...] = field(default=())

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def setting(self, key: str, default=None):
        """The pinned value of setting ``key``; a spec built by hand without it reads the setting
        of the process it runs in."""
        for k, v in self.settings:
            if k == key:
                return v
        return _live_setting(key, default)

    def __repr__(self) -> str:  # never show credentials (specs end up in logs and task reprs)
        opts = tuple((k, "***" if "token" in k or "secret" in k else v) for k, v in self.options)
        parts = [f"kind={self.kind!r}", f"name={self.name!r}"]
        parts += [f"{k}={getattr(self, k)!r}" for k in ("path", "server", "datastack") if getattr(self, k)]
        return f"SourceSpec({', '.join(parts)}{', options=' + repr(opts) if opts else ''})"


class SegmentationSource(abc.ABC):
    """Batch access to one segmentation dataset: voxels, the chunked graph, its history.

    Every method takes and returns arrays (never one request per ID). Unknown IDs follow the
    server's conventions (``roots`` gives 0); failed reads raise ``SourceError`` after retries.
    """

    spec: SourceSpec

    @property
    @abc.abstractmethod
    def meta(self) -> VolumeMeta:
        """Volume geometry and ID layout."""

    # -- voxels -------------------------------------------------------------------------------
    @abc.abstractmethod
    def read_chunk(self, chunk: tuple[int, int, int], mip: int) -> np.ndarray:
        """Storage chunk ``chunk`` (grid index) at ``mip`` as an (X, Y, Z) uint64 array."""

    def read_chunks(self, chunks, mip: int):
        """``(chunk, array)`` for each storage chunk in ``chunks``, in any order (a source
        fetches them concurrently; this default reads them one by one)."""
        for c in chunks:
            c = tuple(int(v) for v in c)
            yield c, self.read_chunk(c, mip)

    def read_encoded(self, chunk: tuple[int, int, int], mip: int) -> bytes | None:
        """Encoded bytes of storage chunk ``chunk`` for random access, or None where only
        ``read_chunk`` (a full decode) applies."""
        return None

    def read_encoded_many(self, chunks, mip: int):
        """``(chunk, encoded bytes or None)`` for each chunk, in any order: ``read_encoded`` for a
        batch (a source fetches them concurrently; this default reads them one by one)."""
        for c in chunks:
            c = tuple(int(v) for v in c)
            yield c, self.read_encoded(c, mip)

    def decode_chunk(self, chunk: tuple[int, int, int], mip: int, data: bytes | None) -> np.ndarray:
        """Storage chunk ``chunk`` decoded whole from the bytes ``read_encoded`` gave (this default
        reads it again with ``read_chunk``)."""
        return self.read_chunk(chunk, mip)

    def supervoxels_at(self, voxels: np.ndarray, mip: int) -> np.ndarray:
        """Supervoxel at each absolute voxel (N, 3) at ``mip``; 0 outside the volume.

        Points are grouped by storage chunk; each chunk is read once."""
        return lookup_points(self, voxels, mip)

    @abc.abstractmethod
    def cutout(self, box: np.ndarray, mip: int) -> np.ndarray:
        """Supervoxels in the half-open voxel box ``box`` (2, 3) at ``mip``, (X, Y, Z) uint64.
        The box must lie inside the volume."""

    # -- the chunked graph --------------------------------------------------------------------
    @abc.abstractmethod
    def roots(self, ids: np.ndarray, timestamp: datetime, stop_layer: int | None = None,
              batch_size: int | None = None) -> np.ndarray:
        """Ancestor of each node at ``stop_layer`` (default: root) at ``timestamp``.

        0 -> 0; unknown IDs -> 0; IDs at or above ``stop_layer`` are returned unchanged. The source
        deduplicates and batches its requests (at most the spec's ``batch-size`` IDs each, capped
        by ``batch_size``)."""

    @abc.abstractmethod
    def leaves(self, node: int, stop_layer: int = 1, bounds: np.ndarray | None = None) -> np.ndarray:
        """Descendants of ``node`` at ``stop_layer`` (sorted uint64), optionally only those in L2
        chunks overlapping the mip-0 voxel box ``bounds`` (2, 3). Timeless."""

    def leaves_many(self, nodes: np.ndarray, stop_layer: int = 1, bounds=None) -> dict[int, np.ndarray]:
        """``leaves`` of each node: node -> its descendants at ``stop_layer`` (sorted uint64), in the
        order the nodes first appear (duplicates answered once); ``bounds`` as in ``leaves``."""
        return {int(n): self.leaves(int(n), stop_layer, bounds) for n in np.asarray(nodes, np.uint64)}

    @abc.abstractmethod
    def children(self, node: int) -> np.ndarray:
        """Direct children of ``node`` (sorted uint64; empty for supervoxels)."""

    @abc.abstractmethod
    def is_latest(self, roots: np.ndarray, timestamp: datetime) -> np.ndarray:
        """True where the root exists at ``timestamp`` and has not been superseded by then."""

    @abc.abstractmethod
    def root_timestamps(self, roots: np.ndarray) -> np.ndarray:
        """Creation time of each root, float unix seconds."""

    @abc.abstractmethod
    def lineage(self, roots: np.ndarray, past: datetime | None = None, future: datetime | None = None):
        """networkx.DiGraph of the roots' history as PyChunkedGraph answers it: the roots, their
        ancestors (walking back while a node was created at or after ``past``) and their
        descendants (walking forward while a node was created at or before ``future``), not their
        siblings; edges old -> new. Nodes carry ``timestamp`` (creation, unix s) and, on every
        superseded root, ``operation_id`` (the operation that ended it). Unknown roots raise
        ``UnknownIDError``."""

    @abc.abstractmethod
    def latest_roots(self, root: int, timestamp: datetime) -> np.ndarray:
        """Roots alive at ``timestamp`` that descend from ``root`` (itself if alive)."""

    @abc.abstractmethod
    def l2_graph(self, root: int, bounds: np.ndarray | None = None) -> np.ndarray:
        """(E, 2) uint64 edges between the root's L2 nodes; with ``bounds`` (a (2, 3) mip-0 voxel
        box) only the edges whose two L2 nodes lie in chunks overlapping it."""

    def delta_roots(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        """Roots that expired and roots that were created by the operations stamped in
        [``past``, ``future``] (inclusive, as PyChunkedGraph's ``delta_roots``): two sorted, unique
        uint64 arrays ``(old_roots, new_roots)``. A new root superseded again inside the window is
        in both. One request on a CAVE server."""
        raise NotImplementedError(f"{type(self).__name__} does not answer delta roots")

    def delta_root_lists(self, past: datetime, future: datetime) -> tuple[np.ndarray, np.ndarray]:
        """PyChunkedGraph's raw ``delta_roots`` answer for the operations stamped in [``past``,
        ``future``] (inclusive, milliseconds truncated), in operation order.

        Returns
        -------
        old_roots, new_roots : numpy.ndarray of uint64
            ``new_roots``: every root the operations created; ``old_roots``: for each of those, the
            roots its operation ended, concatenated (duplicates kept). ``delta_roots`` is their
            sorted unique form."""
        raise NotImplementedError(f"{type(self).__name__} does not answer raw delta roots")

    def past_id_mapping(self, roots: np.ndarray, past: datetime | None = None
                        ) -> tuple[dict[int, list[int]], dict[int, int]]:
        """PyChunkedGraph's ``past_id_mapping``, derived from ``lineage`` (one call per root).

        Parameters
        ----------
        roots : array of uint64
            Query roots (duplicates answered once).
        past : datetime, optional
            How far back the lineage is walked (None: to ingest).

        Returns
        -------
        past_id_map : dict
            Root -> its oldest ancestors within reach (sorted), or ``[root]`` when it has none.
        future_id_map : dict
            Such an ancestor -> the single root every step after it merges into, where every step
            down from it is a merge."""
        from ._lineage import past_id_mapping

        return past_id_mapping(self, roots, past)

    def valid_nodes(self, ids: np.ndarray, end_timestamp: datetime) -> np.ndarray:
        """Whether each ID is a node of the chunked graph (any layer, superseded or not) created at
        or before ``end_timestamp``: a bool array like ``ids``."""
        raise NotImplementedError(f"{type(self).__name__} does not answer valid nodes")

    def root_expired(self, roots: np.ndarray, timestamp: datetime) -> np.ndarray:
        """Superseding time of each root (float unix s), or ``timestamp`` for roots still current
        then (PyChunkedGraph's ``root_timestamps?latest=True``). Unknown roots raise
        ``UnknownIDError``."""
        raise NotImplementedError(f"{type(self).__name__} does not answer root expiry times")

    def operation_details(self, operation_ids) -> dict[int, dict]:
        """Operation ID -> its record, for the known IDs among ``operation_ids`` (others left out).

        A record holds ``user`` (str), ``timestamp`` (aware UTC datetime), ``roots`` (the roots it
        created), ``source_coords`` and ``sink_coords`` (voxel points the editor placed), and
        ``added_edges`` (a merge) or ``removed_edges`` (a split): supervoxel pairs."""
        raise NotImplementedError(f"{type(self).__name__} does not answer operation details")

    def oldest_timestamp(self) -> datetime:
        """PyChunkedGraph's oldest timestamp: the first operation's time (ingest when no edit was
        made) minus 0.5 s."""
        raise NotImplementedError(f"{type(self).__name__} does not answer the oldest timestamp")

    def l2_chunk_children(self, chunk_id: int, timestamp: datetime) -> dict[int, np.ndarray]:
        """L2 node -> its supervoxels (sorted uint64), for the L2 nodes of the layer-2 chunk of
        ``chunk_id`` (any ID in that chunk) that are part of the graph at ``timestamp``, in ID
        order. ``InvalidInputError`` when ``chunk_id`` is not a layer-2 ID."""
        raise NotImplementedError(f"{type(self).__name__} does not answer L2 chunk children")

    def graphene_info(self) -> dict:
        """The dataset's graphene info: the precomputed ``scales``, ``graph`` (layers, chunk size,
        bit masks) and ``data_dir`` (where the supervoxel layer is read)."""
        raise NotImplementedError(f"{type(self).__name__} does not answer its graphene info")

    # -- materialization ----------------------------------------------------------------------
    @abc.abstractmethod
    def materialization_versions(self) -> dict[int, datetime]:
        """Version -> timestamp of every materialization."""

    def materialization_timestamp(self, version: int | None = None) -> datetime:
        """Timestamp of materialization ``version`` (default: the latest)."""
        versions = self.materialization_versions()
        if not versions:
            raise InvalidTimestampError(f"dataset {self.spec.name!r} has no materialization versions")
        v = max(versions) if version is None else int(version)
        if v not in versions:
            raise InvalidTimestampError(
                f"materialization version {v} does not exist in {self.spec.name!r}; known: {sorted(versions)}"
            )
        return versions[v]
