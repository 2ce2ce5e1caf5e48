"""Optional persistent on-disk cache of fetched chunk bytes (off by default).

Turn it on with the setting ``crantseg.storage.disk-cache`` = a directory (environment:
``CRANTSEG_STORAGE_DISK_CACHE=/path``); ``crantseg.storage.disk-cache-size`` bounds it (bytes,
default 10 GB, least recently stored entries evicted). It holds the encoded bytes of each chunk
as fetched (after shard lookup, before decoding), keyed by the layer's identity (its URL and a
hash of its scale's info entry) and the chunk, so a repeated query over the same region reads
local disk instead of the bucket. It is ``diskcache`` (SQLite index + files), which is safe with
several processes reading and writing the same directory at once. A layer on ``file://`` is
never cached (it is already local).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

from ..config import setting

__all__ = ["chunk_cache", "layer_identity"]

_caches: dict = {}
_lock = threading.Lock()


def chunk_cache(directory=None, size=None):
    """The process's ``diskcache.Cache`` for ``directory`` of at most ``size`` bytes (a spec's
    pinned ``storage.disk-cache``/``-size``; default: the settings now), or None when off."""
    if directory is None and size is None:
        directory, size = setting("storage.disk-cache"), setting("storage.disk-cache-size", 10e9)
    if not directory:
        return None
    size = int(float(10e9 if size is None else size))
    key = (os.getpid(), str(directory), size)
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            import diskcache

            cache = diskcache.Cache(os.path.expanduser(str(directory)), size_limit=size,
                                    eviction_policy="least-recently-stored")
            _caches[key] = cache
        return cache


def layer_identity(base: str, scale: dict) -> str:
    """Cache key prefix of one scale of a layer: its URL and a hash of its info entry."""
    digest = hashlib.sha1(json.dumps(scale, sort_keys=True).encode()).hexdigest()[:16]
    return f"{base.rstrip('/')}|{scale['key']}|{digest}"
