"""Threads per worker of a job's own local cluster: ``crantseg.storage.job-threads`` for a layer on
remote storage (here the local server's HTTP storage route), 1 for a ``file://`` layer."""
from __future__ import annotations

import dask
import pandas as pd
import pytest

from crantseg_dask import cluster
from crantseg_dask.errors import InvalidInputError
from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.runner import threads_per_worker
from crantseg_dask.server.app import serve_in_thread
from crantseg_dask.sources import open_source
from crantseg_dask.sources.cave import CaveSource
from crantseg_dask.testing.server import fast_spec


@pytest.fixture(scope="module")
def servers(tiny_path, cave_home):
    http, file = serve_in_thread(tiny_path), serve_in_thread(tiny_path, storage="file")
    yield http, file
    http.stop()
    file.stop()


def test_remote_layer_gets_the_setting_file_layer_one(servers, local_spec):
    http, file = (CaveSource(fast_spec(s)) for s in servers)
    assert http.data_dir.startswith("http://") and file.data_dir.startswith("file://")
    assert threads_per_worker(http) == 2
    assert threads_per_worker(file) == 1
    assert threads_per_worker(open_source(local_spec)) == 1
    with dask.config.set({"crantseg.storage.job-threads": 3}):
        assert threads_per_worker(http) == 3
        assert threads_per_worker(file) == 1


@pytest.mark.parametrize("bad", [0, "two", 1.5])
def test_bad_setting_names_the_value(servers, bad):
    with dask.config.set({"crantseg.storage.job-threads": bad}):
        with pytest.raises(InvalidInputError, match=f"job-threads={bad!r}"):
            threads_per_worker(CaveSource(fast_spec(servers[0])))


class _Stop(Exception):
    pass


def test_run_job_starts_its_cluster_with_those_threads(servers, truth, tmp_path, monkeypatch):
    asked = []

    def fake(*args, **kwargs):
        asked.append(kwargs.get("threads_per_worker"))
        raise _Stop  # the cluster comes first: nothing else of the job runs

    monkeypatch.setattr(cluster, "make_client", fake)
    xyz = truth.sv_anchor[:5] * truth.resolution(0)
    table = pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]})
    for server, want in zip(servers, (2, 1)):
        with pytest.raises(_Stop):
            run_job("locs-to-supervoxels", table, str(tmp_path / f"out{want}.zarr"), dataset=fast_spec(server),
                    progress=False)
    assert asked == [2, 1]
