"""Settings: ``dask.config`` under ``crantseg.*``.

Defaults live in ``crantseg.yaml`` beside this file. They can be overridden with
``dask.config.set({"crantseg.dataset": "local"})``, with Dask's own environment variables
(``DASK_CRANTSEG__DATASET=local``), or with the short forms ``CRANTSEG_DATASET`` and
``CRANTSEG_DATA_DIR``. Settings are read once, when a call builds its graph: the settings that
change a source's answers or requests (retries, timeouts, batch sizes, reads in flight, the disk
cache; ``sources.base.PINNED_SETTINGS``) are pinned into the dataset's ``SourceSpec`` when the
dataset is resolved, so every Dask worker runs with the settings the caller saw.

Which dataset a ``dataset=`` argument means (names, presets, paths, CAVE deployments) is decided
in ``crantseg_dask.sources.resolve``. Its names (``resolve_dataset``, ``cave_dataset``,
``local_dataset_path``, ``resolve_timestamp``, ``CRANT_SERVER``, ``CRANT_DATASTACKS``) remain
reachable here for code written against earlier versions; the package itself imports them from
``sources.resolve``, so this module imports nothing from the sources.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import dask.config
import platformdirs
import yaml

__all__ = ["setting", "data_dir"]

with open(Path(__file__).with_name("crantseg.yaml")) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))

# names that moved to ``sources.resolve`` (dataset resolution), still reachable as attributes here
_MOVED = frozenset({"CRANT_SERVER", "CRANT_DATASTACKS", "resolve_dataset", "cave_dataset", "local_dataset_path",
                    "resolve_timestamp", "first_data"})


def setting(key: str, default=None):
    """A ``crantseg.*`` setting; ``CRANTSEG_<KEY>`` environment variables win."""
    env = os.environ.get("CRANTSEG_" + key.upper().replace("-", "_").replace(".", "_"))
    if env is not None:
        return env
    return dask.config.get(f"crantseg.{key}", default=default)


def data_dir() -> Path:
    """Directory holding generated embedded datasets."""
    d = setting("data-dir")
    if d:
        return Path(d).expanduser()
    return Path(platformdirs.user_cache_dir("crantseg_dask")) / "datasets"


def __getattr__(name: str):
    """Dataset resolution moved to ``crantseg_dask.sources.resolve``; its names are looked up
    there on first use (PEP 562), after this module has loaded, so no import cycle forms."""
    if name in _MOVED:
        return getattr(importlib.import_module("crantseg_dask.sources.resolve"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
