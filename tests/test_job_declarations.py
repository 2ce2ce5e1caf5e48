"""Job operations are declared once; ``crantseg run``'s options, their validation and help come
from the declarations (issue 14, item 2)."""
from __future__ import annotations

import argparse
import dataclasses

import pandas as pd
import pytest

from crantseg_dask.errors import InvalidInputError
from crantseg_dask.jobs import run_job
from crantseg_dask.jobs.cli import add_operation_arguments, operation_arguments
from crantseg_dask.jobs.operations import OPERATIONS, Param


def _parser():
    p = argparse.ArgumentParser(prog="crantseg run")
    return p, add_operation_arguments(p)


def test_every_declared_parameter_is_an_option_of_its_operations():
    p, options = _parser()
    text = p.format_help()
    for op in OPERATIONS.values():
        for prm in op.params:
            assert prm.option in text
            assert op.name in options[prm.name][1]
    assert set(options) == {prm.name for op in OPERATIONS.values() for prm in op.params}


def test_one_line_in_a_declaration_adds_a_checked_documented_option(monkeypatch):
    snap = OPERATIONS["snap"]
    knob = Param("max_moves", int, 3, "how many moves at most")
    monkeypatch.setitem(OPERATIONS, "snap", dataclasses.replace(snap, params=snap.params + (knob,)))
    p, options = _parser()
    assert "--max-moves" in p.format_help() and "snap: how many moves at most (default 3)" in " ".join(
        p.format_help().split())
    assert operation_arguments(p.parse_args(["--max-moves", "5"]), "snap", options) == {"max_moves": 5}
    with pytest.raises(ValueError, match="--max-moves does not apply to update-ids"):
        operation_arguments(p.parse_args(["--max-moves", "5"]), "update-ids", options)
    with pytest.raises(SystemExit):
        p.parse_args(["--max-moves", "many"])  # the declared type
    assert OPERATIONS["snap"].arguments({})["max_moves"] == 3
    with pytest.raises(InvalidInputError, match="max_moves=2.5 must be an integer"):
        OPERATIONS["snap"].arguments({"max_moves": 2.5})


@pytest.mark.parametrize("op, bad", [("snap", {"search_radius": "far"}), ("snap", {"snap_zero": "yes"}),
                                     ("get-voxels", {"mip": 1.5}), ("update-ids", {"stop_layer": True}),
                                     ("locs-to-supervoxels", {"coordinates": 3}),
                                     ("snap", {"search_radius": float("nan")})])
def test_run_job_refuses_ill_typed_arguments_before_anything_is_created(tmp_path, op, bad):
    table = pd.DataFrame({"x": [1.0], "y": [2.0], "z": [3.0], "target_id": [1], "root_id": [1]})
    name, value = next(iter(bad.items()))
    with pytest.raises(InvalidInputError, match=f"{name}={value!r}"):
        run_job(op, table, tmp_path / "o.zarr", dataset="tiny", progress=False, **bad)
    assert not (tmp_path / "o.zarr").exists()


def test_parameters_shared_by_operations_are_declared_alike():
    seen = {}
    for op in OPERATIONS.values():
        for prm in op.params:
            assert (prm.type, prm.choices) == seen.setdefault(prm.name, (prm.type, prm.choices)), prm.name
            assert prm.default is None or prm.check(prm.default, op.name) == prm.default
