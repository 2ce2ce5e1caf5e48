"""A CAVE-compatible HTTP server over an embedded dataset: ``crantseg serve``.

It serves the protocol subset the real ``caveclient`` and cloud-volume's ``graphene://`` frontend
need (shared/reference/cave-protocol.md section 5.1): the info service, the chunkedgraph v1 reads,
materialization versions and timestamps, and the graphene info whose ``data_dir`` is the dataset's
``file://`` supervoxel layer. Built on **tornado**, which ships with dask's ``distributed`` (no new
dependency): a maintained asynchronous server that adds no redirects, accepts GET bodies and
gzip request bodies. It binds 127.0.0.1 unless told otherwise, answers 401 without the token, never
logs the token, and has a fault mode (``Faults``) for retry tests and benchmarks.

Modules: ``state`` (dataset, token, faults), ``_base`` (auth, parsing, errors), ``info``,
``chunkedgraph``, ``materialize`` (routes per service), ``app`` (application, threads),
``main`` (the command line). Its pytest fixtures live in ``crantseg_dask.testing.server``.

Every data answer comes from a documented ``SegmentationSource`` method of the dataset's
``LocalSource``; the server adds only the protocol (routes, encodings, status codes, auth, faults).
"""
from __future__ import annotations

from .app import RunningServer, make_app, serve_in_thread
from .state import Faults, ServedDataset, new_token

__all__ = ["Faults", "RunningServer", "ServedDataset", "make_app", "new_token", "serve_in_thread"]
