"""A setting set with ``dask.config.set`` in the client reaches the tasks of a separate
``dask worker`` process: the dataset's spec carries it (pinned when the dataset is resolved),
while the worker's own ``dask.config`` never sees it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client

from crantseg_dask import supervoxels_to_roots
from crantseg_dask.sources.resolve import cave_dataset, resolve_dataset


def _dask(*args, cwd):
    """``dask scheduler|worker ...`` in its own process; this module importable there (``_probe``)."""
    here = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


@pytest.fixture
def external_cluster(tmp_path):
    """``dask scheduler`` and one ``dask worker`` (no nanny) as separate processes."""
    sched_file = tmp_path / "scheduler.json"
    procs = [_dask("scheduler", "--scheduler-file", str(sched_file), "--host", "127.0.0.1", "--port", "0",
                   "--no-dashboard", cwd=tmp_path)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "dask scheduler did not start"
            time.sleep(0.1)
        procs.append(_dask("worker", "--scheduler-file", str(sched_file), "--nthreads", "2", "--no-nanny",
                           "--no-dashboard", "--host", "127.0.0.1", cwd=tmp_path))
        with Client(scheduler_file=str(sched_file), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            yield client
    finally:
        for p in reversed(procs):  # the worker first, then its scheduler
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:  # a loaded CI machine once took longer: not this test's subject
                p.kill()
                p.wait(30)


def _probe(spec):
    """On the worker: what the live source for ``spec`` runs with, and the worker's own config."""
    from crantseg_dask.sources import open_source

    src = open_source(spec)
    return {"pid": os.getpid(), "retries": src.policy.retries, "timeout": src.policy.timeout,
            "batch_size": src.batch_size, "max_concurrency": src.policy.max_concurrency,
            "worker_config": (dask.config.get("crantseg.http.retries"), dask.config.get("crantseg.batch-size"))}


def test_client_settings_reach_a_separate_worker_process(external_cluster, cave_server, truth):
    client = external_cluster
    client_settings = {"crantseg.http.retries": 1, "crantseg.http.timeout": 7.5, "crantseg.batch-size": 3,
                       "crantseg.cave.max-concurrency": 2}
    with dask.config.set(client_settings):
        spec = resolve_dataset(cave_dataset(cave_server.address, cave_server.datastack, token=cave_server.token))
        got = client.submit(_probe, spec, pure=False).result(timeout=120)
        # an operation computed on that worker under the client's settings answers as the truth
        ts = truth.materialization()
        root = truth.largest_roots(1, ts)[0]
        svs = np.r_[truth.leaves(root)[:5], 0].astype(np.uint64)
        roots = supervoxels_to_roots(svs, timestamp=ts, progress=False, dataset=spec)
    assert got["pid"] != os.getpid()
    # the worker's own config has the package defaults: the values came with the spec
    assert got["worker_config"] == (6, 10000)
    assert (got["retries"], got["timeout"], got["batch_size"], got["max_concurrency"]) == (1, 7.5, 3, 2)
    np.testing.assert_array_equal(roots, truth.root_of(svs, ts).astype(np.int64))
    assert roots[0] == root and roots[-1] == 0
    # outside the block, a new resolution pins the defaults again
    again = resolve_dataset(cave_dataset(cave_server.address, cave_server.datastack, token=cave_server.token))
    assert client.submit(_probe, again, pure=False).result(timeout=120)["retries"] == 6
