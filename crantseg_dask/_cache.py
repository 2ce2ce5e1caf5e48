"""Caches for the ID operations: a persistent root -> leaves store and an in-process TTL map.

Both are keyed by the dataset's identity (never by ID alone), so "latest", "sandbox" and every
embedded dataset keep separate entries.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .sources.base import SourceSpec

__all__ = ["dataset_identity", "LeavesCache", "TTLCache"]


def dataset_identity(spec: SourceSpec) -> str:
    """A stable string naming the dataset behind ``spec``.

    Local datasets: the absolute path plus a digest of ``dataset.json`` (a dataset regenerated in
    place with other parameters gets a new identity). CAVE: server address and datastack."""
    if spec.kind == "local":
        p = Path(spec.path).absolute()
        try:
            digest = hashlib.sha1((p / "dataset.json").read_bytes()).hexdigest()[:16]
        except OSError:
            digest = "nodigest"
        return f"local:{p}:{digest}"
    return f"{spec.kind}:{spec.server}/{spec.datastack}"


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
    """A thread-safe in-process dict whose entries expire ``max_age`` seconds after being stored."""

    def __init__(self, max_age: float = 7200.0):
        self.max_age = max_age
        self._data: dict = {}
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return default
            if time.monotonic() - hit[0] > self.max_age:
                del self._data[key]
                return default
            return hit[1]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)

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
