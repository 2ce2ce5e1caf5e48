"""Caches for the ID operations: a persistent root -> leaves store and an in-process TTL map.

Both are keyed by the dataset's identity (``cache_identity``) (never by ID alone), so "latest", "sandbox" and every
embedded dataset keep separate entries.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .sources.base import SourceSpec

__all__ = ["cache_identity", "LeavesCache", "TTLCache"]


def cache_identity(spec: SourceSpec) -> str:
    """A stable string naming the dataset behind ``spec``, the key of its cache entries (not
    the job store's ``dataset_identity`` record, ``jobs.runner``).

    Local datasets: the absolute path plus a digest of ``dataset.json`` (a dataset regenerated in
    place with other parameters gets a new identity). CAVE: server address and datastack."""
    if spec.kind == "local":
        p = Path(spec.path).absolute()
        try:
            digest = hashlib.sha1((p / "dataset.json").read_bytes()).hexdigest()[:16]
        except OSError:
            digest = "nodigest"
        return f"local:{p}:{digest}"
    return f"{spec.kind}:{spec.server}/{spec.datastack}:{_info_digest(spec)}"


def _info_digest(spec: SourceSpec) -> str:
    """Short digest of the source's segmentation info (a datastack re-pointed at another
    segmentation at the same address gets a new identity)."""
    from .sources import open_source

    info = getattr(open_source(spec), "segmentation_info", None)
    if info is None:
        return "noinfo"
    return hashlib.sha1(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LeavesCache:
    """Root -> sorted uint64 supervoxels, one ``.npy`` file per root under ``directory``.

    Writes go to a temporary file first and are renamed into place, so concurrent processes never
    read a partial entry. A root's leaves never change, so entries never expire."""

    def __init__(self, directory, identity: str):
        self.dir = Path(directory) / hashlib.sha1(identity.encode()).hexdigest()[:24]

    def _file(self, root: int) -> Path:
        return self.dir / f"{int(root)}.npy"

    def get(self, root: int) -> np.ndarray | None:
        try:
            return np.load(self._file(root), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, root: int, leaves: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(leaves, dtype=np.uint64), allow_pickle=False)
            os.replace(tmp, self._file(root))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class TTLCache:
    """A thread-safe in-process dict whose entries expire ``max_age`` seconds after being stored,
    holding at most ``max_entries`` (the least recently used go first)."""

    def __init__(self, max_age: float = 7200.0, max_entries: int = 1_000_000):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_age, self.max_entries = max_age, int(max_entries)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return default
            if time.monotonic() - hit[0] > self.max_age:
                del self._data[key]
                return default
            self._data.move_to_end(key)
            return hit[1]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def prune(self) -> None:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, (t, _) in self._data.items() if now - t > self.max_age]:
                del self._data[k]

    def __len__(self) -> int:
        return len(self._data)
