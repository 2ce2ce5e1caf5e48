import json
import os
import subprocess
import sys

from datetime import datetime

import numpy as np
import pandas as pd

from crantseg_dask.cli import main
from crantseg_dask.dataset.layout import read_params


def test_usage_and_unknown_commands(capsys):
    assert main([]) == 0
    assert "make-dataset" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_make_dataset_any_size_and_seed(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["make-dataset", "--out", str(out), "--seed", "3", "--size", "96,80,40", "--edits", "12"]) == 0
    params = read_params(out)
    assert params.size == (96, 80, 40) and params.seed == 3 and params.n_edits == 12
    info = json.loads((out / "segmentation" / "info").read_text())
    assert info["scales"][0]["size"] == [96, 80, 40]
    assert [s["resolution"] for s in info["scales"]] == [[16, 16, 42], [32, 32, 42], [64, 64, 42]]
    assert {s["encoding"] for s in info["scales"]} == {"compressed_segmentation"}
    assert "written to" in capsys.readouterr().out
    assert params.dense, "dense is the default"
    assert main(["make-dataset", "--out", str(tmp_path / "sparse"), "--size", "96,80,40", "--sparse"]) == 0
    assert not read_params(tmp_path / "sparse").dense


def test_make_dataset_rejects_a_bad_size(tmp_path, capsys):
    try:
        main(["make-dataset", "--out", str(tmp_path / "x"), "--size", "1,2"])
    except SystemExit as e:
        assert e.code == 2
    assert "expected three positive integers" in capsys.readouterr().err


def test_demo_runs_end_to_end_on_the_tiny_preset(tmp_path):
    env = {**os.environ, "CRANTSEG_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "crantseg_dask.cli", "demo", "--preset", "tiny", "--rows", "5000",
                        "--out", str(tmp_path / "demo")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "5000 rows in" in r.stdout and "dashboard was http://127.0.0.1:" in r.stdout
    from crantseg_dask.persist import read_output

    out = read_output(str(tmp_path / "demo" / "synapses.zarr"))
    assert len(out) == 5000 and np.all(np.diff(out.index) == 1)
    # real results: every row against the snapping oracle over the generated dataset (snap_zero=True,
    # radius 160 nm, roots at the job's own timestamp)
    import zarr

    from crantseg_dask.dataset.truth import Truth
    from crantseg_dask.dataset.truth_snap import SnapTruth

    (path,) = [p for p in (tmp_path / "data").glob("tiny-*") if p.is_dir()]
    oracle = SnapTruth(Truth(path))
    table = pd.read_parquet(tmp_path / "demo" / "synapses.parquet")
    ts = datetime.fromisoformat(zarr.open_group(str(tmp_path / "demo" / "synapses.zarr"), mode="r").attrs["crantseg"]["timestamp"])
    assert all(oracle.truth.is_latest(t, ts) for t in np.unique(table["target_id"]).tolist())
    # the exhaustive oracle costs ~60 ms a row on the dense world: a random sample of 300 rows
    pick = np.sort(np.random.default_rng(0).choice(len(table), 300, replace=False))
    table, out = table.iloc[pick], out.iloc[pick]
    xyz, dist, status = oracle.table(table[["x", "y", "z"]].to_numpy(), table["target_id"].to_numpy(), True, 160.0)
    np.testing.assert_array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    np.testing.assert_allclose(out["distance_nm"].to_numpy(), dist, rtol=1e-12, equal_nan=True)
    assert out["status"].astype(str).tolist() == status.tolist()
    sv, root = oracle.lookup(xyz, ts)
    np.testing.assert_array_equal(out["supervoxel_id"].to_numpy(), sv)
    np.testing.assert_array_equal(out["root_id"].to_numpy(), root)
    assert (status == "snapped").sum() > 30
    full = read_output(str(tmp_path / "demo" / "synapses.zarr"))  # the printed share, over every row
    on = (full["root_id"].to_numpy() == pd.read_parquet(tmp_path / "demo" / "synapses.parquet")["target_id"].to_numpy()).mean()
    assert f"rows whose root is their target neuron: {on:.1%}" in r.stdout


def test_run_rejects_options_the_operation_ignores(tmp_path, capsys):
    import pytest

    base = ["run", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o.zarr")]
    for op, option in [("get-voxels", ["--timestamp", "mat"]), ("locs-to-supervoxels", ["--timestamp", "mat"]),
                       ("locs-to-segments", ["--mip", "1"]), ("update-ids", ["--coordinates", "voxel"]),
                       ("locs-to-segments", ["--search-radius", "50"]), ("snap", ["--thin"])]:
        with pytest.raises(SystemExit) as e:
            main(base[:1] + [op] + base[1:] + option)
        assert e.value.code == 2
        assert f"{option[0]} does not apply to {op}" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_make_dataset_overwrite_refuses_a_directory_that_is_no_dataset(tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["make-dataset", "--out", str(out), "--size", "64,64,32", "--overwrite"]) == 2
    assert "not a dataset directory" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
