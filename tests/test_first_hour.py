"""Issue 13: the first hour of a new user, run as a user runs it (the ``crantseg`` command).

No silent zeros (points outside the volume are reported), no hangs (impossible arguments and
unreachable schedulers are refused in one line), no half-written jobs (a refused run leaves no
new file), jobs keep the user's table, and the CLI can do what the Python API does. Expected
values come from the tiny dataset's ground truth (``Truth``, ``SnapTruth``), never from the engine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import zarr

from crantseg_dask import locs_to_segments, locs_to_supervoxels
from crantseg_dask.cli import main
from crantseg_dask.dataset.truth_snap import SnapTruth
from crantseg_dask.errors import InvalidInputError
from crantseg_dask.jobs import run_job
from crantseg_dask.ops.snapping import STATUS
from crantseg_dask.persist import read_output

VIEWER = np.array([8.0, 8.0, 42.0])


def _crantseg(*args, cwd, env=None, timeout=180, **kw):
    """The console command as a user types it (this checkout's package first on the path)."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "crantseg_dask.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _extent(truth) -> str:
    off, size = truth.bounds(0)
    lo, hi = off * truth.resolution(0), (off + size) * truth.resolution(0)
    return ", ".join(f"{a} {lo[k]:g}..{hi[k]:g}" for k, a in enumerate("xyz")) + " nm"


@pytest.fixture(scope="module")
def client():
    """A user's own plain-TCP cluster (``--scheduler tcp://...``)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, protocol="tcp") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def table(truth):
    """60 synapse-like rows near supervoxel anchors plus 2 outside the volume, with the user's own
    columns: ``post_pt_root_id`` (the root under the row at the latest materialization, or the
    largest root on background), ``synapse_id``, a text ``note`` and a categorical ``kind``."""
    rng = np.random.default_rng(13)
    res = truth.resolution(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 60, replace=False)]
    locs = (anchors + 0.5) * res + rng.normal(0, 60, anchors.shape) * [1, 1, 0.4]
    off, size = truth.bounds(0)
    locs = np.concatenate([locs, [(off - 40) * res, (off + size + 3) * res]])
    mat = truth.materialization()
    own = truth.root_of(truth.supervoxel_at_nm(locs), mat)
    target = np.where(own != 0, own, int(truth.largest_roots(1, mat)[0])).astype(np.uint64)
    n = len(locs)
    return pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "post_pt_root_id": target,
                         "synapse_id": np.arange(1000, 1000 + n, dtype=np.int64),
                         "note": [f"syn {i}" for i in range(n)],
                         "kind": pd.Categorical(rng.choice(["pre", "post"], n), categories=["pre", "post"])})


@pytest.fixture(scope="module")
def table_file(table, tmp_path_factory):
    path = tmp_path_factory.mktemp("first-hour") / "synapses.parquet"
    table.to_parquet(path)
    return path


# -- 4: --version, help, bare crantseg ------------------------------------------------------------
def test_version_help_and_bare_command(tmp_path):
    from importlib.metadata import version

    r = _crantseg("--version", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, f"crantseg {version('crantseg_dask')}\n")
    for args in ([], ["help"], ["--help"]):
        r = _crantseg(*args, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("usage: crantseg [-v] COMMAND [ARGS]"), args
        for name in ("demo", "run", "status", "serve", "make-dataset", "help"):
            assert f"\n  {name:<13} " in r.stdout, (args, name)
        assert "--version" in r.stdout
    assert os.listdir(tmp_path) == []


# -- 1: every argument checked before anything is created; nothing left behind -----------------
@pytest.mark.parametrize("op, args, message", [
    ("locs-to-supervoxels", ["--workers", "0"],
     "crantseg run: error: argument --workers: 0 is not allowed: expected an integer >= 1"),
    ("locs-to-supervoxels", ["--partition-size", "0"],
     "crantseg run: error: argument --partition-size: 0 is not allowed: expected an integer >= 1"),
    ("locs-to-supervoxels", ["--partition-size", "-5"],
     "crantseg run: error: argument --partition-size: -5 is not allowed: expected an integer >= 1"),
    ("locs-to-supervoxels", ["--mip", "-1"],
     "crantseg run: mip (--mip)=-1: expected an integer >= 0"),
    ("locs-to-supervoxels", ["--mip", "9"], "crantseg run: mip=9 is not available; this volume has mips 0..2"),
    ("snap", ["--id-column", "post_pt_root_id", "--search-radius", "-5"],
     "crantseg run: search_radius=-5.0 (--search-radius): expected a number of nm >= 0"),
    ("locs-to-supervoxels", ["--scheduler", "MISSING.json"],
     "crantseg run: --scheduler MISSING.json: no such scheduler file (a running `dask scheduler "
     "--scheduler-file FILE` writes it)"),
    ("locs-to-supervoxels", ["--scheduler", "localhost"],
     "crantseg run: --scheduler 'localhost' is neither tcp://HOST:PORT nor a scheduler file (.json)"),
    ("locs-to-segments", ["--snap-zero"],
     "crantseg run: error: --snap-zero does not apply to locs-to-segments (only to snap)"),
    ("locs-to-supervoxels", ["--server", "https://example.org"],
     "crantseg run: error: give either --dataset or --server with --datastack, not both"),
])
def test_refused_arguments_leave_nothing_behind(op, args, message, table_file, tiny_path, tmp_path, monkeypatch,
                                                capsys):
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    try:
        code = main(["run", op, "--input", str(table_file), "--output", "out.zarr", "--dataset", str(tiny_path),
                     *args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert sorted(os.listdir(tmp_path)) == before  # no output, no lock file


def test_python_api_refuses_the_same_values(table, tiny_path, tmp_path):
    for kw, text in (({"partition_size": 0}, "partition_size (--partition-size)=0: expected an integer >= 1"),
                     ({"n_workers": 0}, "n_workers (--workers)=0: expected an integer >= 1"),
                     ({"mip": -1}, "mip (--mip)=-1: expected an integer >= 0"),
                     ({"mip": 9}, "mip=9 is not available; this volume has mips 0..2")):
        with pytest.raises(InvalidInputError) as e:
            run_job("locs-to-supervoxels", table, tmp_path / "o.zarr", dataset=str(tiny_path), **kw)
        assert str(e.value) == text
    with pytest.raises(InvalidInputError, match=r"search_radius=-5.0 \(--search-radius\): expected a number of nm >= 0"):
        run_job("snap", table, tmp_path / "o.zarr", dataset=str(tiny_path), id_column="post_pt_root_id",
                search_radius=-5.0)
    assert os.listdir(tmp_path) == []


def test_unreachable_scheduler_and_unknown_host_fail_in_one_line(table_file, tiny_path, tmp_path):
    """A scheduler nobody answers at fails within --connect-timeout; a CAVE server whose host does
    not resolve fails without 30 s of retries; neither leaves an output or prints a traceback."""
    run = ["run", "locs-to-segments", "--input", str(table_file), "--output", "out.zarr"]
    r = _crantseg(*run, "--dataset", str(tiny_path), "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "2",
                  cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "crantseg run: cannot connect to tcp://127.0.0.1:1 within 2 s (OSError); is the scheduler running? "
        "(start one with `dask scheduler`)")
    assert os.listdir(tmp_path) == []
    r = _crantseg(*run, "--server", "https://crantseg-test.invalid", "--datastack", "kronauer_ant", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "crantseg run: CAVEclient construction: cannot resolve the host name 'crantseg-test.invalid' "
        "(no network, or a misspelt server address)")
    assert os.listdir(tmp_path) == []


def test_serve_lists_the_presets_for_an_unknown_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--dataset", "tinyy"]) == 2
    assert capsys.readouterr().err.strip() == ("crantseg serve: --dataset 'tinyy' is neither a preset (demo, tiny) "
                                               "nor an existing directory (one written by `crantseg make-dataset`)")


def test_nan_option_and_its_advice(tiny_path, tmp_path, monkeypatch, capsys):
    """--nan raise refuses a missing supervoxel ID, and the advice names the CLI option; where 0 is
    no answer (get-voxels) the advice does not suggest --nan."""
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"supervoxel_id": pd.array([72198469099454522, None], dtype="UInt64")}).to_parquet("sv.parquet")
    pd.DataFrame({"root_id": pd.array([576460752373423809, None], dtype="UInt64")}).to_parquet("roots.parquet")
    assert main(["run", "supervoxels-to-roots", "--input", "sv.parquet", "--output", "o.zarr", "--dataset",
                 str(tiny_path), "--nan", "raise"]) == 2
    assert capsys.readouterr().err.strip() == (
        "crantseg run: input['supervoxel_id'][1] = <NA>: missing ID; drop it, or add --nan zero to map missing IDs to 0")
    assert main(["run", "get-voxels", "--input", "roots.parquet", "--output", "o.zarr", "--dataset", str(tiny_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "crantseg run: input['root_id'][1] = <NA>: missing ID; drop it (every row needs an ID)")
    assert sorted(os.listdir(tmp_path)) == ["roots.parquet", "sv.parquet"]


# -- 2: points outside the volume are reported ----------------------------------------------------
def test_points_outside_the_volume_warn_with_count_extent_and_unit(truth, tiny_path):
    from crantseg_dask.ops.extent import OutsideVolumeWarning

    res = truth.resolution(0)
    inside = (truth.sv_anchor[:3] + 0.5) * res
    locs = np.concatenate([inside, [[1e9, 1e9, 1e9], [-500, -500, -500]]])
    with pytest.warns(OutsideVolumeWarning) as w:
        sv = locs_to_supervoxels(locs, dataset=str(tiny_path), progress=False)
    np.testing.assert_array_equal(sv, truth.supervoxel_at_nm(locs))
    assert sv[3:].tolist() == [0, 0]
    (msg,) = [str(x.message) for x in w]
    assert msg.startswith("2 of 5 locations lie outside the volume")
    assert f"the volume spans {_extent(truth)}; they give ID 0, which is not background" in msg
    assert "coordinates=" not in msg  # 1e9 is outside in either unit
    # viewer-voxel coordinates passed as nm: the warning suggests the other unit
    voxels = (truth.sv_anchor[:20] + 0.5) * res / VIEWER
    with pytest.warns(OutsideVolumeWarning, match=r"^20 of 20 locations lie outside .* most of them would be inside "
                      r"as voxel \(8 x 8 x 42 nm\) coordinates: pass coordinates='voxel' \(--coordinates voxel\)$"):
        locs_to_segments(voxels, timestamp="mat", dataset=str(tiny_path), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right unit: no warning at all
        got = locs_to_segments(voxels, timestamp="mat", coordinates="voxel", dataset=str(tiny_path), progress=False)
    np.testing.assert_array_equal(got, truth.root_of(truth.supervoxel_at_nm(voxels * VIEWER),
                                                     truth.materialization()).astype(np.int64))


# -- 3 and 4: columns carried, ID column kept, status names, --snap-zero, a job's output as input -----
def test_job_keeps_the_table_reports_status_names_and_chains(client, truth, table, table_file, tiny_path, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sched = ["--scheduler", client.scheduler.address, "--no-progress", "--dataset", str(tiny_path)]
    assert main(["run", "snap", "--input", str(table_file), "--output", "snap.zarr", "--id-column", "post_pt_root_id",
                 "--snap-zero", "--timestamp", "mat", "--partition-size", "25", *sched]) == 0
    out = read_output("snap.zarr")
    assert list(out.columns[:7]) == list(table.columns)  # the user's columns first, names unchanged
    pd.testing.assert_frame_equal(out[list(table.columns)].reset_index(drop=True), table)  # values and dtypes
    assert "target_id" not in out.columns
    locs, targets = table[["x", "y", "z"]].to_numpy(), table["post_pt_root_id"].to_numpy()
    oracle = SnapTruth(truth)
    xyz, _, status = oracle.table(locs, targets, snap_zero=True)
    assert isinstance(out["status"].dtype, pd.CategoricalDtype) and list(out["status"].cat.categories) == list(STATUS)
    assert out["status"].astype(str).tolist() == status.tolist()
    _, _, without = oracle.table(locs, targets, snap_zero=False)
    assert (without == "background_skipped").any() and not (status == "background_skipped").any()  # --snap-zero used
    np.testing.assert_array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    import xarray as xr

    ds = xr.open_zarr("snap.zarr", consolidated=False)
    by_row = dict(zip(ds["row"].values.tolist(), ds["status"].values.tolist()))
    assert [by_row[i] for i in range(len(table))] == status.tolist()  # names in xarray too
    capsys.readouterr()
    assert main(["status", "snap.zarr", "--verify"]) == 0
    assert "verified: every chunk of 3 partitions" in capsys.readouterr().out
    # the finished job's output as the next job's input: outputs that share a name keep the input's as input_<name>
    assert main(["run", "locs-to-segments", "--input", "snap.zarr", "--output", "roots.zarr", "--timestamp", "mat",
                 *sched]) == 0
    nxt = read_output("roots.zarr")
    assert list(nxt.columns[:7]) == list(table.columns)
    for name in ("supervoxel_id", "root_id", "status"):
        got = nxt[f"input_{name}" if name != "status" else name].reset_index(drop=True)
        pd.testing.assert_series_equal(got, out[name].reset_index(drop=True), check_names=False)
    sv = truth.supervoxel_at_nm(locs)
    np.testing.assert_array_equal(nxt["root_id"].to_numpy(), truth.root_of(sv, truth.materialization()))
    off, size = truth.bounds(0)
    vox = np.floor(locs / truth.resolution(0))
    inside = np.all((vox >= off) & (vox < off + size), axis=1)
    assert nxt["in_volume"].tolist() == inside.tolist() and not inside[-2:].any()
    assert (f"warning: {(~inside).sum()} of 62 rows lie outside the volume (x, y, z in nm: first row "
            f"{np.argmin(inside)} at") in capsys.readouterr().err


# -- 5: the resume refusal names each difference -------------------------------------------------
def test_resume_refusal_names_old_and_new_values(client, table, tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    table.to_parquet("t.parquet")
    sched = ["--scheduler", client.scheduler.address, "--no-progress", "--dataset", str(tiny_path)]
    run = ["run", "snap", "--input", "t.parquet", "--output", "o.zarr", "--id-column", "post_pt_root_id"]
    assert main([*run, "--timestamp", "mat", "--search-radius", "100", *sched]) == 0
    stored = zarr.open_group("o.zarr", mode="r").attrs["crantseg"]["timestamp"]
    changed = table.assign(note=table["note"].str.upper())
    changed.to_parquet("t.parquet")
    capsys.readouterr()
    assert main([*run, "--timestamp", "mat_1", "--search-radius", "120", "--resume", *sched]) == 2
    from crantseg_dask.sources.resolve import resolve_timestamp
    from crantseg_dask.sources import open_source
    from crantseg_dask.sources.resolve import resolve_dataset

    asked = resolve_timestamp("mat_1", open_source(resolve_dataset(str(tiny_path)))).isoformat()
    assert capsys.readouterr().err.strip() == (
        "crantseg run: o.zarr holds a job with another input, operation, timestamp, arguments, dataset or store "
        "format than the one asked for; differs (stored -> asked for): input (the values of column note differ); "
        f"argument search_radius (100.0 -> 120.0); timestamp ({stored} -> {asked}). Rerun with the stored values "
        "to finish it, or add --force to start it again from scratch")
    table.iloc[:50].to_parquet("t.parquet")
    assert main([*run, "--timestamp", "mat", "--search-radius", "100", "--resume", *sched]) == 2
    assert "differs (stored -> asked for): input (62 rows -> 50 rows). Rerun" in capsys.readouterr().err


# -- 5: Ctrl-C, then --resume; and no Dask INFO logs -------------------------------------------------
def test_ctrl_c_prints_one_line_and_resume_finishes_the_job(client, truth, table, tiny_path, tmp_path):
    off, size = truth.bounds(0)
    vox = np.floor(table[["x", "y", "z"]].to_numpy() / truth.resolution(0))
    inside = table[np.all((vox >= off) & (vox < off + size), axis=1)]  # no outside-volume warning in stderr
    big = pd.concat([inside] * 8, ignore_index=True)
    n = -(-len(big) // 8)  # partitions of 8 rows
    big.to_parquet(tmp_path / "t.parquet")
    args = ["run", "locs-to-segments", "--input", "t.parquet", "--output", "o.zarr", "--dataset", str(tiny_path),
            "--timestamp", "mat", "--partition-size", "8", "--workers", "1", "--no-progress"]
    p = subprocess.Popen([sys.executable, "-m", "crantseg_dask.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if np.asarray(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["_done"][:]).any():
                    break
            except Exception:  # noqa: BLE001 - not created yet
                pass
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    done = int(np.asarray(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["_done"][:]).sum())
    assert p.returncode == 130 and 0 < done < n
    resume = ("crantseg run locs-to-segments --input t.parquet --output o.zarr --dataset " + str(tiny_path) +
              " --timestamp mat --partition-size 8 --workers 1 --no-progress --resume")
    assert err.strip().splitlines() == [
        f"crantseg run: interrupted; {done} of {n} partitions done; finish the job with: {resume}"]
    # the printed command, as printed, on the default cluster: it finishes the job, without Dask's logs
    r = _crantseg(*resume.split()[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.strip() == "", r.stderr[-2000:]  # no INFO logs, no CommClosedError
    assert json.loads(r.stdout)["ran"] == n - done
    whole = run_job("locs-to-segments", big, tmp_path / "whole.zarr", dataset=str(tiny_path), timestamp="mat",
                    client=client, progress=False)
    assert whole["status"]["complete"]
    pd.testing.assert_frame_equal(read_output(tmp_path / "o.zarr"), read_output(tmp_path / "whole.zarr"))


# -- 6: the demo: progress while the dataset is generated, output where the README says --------------
def test_demo_shows_generation_progress_and_writes_to_its_documented_place(tmp_path):
    r = _crantseg("demo", "--preset", "tiny", "--rows", "200", "--workers", "1", "--partition-size", "100",
                  cwd=tmp_path, env={"CRANTSEG_DATA_DIR": str(tmp_path / "data")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "  slab 1/" in r.stdout  # a line per slab while the dataset is generated
    assert (tmp_path / "crantseg-demo" / "synapses.zarr" / "zarr.json").is_file()  # ./crantseg-demo, as documented
    assert "INFO" not in r.stderr and "Receive client connection" not in r.stderr
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    assert "`./crantseg-demo/`" in readme and "`--out DIR` to move it" in readme
    shutil.rmtree(tmp_path / "data")


# -- 4: any CAVE deployment from the CLI (token from a file, never on the command line) --------------
def test_run_names_a_cave_deployment_with_a_token_file(client, cave_server, truth, table, table_file, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "token").write_text(cave_server.token + "\n")
    assert main(["run", "locs-to-supervoxels", "--input", str(table_file), "--output", "o.zarr", "--server",
                 cave_server.address, "--datastack", cave_server.datastack, "--token-file", "token",
                 "--scheduler", client.scheduler.address, "--no-progress"]) == 0
    out = read_output("o.zarr")
    np.testing.assert_array_equal(out["supervoxel_id"].to_numpy(), truth.supervoxel_at_nm(table[["x", "y", "z"]]))
    assert cave_server.token not in (tmp_path / "o.zarr" / "zarr.json").read_text()
    (tmp_path / "bad").write_text("not-the-token")
    assert main(["run", "locs-to-supervoxels", "--input", str(table_file), "--output", "o2.zarr", "--server",
                 cave_server.address, "--datastack", cave_server.datastack, "--token-file", "bad",
                 "--scheduler", client.scheduler.address, "--no-progress"]) == 2
    assert not (tmp_path / "o2.zarr").exists()


def test_readme_stands_alone_and_the_notebooks_extra_has_a_front_end(truth):
    import tomllib

    root = os.path.join(os.path.dirname(__file__), "..")
    readme = open(os.path.join(root, "README.md")).read()
    for outside in ("../", "DESIGN.md", "reference §", "checklist "):
        assert outside not in readme, outside
    off, size = truth.bounds(0)
    lo, hi = off * truth.resolution(0), (off + size) * truth.resolution(0)
    extent = ", ".join(f"{a} {lo[k]:,.0f}–{hi[k]:,.0f}" for k, a in enumerate("xyz"))
    assert f"| `tiny` | {'×'.join(map(str, size))}, 12 neurons | {extent} |" in readme
    extras = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))["project"]["optional-dependencies"]
    assert any(d.startswith("notebook>=") for d in extras["notebooks"])


def test_demo_runs_its_job_through_a_cave_deployment(cave_server, truth, tiny_path, tmp_path, monkeypatch, capsys):
    """``crantseg demo --server --datastack --token-file``: the table comes from the preset, the job
    goes through the CAVE deployment (here the local server serving the same tiny dataset)."""
    import dask.config

    from crantseg_dask.dataset.layout import GENERATOR_VERSION, PRESETS

    data = tmp_path / "data"
    data.mkdir()
    (data / f"tiny-seed{PRESETS['tiny'].seed}-g{GENERATOR_VERSION}").symlink_to(tiny_path)
    (tmp_path / "token").write_text(cave_server.token)
    monkeypatch.chdir(tmp_path)
    with dask.config.set({"crantseg.data-dir": str(data)}):
        code = main(["demo", "--preset", "tiny", "--rows", "300", "--workers", "1", "--partition-size", "150",
                     "--server", cave_server.address, "--datastack", cave_server.datastack, "--token-file", "token"])
    assert code == 0
    assert f"job dataset: {cave_server.datastack} on {cave_server.address}" in capsys.readouterr().out
    out = read_output(tmp_path / "crantseg-demo" / "synapses.zarr")
    hit = out["status"].astype(str).isin(["on_target", "snapped"]).to_numpy()
    assert hit.mean() > 0.5
    xyz = out.loc[hit, ["snapped_x", "snapped_y", "snapped_z"]].to_numpy()
    sv = truth.supervoxel_at_nm(xyz)
    np.testing.assert_array_equal(out["supervoxel_id"].to_numpy()[hit], sv)
    np.testing.assert_array_equal(out["root_id"].to_numpy()[hit], truth.root_of(sv, datetime.now(timezone.utc)))
    with pytest.raises(SystemExit):  # half a deployment is refused before anything is written
        main(["demo", "--preset", "tiny", "--server", cave_server.address, "--out", "refused"])
    assert not (tmp_path / "refused").exists()
