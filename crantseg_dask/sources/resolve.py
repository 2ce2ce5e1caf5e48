"""Which dataset a ``dataset=`` argument means, as the ``SourceSpec`` tasks carry.

Datasets (every public function's ``dataset=``):

=========== ===================================================================================
latest      CRANT production: ``https://proofreading.zetta.ai``, datastack ``kronauer_ant``
sandbox     CRANT sandbox: same server, datastack ``kronauer_ant_sandbox``
local       the embedded dataset (preset ``crantseg.local-preset``), generated on first use
tiny, demo  the embedded presets by name, generated on first use
a path      any directory written by ``crantseg make-dataset``
SourceSpec  anything else, e.g. ``cave_dataset("http://127.0.0.1:8000", "my_stack")``
=========== ===================================================================================

Resolution runs in the caller's process and pins the settings that change answers or requests
(``base.PINNED_SETTINGS``) into the spec (``pin_settings``): a worker process never reads them
from its own ``dask.config``.
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from .._validate import as_timestamp, check_time_range
from ..config import data_dir, setting
from ..dataset.layout import GENERATOR_VERSION, PRESETS, is_dataset_dir
from ..errors import DatasetError
from .base import PINNED_SETTINGS, SourceSpec

__all__ = ["CRANT_SERVER", "CRANT_DATASTACKS", "resolve_dataset", "cave_dataset", "local_dataset_path",
           "pin_settings", "resolve_timestamp", "first_data"]

log = logging.getLogger("crantseg")

CRANT_SERVER = "https://proofreading.zetta.ai"
CRANT_DATASTACKS = {"latest": "kronauer_ant", "sandbox": "kronauer_ant_sandbox"}


def pin_settings(spec: SourceSpec) -> SourceSpec:
    """``spec`` with this process's values of ``PINNED_SETTINGS`` (``spec`` itself when it
    already carries exactly those values)."""
    pinned = tuple((k, setting(k)) for k in PINNED_SETTINGS)
    return spec if spec.settings == pinned else replace(spec, settings=pinned)


def local_dataset_path(preset: str, progress: bool = False) -> Path:
    """Path of embedded preset ``preset``, generating it on first use (under a file lock beside it,
    so concurrent first uses generate it once; ``progress`` prints a line per slab written)."""
    if preset not in PRESETS:
        raise DatasetError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
    path = data_dir() / f"{preset}-seed{PRESETS[preset].seed}-g{GENERATOR_VERSION}"
    if is_dataset_dir(path):
        return path
    from ..dataset.generate import make_dataset  # the generator's imports cost ~1 s: first use only

    path.parent.mkdir(parents=True, exist_ok=True)
    # one generator at a time (processes and threads): the others wait, then find it written
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_dataset_dir(path):
                log.warning("generating the embedded %r dataset in %s (first use)", preset, path)
                make_dataset(PRESETS[preset], path, overwrite=True, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def cave_dataset(server: str, datastack: str, *, name: str | None = None, **options) -> SourceSpec:
    """Any CAVE deployment: global server address plus datastack name (settings pinned now;
    ``options`` such as ``retries=3, timeout=10, token=...`` override them)."""
    return pin_settings(SourceSpec(kind="cave", name=name or datastack, server=server.rstrip("/"),
                                   datastack=datastack, options=tuple(sorted(options.items()))))


def resolve_dataset(dataset=None) -> SourceSpec:
    """The ``SourceSpec`` for a ``dataset`` argument (see the module docstring), settings pinned."""
    if dataset is None:
        dataset = setting("dataset", "latest")
    if isinstance(dataset, SourceSpec):
        return pin_settings(dataset)
    if isinstance(dataset, os.PathLike):
        dataset = os.fspath(dataset)
    if not isinstance(dataset, str):
        raise DatasetError(f"dataset must be a name or a path, got {type(dataset).__name__}: {dataset!r}")
    if dataset in CRANT_DATASTACKS:
        return cave_dataset(CRANT_SERVER, CRANT_DATASTACKS[dataset], name=dataset)
    if dataset == "local":
        dataset = setting("local-preset", "demo")
    if dataset in PRESETS:
        return pin_settings(SourceSpec(kind="local", name=dataset, path=str(local_dataset_path(dataset))))
    if is_dataset_dir(dataset):
        return pin_settings(SourceSpec(kind="local", name=dataset, path=str(Path(dataset).absolute())))
    raise DatasetError(
        f'Dataset "{dataset}" is not known: use "latest", "sandbox", "local", one of the presets '
        f"{sorted(PRESETS)}, a directory written by `crantseg make-dataset`, or cave_dataset(server, datastack)"
    )


def first_data(source) -> datetime | None:
    """When the dataset's data begins (an embedded dataset's ingest time); None when unknown."""
    edits = getattr(source, "edits", None)
    if isinstance(edits, dict) and isinstance(edits.get("ingest_ms"), (int, float)):
        return datetime.fromtimestamp(edits["ingest_ms"] / 1000, tz=timezone.utc)
    return None


def resolve_timestamp(timestamp, source, *, name: str = "timestamp") -> datetime:
    """Resolve a timestamp argument once, against ``source`` for "mat" strings: an aware UTC datetime.
    Times before the dataset's first data or after now are refused, naming the valid range."""
    ts = as_timestamp(timestamp, resolve_mat=source.materialization_timestamp, name=name)
    return check_time_range(ts, first_data(source), name=name)
