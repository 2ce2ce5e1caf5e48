"""Issue 17's fault matrix: each fault during a job ends either in output identical to the truth
(and to a clean run) after ``--resume``, or in a clear refusal that loses nothing.

kill worker, kill driver, server stop/restart on another port, disk full (simulated in the
workers), read-only store (simulated), corrupt output chunk, corrupt input chunk, concurrent
writer. Expected values: the tiny dataset's brute-force truth (``check_truth``)."""
import errno
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from crantseg_dask.cluster import make_client
from crantseg_dask.errors import CrantsegError, JobStoreError
from crantseg_dask.jobs import run_job
from crantseg_dask.persist import read_output, status

from .conftest import arrays, check_truth, chunk, wait_done

KW = dict(timestamp="mat", progress=False)


def _run(table, out, dataset, **kw):
    return run_job("locs-to-segments", table["path"], out, dataset=dataset, **{**KW, **kw})


def _failing_store(kind: str, after: int):
    """In each worker: make writes to the job's root_id chunks fail after ``after`` of them."""
    def patch():
        from zarr.storage import LocalStore

        real = LocalStore.set
        count = {"n": 0}

        async def set_(self, key, value, *a, **k):
            if "/root_id/c/" in key or key.startswith("root_id/c/"):
                count["n"] += 1
                if count["n"] > after:
                    raise (OSError(errno.ENOSPC, "No space left on device") if kind == "full"
                           else OSError(errno.EROFS, "Read-only file system"))
            return await real(self, key, value, *a, **k)

        LocalStore._crantseg_real_set = real
        LocalStore.set = set_
    return patch


def _restore_store():
    from zarr.storage import LocalStore

    if hasattr(LocalStore, "_crantseg_real_set"):
        LocalStore.set = LocalStore._crantseg_real_set
        del LocalStore._crantseg_real_set


@pytest.mark.parametrize("kind, message", [("full", "No space left on device"), ("readonly", "Read-only file system")])
def test_disk_full_or_read_only_then_resume(client, table, tiny_path, tmp_path, kind, message):
    out = tmp_path / "o.zarr"
    client.run(_failing_store(kind, after=2))
    try:
        with pytest.raises(JobStoreError, match=rf"o.zarr/root_id: writing partition \d+ failed: {message}"):
            _run(table, out, str(tiny_path), partition_size=100, client=client)
    finally:
        client.run(_restore_store)
    done = status(out)["partitions_done"]
    assert 0 < done < status(out)["partitions"], "finished partitions were kept"
    s = _run(table, out, str(tiny_path), partition_size=100, client=client, resume=True)
    # tasks already running when the job failed may still finish theirs: never more than the rest
    assert 0 < s["ran"] <= status(out)["partitions"] - done
    check_truth(out, table)


@pytest.mark.parametrize("what", ["output", "input"])
def test_corrupt_chunk_then_resume(client, table, tiny_path, tmp_path, what):
    out = tmp_path / "o.zarr"
    _run(table, out, str(tiny_path), partition_size=100, client=client)
    clean = arrays(out)
    target = chunk(out, "root_id" if what == "output" else "y", 5)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x5A
    target.write_bytes(bytes(data))
    with pytest.raises(JobStoreError, match="partition 5 is damaged"):
        read_output(out)
    s = _run(table, out, str(tiny_path), partition_size=100, client=client, resume=True)
    assert s["ran"] == 1
    after = arrays(out)
    for k in clean:
        np.testing.assert_array_equal(after[k], clean[k], err_msg=k)
    check_truth(out, table)


def _cli_job(table, out, tiny_path, *extra):
    cmd = [sys.executable, "-m", "crantseg_dask.cli", "run", "locs-to-segments", "--input", str(table["path"]),
           "--output", str(out), "--dataset", str(tiny_path), "--timestamp", "mat", "--partition-size", "20",
           "--no-progress", "--workers", "1", *extra]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_driver_then_resume(client, table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    proc = _cli_job(table, out, tiny_path)
    try:
        wait_done(out, 3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_done = int(status(out)["partitions_done"])
    s = _run(table, out, str(tiny_path), partition_size=20, client=client, resume=True)  # its stale lock is taken over
    assert s["ran"] == status(out)["partitions"] - n_done
    check_truth(out, table)


def test_concurrent_writer_is_refused_and_the_first_job_finishes(client, table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    proc = _cli_job(table, out, tiny_path)
    try:
        wait_done(out, 1)
        for force in (False, True):
            with pytest.raises(JobStoreError, match=rf"is in use: job 'locs-to-segments -> {out}' \(pid {proc.pid}"):
                _run(table, out, str(tiny_path), partition_size=500, client=client, force=force)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    check_truth(out, table)
    assert status(out)["partitions"] == -(-len(table["df"]) // 20), "the refused --force replaced nothing"


def test_killed_worker_finishes_identically(table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    with make_client(n_workers=2) as c:
        pids = c.run(os.getpid)
        job = threading.Thread(target=_run, args=(table, out, str(tiny_path)), kwargs={"partition_size": 20, "client": c})
        job.start()
        wait_done(out, 3)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        job.join(300)
        assert not job.is_alive()
    check_truth(out, table)


def test_server_stop_then_resume_on_a_restarted_server_at_another_port(client, cave_home, table, tiny_path, tmp_path):
    from crantseg_dask.dataset.generate import make_dataset
    from crantseg_dask.dataset.layout import PRESETS
    from crantseg_dask.server import serve_in_thread
    from crantseg_dask.server.state import Faults
    from crantseg_dask.testing.server import fast_spec

    out = tmp_path / "o.zarr"
    a = serve_in_thread(tiny_path, faults=Faults(latency_ms=150))
    errors = []

    def job():
        try:
            _run(table, out, fast_spec(a), partition_size=20, client=client)
        except (CrantsegError, OSError) as e:
            errors.append(e)

    t = threading.Thread(target=job)
    t.start()
    try:
        wait_done(out, 2)
    finally:
        a.stop()
        t.join(300)
    assert errors and not status(out)["complete"], "the job failed with the server gone"
    b = serve_in_thread(tiny_path)  # same data, a new port
    try:
        assert b.address != a.address
        s = _run(table, out, fast_spec(b), partition_size=20, client=client, resume=True)
        assert 0 < s["ran"] < s["partitions"]
        check_truth(out, table)
        other = make_dataset(PRESETS["tiny"].with_(seed=PRESETS["tiny"].seed + 1), tmp_path / "other")
        c = serve_in_thread(other)
        try:
            with pytest.raises(CrantsegError, match="the server address changed"):
                _run(table, out, fast_spec(c), partition_size=20, client=client, resume=True)
        finally:
            c.stop()
    finally:
        b.stop()
