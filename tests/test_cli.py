import json
import os
import subprocess
import sys

import numpy as np

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
