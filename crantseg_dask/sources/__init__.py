"""Data sources: one interface (``base.SegmentationSource``), one live source per spec and process."""
from __future__ import annotations

from functools import lru_cache

from .base import SegmentationSource, SourceSpec, VolumeMeta

__all__ = ["SegmentationSource", "SourceSpec", "VolumeMeta", "open_source"]


@lru_cache(maxsize=16)
def open_source(spec: SourceSpec) -> SegmentationSource:
    """The live source for ``spec`` in this process (built once, then cached)."""
    if spec.kind == "local":
        from .local import LocalSource

        return LocalSource(spec)
    if spec.kind == "cave":
        from .cave import CaveSource

        return CaveSource(spec)
    raise ValueError(f"unknown source kind {spec.kind!r}")
