"""Issue 17, jobs: output paths, the per-output lock, checksums, verify, repair on resume, and one
clear line for every I/O and input-format error. Expected values come from the tiny dataset's
brute-force truth (``check_truth``) or from a clean run of the same job."""
import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr

from crantseg_dask.errors import InvalidIDError, InvalidInputError, JobStoreError
from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.lock import lock_path
from crantseg_dask.persist import read_output, status, verify

from .conftest import arrays, check_truth, chunk, cli

KW = dict(timestamp="mat", partition_size=200, progress=False)


def _run(client, table, out, tiny_path, **kw):
    return run_job("locs-to-segments", table["path"], out, dataset=str(tiny_path), client=client, **{**KW, **kw})


# -- finding 1: --output "" emptied the current directory ----------------------------------------
def test_empty_output_is_refused_and_the_current_directory_is_untouched(table, tiny_path, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = cli("run", "locs-to-segments", "--input", table["path"], "--output", "", "--dataset", tiny_path,
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "--output '' is empty" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", [".", "   "])
def test_current_directory_or_blank_output_is_refused(table, tiny_path, tmp_path, bad, monkeypatch):
    (tmp_path / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="--output"):
        run_job("locs-to-segments", table["path"], bad, dataset=str(tiny_path), force=True, **KW)
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def test_output_that_is_a_file_is_refused_before_anything(table, tiny_path, tmp_path):
    f = tmp_path / "out.zarr"
    f.write_text("a file")
    with pytest.raises(InvalidInputError, match="exists and is not a directory"):
        run_job("locs-to-segments", table["path"], f, dataset=str(tiny_path), force=True, **KW)
    assert f.read_text() == "a file" and not os.path.exists(lock_path(str(f)))


# -- finding 3: two writers on one output -------------------------------------------------------
def _hold_lock(out, pid, host=None):
    with open(lock_path(str(out)), "w") as f:
        json.dump({"host": host or socket.gethostname(), "pid": pid, "pid_start": None,
                   "started": "2026-01-01T00:00:00Z", "what": f"locs-to-segments -> {out}", "id": "x"}, f)


def test_second_writer_is_refused_naming_the_running_job_force_included(client, table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _hold_lock(out, holder.pid)
        for force in (False, True):
            with pytest.raises(JobStoreError, match=f"in use: job 'locs-to-segments -> {out}' \\(pid {holder.pid}"):
                _run(client, table, out, tiny_path, force=force)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    _run(client, table, out, tiny_path)  # its owner is gone: a stale lock is taken over
    check_truth(out, table)
    assert not os.path.exists(lock_path(str(out))), "the lock is released at the end"


def test_lock_of_another_host_is_never_taken_over(client, table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    _hold_lock(out, 1, host="some-other-node")
    with pytest.raises(JobStoreError, match=f"locked: .*some-other-node.*delete {lock_path(str(out))}"):
        _run(client, table, out, tiny_path, force=True)


def test_lock_is_held_while_partitions_run(client, table, tiny_path, tmp_path, monkeypatch):
    from crantseg_dask.jobs import runner

    out, seen = tmp_path / "o.zarr", []
    real = runner._submit

    def spy(*a, **k):
        with open(lock_path(str(out))) as f:
            seen.append(json.load(f))
        return real(*a, **k)

    monkeypatch.setattr(runner, "_submit", spy)
    _run(client, table, out, tiny_path)
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()


# -- finding 4: damage to a store is detected ----------------------------------------------------
@pytest.fixture
def finished(client, table, tiny_path, tmp_path):
    out = tmp_path / "o.zarr"
    _run(client, table, out, tiny_path)
    return out


def _flip(path, at=-2):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["delete", "flip", "truncate"])
def test_damaged_output_chunk_is_found_named_and_recomputed_on_resume(client, table, tiny_path, finished, damage):
    clean = arrays(finished)
    c = chunk(finished, "root_id", 2)
    {"delete": lambda: c.unlink(), "flip": lambda: _flip(c),
     "truncate": lambda: c.write_bytes(c.read_bytes()[:5])}[damage]()
    assert status(finished)["complete"]  # _done says so; only reading the chunks tells
    assert list(verify(finished)["outputs"]) == [2] and not verify(finished)["inputs"]
    with pytest.raises(JobStoreError, match=r"column 'root_id' of partition 2 is damaged"):
        read_output(finished)
    r = cli("status", finished, "--verify")
    assert r.returncode == 1 and "damaged output of partition 2" in r.stdout and str(c) in r.stdout, r.stdout
    s = _run(client, table, finished, tiny_path, resume=True)
    assert s["ran"] == 1 and s["damaged_outputs"] == [2]
    after = arrays(finished)
    for k in clean:
        np.testing.assert_array_equal(after[k], clean[k], err_msg=k)
    check_truth(finished, table)
    assert cli("status", finished, "--verify").returncode == 0


@pytest.mark.parametrize("name", ["x", "row"])
def test_damaged_input_chunk_is_rewritten_from_the_input_never_read_as_zeros(client, table, tiny_path, finished,
                                                                             name):
    chunk(finished, name, 1).unlink()
    assert verify(finished)["inputs"].keys() == {1}
    s = _run(client, table, finished, tiny_path, resume=True)
    assert s["damaged_inputs"] == [1] and s["ran"] == 1
    check_truth(finished, table)


def test_lost_input_chunk_of_an_unfinished_partition_fails_its_task_by_name(client, table, tiny_path, finished):
    g = zarr.open_group(str(finished), mode="r+")
    g["_done"][3] = 0
    chunk(finished, "x", 3).unlink()
    from crantseg_dask.jobs.runner import run_partition

    with pytest.raises(JobStoreError, match=r"x/c/3 is missing: input column 'x' of partition 3"):
        run_partition(str(finished), "locs-to-segments", 3, None)


def test_damaged_done_entry_counts_as_unfinished(client, table, tiny_path, finished):
    _flip(chunk(finished, "_done", 4))
    assert status(finished)["partitions_done"] == status(finished)["partitions"] - 1
    s = _run(client, table, finished, tiny_path, resume=True)
    assert s["ran"] == 1
    check_truth(finished, table)


def test_damaged_group_metadata_is_one_clear_line(finished):
    (finished / "zarr.json").write_text("{not json")
    r = cli("status", finished)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{finished}/zarr.json is damaged" in r.stderr


# -- finding 9: bare OS and format errors --------------------------------------------------------
@pytest.mark.parametrize("content, suffix, kind", [
    (b"PAR1garbage", ".parquet", "parquet"), (b"", ".csv", "CSV"), (b"\x28\xb5\x2f\xfd", ".parquet", "parquet")])
def test_unreadable_input_is_one_line_naming_the_file(tiny_path, tmp_path, content, suffix, kind):
    f = tmp_path / f"in{suffix}"
    f.write_bytes(content)
    r = cli("run", "locs-to-segments", "--input", f, "--output", tmp_path / "o.zarr", "--dataset", tiny_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"input '{f}' cannot be read as a {kind} table" in r.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory_is_one_line(table, tiny_path, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = cli("run", "locs-to-segments", "--input", table["path"], "--output", ro / "o.zarr", "--dataset", tiny_path)
    assert r.returncode == 2 and "Permission denied" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_write_failure_names_file_and_partition(finished, monkeypatch):
    from zarr.storage import LocalStore

    from crantseg_dask.persist import JobStore

    async def full(self, key, value, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalStore, "set", full)
    with pytest.raises(JobStoreError, match=r"o.zarr/supervoxel_id: writing partition 1 failed: No space left"):
        JobStore(str(finished)).write(1, {"supervoxel_id": np.zeros(200, np.uint64)})


# -- finding 2: float IDs -------------------------------------------------------------------------
def test_float_id_column_is_refused_naming_the_option(truth, tiny_path, tmp_path):
    sv = truth.supervoxels[:50]
    f = tmp_path / "sv.parquet"
    pd.DataFrame({"supervoxel_id": sv.astype(np.float64)}).to_parquet(f)
    r = cli("run", "supervoxels-to-roots", "--input", f, "--output", tmp_path / "o.zarr", "--dataset", tiny_path)
    assert r.returncode == 2 and "IDs stored as floats are refused" in r.stderr and "--allow-float-ids" in r.stderr
    r = cli("run", "supervoxels-to-roots", "--input", f, "--output", tmp_path / "o.zarr", "--dataset", tiny_path,
            "--allow-float-ids")  # the opt-in never accepts floats of 2**53 or more
    assert r.returncode == 2 and "2**53 or more cannot be exact" in r.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_impossible_layer_bits_are_refused_by_jobs(tiny_path, tmp_path):
    f = tmp_path / "sv.parquet"
    pd.DataFrame({"supervoxel_id": np.array([0, 2**64 - 1], dtype=np.uint64)}).to_parquet(f)
    with pytest.raises(InvalidIDError, match=r"\[1\] = 18446744073709551615: its layer bits say layer 255"):
        run_job("supervoxels-to-roots", f, tmp_path / "o.zarr", dataset=str(tiny_path), **KW)


# -- finding 7: unix seconds on the command line -----------------------------------------------------
def test_cli_timestamp_in_unix_seconds(client, truth, tiny_path, tmp_path):
    sv = truth.supervoxels[:40]
    f = tmp_path / "sv.parquet"
    pd.DataFrame({"supervoxel_id": sv}).to_parquet(f)
    t = truth.materialization()
    r = cli("run", "supervoxels-to-roots", "--input", f, "--output", tmp_path / "o.zarr", "--dataset", tiny_path,
            "--timestamp", str(int(t.timestamp())), "--no-progress", "--workers", "1")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read_output(tmp_path / "o.zarr")["root_id"], truth.root_of(sv, t))


def test_a_bit_flip_that_still_decodes_is_caught_by_the_checksum(tmp_path):
    """Random coordinates do not compress: zstd stores them raw, so one flipped bit decodes to a
    wrong value without complaint. Only the crc32c codec tells (mutation: drop it and this fails)."""
    from crantseg_dask.persist import JobStore

    x = np.random.default_rng(0).random(1000) * 1e5
    out = str(tmp_path / "o.zarr")
    JobStore.create(out, inputs={"row": np.arange(1000), "x": x}, outputs={"root_id": ("uint64", 0)},
                    partition_size=100, attrs={})
    f = chunk(out, "x", 2)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert list(verify(out)["inputs"]) == [2]
    assert "checksum" in verify(out)["inputs"][2][0]
