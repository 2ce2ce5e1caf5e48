"""pytest fixtures for the local CAVE server (import them into a test module or conftest).

    from crantseg_dask.testing.server import cave_home, cave_server, cave_spec  # noqa: F401

``cave_home`` points HOME (and cloud-volume's / cloud-files' directories) at a temporary
directory for the session, so caveclient and cloud-volume write nothing under the real home.
``cave_server`` serves the tiny dataset (fixture ``tiny_path``) in a thread on a pre-bound
port-0 socket of 127.0.0.1. ``cave_spec`` is a ``SourceSpec`` for it with a short retry backoff.
``cave_spec_for(dataset, home)`` does the same as a context manager (it backs the shared
``crantseg_dask.testing.fixtures.cave_spec``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from ..server.app import RunningServer, serve_in_thread
from ..server.state import Faults
from ..sources.base import SourceSpec
from ..sources.resolve import cave_dataset

__all__ = ["FAST_RETRIES", "cave_home", "cave_server", "cave_spec", "cave_spec_for", "fast_spec", "faulty_server",
           "isolated_home"]

#: Retry settings for tests: same policy, waits in milliseconds.
FAST_RETRIES = {"retries": 8, "backoff": 0.005, "backoff-max": 0.05, "timeout": 10.0}


@contextmanager
def isolated_home(home) -> Iterator[Path]:
    """HOME, CLOUD_VOLUME_DIR and CLOUD_FILES_DIR under ``home``, loopback in NO_PROXY; restored after."""
    home = Path(home)
    keys = ("HOME", "CLOUD_VOLUME_DIR", "CLOUD_FILES_DIR", "NO_PROXY", "no_proxy")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(HOME=str(home), CLOUD_VOLUME_DIR=str(home / ".cloudvolume"),
                      CLOUD_FILES_DIR=str(home / ".cloudfiles"))
    for k in ("NO_PROXY", "no_proxy"):
        parts = [p for p in os.environ.get(k, "").split(",") if p]
        os.environ[k] = ",".join(dict.fromkeys(parts + ["127.0.0.1", "localhost"]))
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def cave_spec_for(dataset, home, storage: str = "http", **faults) -> Iterator[SourceSpec]:
    """A server for ``dataset`` (in a thread, HOME at ``home``) and the ``SourceSpec`` to reach it.

    ``faults`` are ``Faults`` fields (``fail_rate=0.2`` ...); ``storage`` as ``serve_in_thread``.
    The server stops on exit."""
    with isolated_home(home):
        server = serve_in_thread(dataset, faults=Faults(**faults) if faults else None, storage=storage)
        try:
            yield fast_spec(server)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def cave_home(tmp_path_factory):
    """A temporary HOME for the session (restored afterwards)."""
    with isolated_home(tmp_path_factory.mktemp("home")) as home:
        yield home


#: ``CRANTSEG_TEST_STORAGE`` modes of the session server: what its data_dir is and how it behaves.
STORAGE_MODES = ("http", "file", "sharded", "faulty", "sharded-faulty")
#: The fault mode of the "faulty" test storage (the issue-11 bar: 20% failures, 5% stalls).
TEST_FAULTS = {"fail_rate": 0.2, "stall_rate": 0.05, "stall_s": 0.5, "seed": 11}


@pytest.fixture(scope="session")
def cave_server(tiny_path, cave_home, request) -> RunningServer:
    """The tiny dataset served on 127.0.0.1 for the whole session, data over HTTP storage.

    ``CRANTSEG_TEST_STORAGE`` picks the storage the session's cave tests run against: ``http``
    (default), ``file`` (data_dir file://), ``sharded`` (the sharded copy of tiny), ``faulty`` /
    ``sharded-faulty`` (``TEST_FAULTS`` on every request, chunk reads included)."""
    mode = os.environ.get("CRANTSEG_TEST_STORAGE", "http")
    if mode not in STORAGE_MODES:
        raise ValueError(f"CRANTSEG_TEST_STORAGE={mode!r}: use one of {STORAGE_MODES}")
    dataset = request.getfixturevalue("tiny_sharded_path") if mode.startswith("sharded") else tiny_path
    server = serve_in_thread(dataset, storage="file" if mode == "file" else "http",
                             faults=Faults(**TEST_FAULTS) if mode.endswith("faulty") else None)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def faulty_layer_server(tiny_path, cave_home) -> RunningServer:
    """The tiny dataset served with ``TEST_FAULTS`` on its layer's reads only (the chunk GETs;
    the CAVE routes' faults are covered by the cave source's tests)."""
    from ..server.storage import STORAGE_PREFIX

    server = serve_in_thread(tiny_path, faults=Faults(**TEST_FAULTS, paths=STORAGE_PREFIX))
    yield server
    server.stop()


def fast_spec(server: RunningServer, **options):
    """``SourceSpec`` of ``server`` with the token and test retry settings. Its other settings are
    not pinned: a source built from it directly reads this process's settings at each use (an
    operation given it pins them when it resolves the dataset)."""
    spec = cave_dataset(server.address, server.datastack, name="tiny-cave",
                        **{"token": server.token, **FAST_RETRIES, **options})
    return replace(spec, settings=())


@pytest.fixture(scope="session")
def cave_spec(cave_server):
    return fast_spec(cave_server)


def faulty_server(tiny_path, **faults) -> RunningServer:
    """A separate server with ``Faults(**faults)`` (stop it when done)."""
    return serve_in_thread(tiny_path, faults=Faults(**faults))
