"""Locating chunks in ``neuroglancer_uint64_sharded_v1`` scales with cached shard indexes.

A chunk's key is the compressed Morton code of its grid position; the spec maps it to a shard
file and a minishard. Reading a chunk needs the shard index (the first ``16 * 2**minishard_bits``
bytes of the shard), the minishard index (a gzip range the shard index points at) and then the
chunk's own byte range. ``ShardLocator.locate`` fetches the indexes a batch of chunks needs, all
at once (each kind concurrently), keeps them in a bounded per-process LRU (so a worker fetches
each index once), and returns each chunk's ``(shard file, start, end)`` or None when the
chunk is not in its shard. ``coalesce`` merges adjacent byte ranges of one shard into one read.
Index bytes are validated: a truncated or corrupt index raises ``SourceError`` naming the file.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..config import setting
from ..errors import SourceError
from ._fetch import Store, fetch, gunzip_if

__all__ = ["ShardLocator", "coalesce", "index_cache"]


class _LRU:
    """A small thread-safe LRU of index arrays (entries bounded by ``crantseg.storage.index-cache``)."""

    def __init__(self):
        self.d: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.d:
                self.d.move_to_end(key)
                return True, self.d[key]
        return False, None

    def put(self, key, value, limit: int | None = None) -> None:
        """Store ``value``, keeping at most ``limit`` entries (default: the setting now)."""
        limit = max(16, int(setting("storage.index-cache", 20000) if limit is None else limit))
        with self.lock:
            self.d[key] = value
            self.d.move_to_end(key)
            while len(self.d) > limit:
                self.d.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.d.clear()


#: The process's index cache, shared by every reader (keys start with the layer URL).
index_cache = _LRU()


class ShardLocator:
    """Chunk -> byte range in a shard, for one sharded scale of layer ``store``."""

    def __init__(self, store: Store, scale: dict, grid, *, settings=None):
        from cloudvolume.datasource.precomputed.sharding import ShardingSpecification

        self.store = store
        self._setting = settings or setting  # a spec's pinned settings (``SourceSpec.setting``)
        self.scale_key = scale["key"]
        self.spec = ShardingSpecification.from_dict(scale["sharding"])
        self.grid = [int(g) for g in grid]
        self.index_bytes = 16 * (1 << int(self.spec.minishard_bits))
        self.gzip_data = self.spec.data_encoding == "gzip"

    def _name(self, shard: str) -> str:
        return f"{self.scale_key}/{shard}"

    def locations(self, chunks) -> list[tuple[str, int, int]]:
        """(shard file, minishard number, key) of each chunk grid position."""
        from cloudvolume.datasource.precomputed.common import compressed_morton_code

        codes = compressed_morton_code(np.asarray(chunks, dtype=np.int64).reshape(-1, 3), self.grid)
        out = []
        for code in np.atleast_1d(codes):
            loc = self.spec.compute_shard_location(int(code))
            out.append((self._name(f"{loc.shard_number}.shard"), int(loc.minishard_number), int(code)))
        return out

    def _shard_indexes(self, files) -> dict:
        got, todo = {}, []
        for f in set(files):
            hit, v = index_cache.get((self.store.base, f))
            (got.__setitem__(f, v) if hit else todo.append(f))
        for i, data in fetch(self.store, [(f, 0, self.index_bytes) for f in todo],
                             in_flight=self._setting("storage.max-in-flight", 256)):
            f = todo[i]
            if data is None:
                idx = None  # no shard file: every chunk of it is missing
            elif len(data) != self.index_bytes:
                raise SourceError(f"shard {self.store.url(f)}: truncated shard index "
                                  f"({len(data)} of {self.index_bytes} bytes)")
            else:
                idx = np.frombuffer(data, dtype="<u8").reshape(-1, 2)
                if np.any(idx[:, 1] < idx[:, 0]):
                    raise SourceError(f"shard {self.store.url(f)}: corrupt shard index (an end before its start)")
            index_cache.put((self.store.base, f), idx, self._setting("storage.index-cache", 20000))
            got[f] = idx
        return got

    def _minishards(self, wanted, shard_idx) -> dict:
        got, todo = {}, []
        for f, m in set(wanted):
            idx = shard_idx[f]
            if idx is None or idx[m, 0] == idx[m, 1]:
                got[(f, m)] = {}
                continue
            hit, v = index_cache.get((self.store.base, f, m))
            (got.__setitem__((f, m), v) if hit else todo.append((f, m)))
        reqs = [(f, self.index_bytes + int(shard_idx[f][m, 0]), self.index_bytes + int(shard_idx[f][m, 1]))
                for f, m in todo]
        for i, data in fetch(self.store, reqs, in_flight=self._setting("storage.max-in-flight", 256)):
            f, m = todo[i]
            got[(f, m)] = self._decode_minishard(data, f, reqs[i][2] - reqs[i][1])
            index_cache.put((self.store.base, f, m), got[(f, m)], self._setting("storage.index-cache", 20000))
        return got

    def _decode_minishard(self, data, f: str, want: int) -> dict:
        url = self.store.url(f)
        if data is None or len(data) != want:
            raise SourceError(f"shard {url}: truncated minishard index ({0 if data is None else len(data)} "
                              f"of {want} bytes)")
        if self.spec.minishard_index_encoding == "gzip":
            data = gunzip_if(data, f"shard {url} minishard index")
        if len(data) % 24:
            raise SourceError(f"shard {url}: corrupt minishard index ({len(data)} bytes, not rows of 3 uint64)")
        a = np.frombuffer(data, dtype="<u8").reshape(3, -1).T.copy()
        a[:, 0] = np.cumsum(a[:, 0])
        a[:, 1] = np.cumsum(a[:, 1])
        a[1:, 1] += np.cumsum(a[:-1, 2])
        a[:, 1] += np.uint64(self.index_bytes)
        return {int(k): (int(s), int(s) + int(n)) for k, s, n in a}

    def locate(self, chunks) -> list[tuple[str, int, int] | None]:
        """(shard file, start, end) of each chunk, or None when the chunk is not stored."""
        locs = self.locations(chunks)
        shard_idx = self._shard_indexes([f for f, _, _ in locs])
        mini = self._minishards([(f, m) for f, m, _ in locs], shard_idx)
        out = []
        for f, m, key in locs:
            r = mini[(f, m)].get(key)
            out.append(None if r is None else (f, r[0], r[1]))
        return out


def coalesce(ranges: list[tuple[str, int, int]], *, gap: int | None = None, max_bytes: int = 1 << 20):
    """Merge byte ranges of the same file that are adjacent (within ``gap`` bytes, default the
    setting ``crantseg.storage.coalesce-gap``; -1 merges nothing) into reads of <= ``max_bytes``.

    Returns ``[(file, start, end, [(i, start, end), ...]), ...]`` where ``i`` indexes ``ranges``."""
    if gap is None:
        gap = int(setting("storage.coalesce-gap", 4096))
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    reads: list = []
    for i in order:
        f, s, e = ranges[i]
        if reads and reads[-1][0] == f and s - reads[-1][2] <= gap and max(e, reads[-1][2]) - reads[-1][1] <= max_bytes:
            last = reads[-1]
            reads[-1] = (f, last[1], max(last[2], e), last[3] + [(i, s, e)])
        else:
            reads.append((f, s, e, [(i, s, e)]))
    return reads
