"""Data sources: one interface (``base.SegmentationSource``), one live source per spec and process.

``resolve.resolve_dataset`` turns a ``dataset=`` argument into a ``SourceSpec`` (settings pinned);
``open_source`` turns a spec into the live source of this process.
"""
from __future__ import annotations

from functools import lru_cache

from .base import SegmentationSource, SourceSpec, VolumeMeta
from .cave import CaveSource
from .local import LocalSource
from .resolve import pin_settings

__all__ = ["SegmentationSource", "SourceSpec", "VolumeMeta", "open_source"]


def open_source(spec: SourceSpec) -> SegmentationSource:
    """The live source for ``spec`` in this process (built once, then cached). A spec without
    pinned settings (built by hand) gets this process's settings, so it shares the live source of
    the resolved spec that equals it."""
    if not spec.settings:
        spec = pin_settings(spec)
    return _open(spec)


@lru_cache(maxsize=16)
def _open(spec: SourceSpec) -> SegmentationSource:
    if spec.kind == "local":
        return LocalSource(spec)
    if spec.kind == "cave":
        return CaveSource(spec)
    raise ValueError(f"unknown source kind {spec.kind!r}")


open_source.cache_clear = _open.cache_clear  # type: ignore[attr-defined]  # forget every live source
open_source.cache_info = _open.cache_info  # type: ignore[attr-defined]
