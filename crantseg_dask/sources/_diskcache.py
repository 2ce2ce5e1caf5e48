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

__all__ = ["chunk_cache", "layer_identity"]

_caches: dict = {}
_lock = threading.Lock()


def chunk_cache():
    """The process's ``diskcache.Cache`` for the configured directory, or None when off."""
    from ..config import setting

    directory = setting("storage.disk-cache")
    if not directory:
        return None
    size = int(float(setting("storage.disk-cache-size", 10e9)))
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
