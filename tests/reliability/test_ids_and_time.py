"""Issue 17, IDs and time at the Python API: float IDs need the opt-in, impossible layer bits are
refused, every ID function keeps length and order, timestamps outside the data are refused."""
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from crantseg_dask import supervoxels_to_roots, update_ids
from crantseg_dask._validate import as_ids
from crantseg_dask.errors import InvalidIDError, InvalidTimestampError


def test_float_ids_are_refused_without_the_opt_in(local_spec, truth):
    root = int(truth.root_of(truth.supervoxels[:1], truth.materialization())[0])
    with pytest.raises(InvalidIDError, match="IDs stored as floats are refused.*allow-float-ids"):
        update_ids(pd.Series([float(root)]), dataset=local_spec, progress=False)
    with pytest.raises(InvalidIDError, match="floats are refused"):
        supervoxels_to_roots(np.array([float(truth.supervoxels[0])]), dataset=local_spec, progress=False)


def test_opt_in_accepts_only_exact_floats(monkeypatch):
    monkeypatch.setenv("CRANTSEG_ALLOW_FLOAT_IDS", "1")
    assert as_ids(pd.Series([3.0, np.nan]), nan="zero").tolist() == [3, 0]
    assert as_ids([float(2**53 - 1)]).tolist() == [2**53 - 1]
    with pytest.raises(InvalidIDError, match="2\\*\\*53 or more cannot be exact"):
        as_ids([float(2**53)])


@pytest.mark.parametrize("bad", [2**64 - 1, 1, 0xFF << 56])
def test_impossible_layer_bits_are_refused(local_spec, bad):
    with pytest.raises(InvalidIDError, match=f"ids\\[1\\] = {bad}: its layer bits"):
        supervoxels_to_roots([0, bad], dataset=local_spec, progress=False)
    with pytest.raises(InvalidIDError, match=f"x\\[0\\] = {bad}"):
        update_ids([bad], dataset=local_spec, progress=False)


def test_update_ids_keeps_length_and_order_zero_in_zero_out(local_spec, truth):
    """Roots: R current at now, OLD a root that an edit replaced (truth's recorded edit log)."""
    now = datetime.now(timezone.utc)
    sv = truth.supervoxels
    current = truth.root_of(sv, now)
    at_ingest = truth.root_of(sv, truth.ingest_ms / 1000 + 1)
    old_rows = np.flatnonzero(at_ingest != current)
    assert old_rows.size, "the tiny dataset has edits"
    R, OLD = int(current[0]), int(at_ingest[old_rows[0]])
    out = update_ids([R, 0, OLD], dataset=local_spec, progress=False)
    assert len(out) == 3
    assert out["old_id"].tolist() == [R, 0, OLD]
    assert out["new_id"].iloc[0] == R and out["confidence"].iloc[0] == 1.0
    assert out["new_id"].iloc[1] == 0 and out["confidence"].iloc[1] == 0.0 and not out["changed"].iloc[1]
    assert out["changed"].iloc[2]
    assert len(update_ids([0, 0], dataset=local_spec, progress=False)) == 2


def test_timestamps_before_the_data_or_in_the_future_are_refused(local_spec, truth):
    ingest = datetime.fromtimestamp(truth.ingest_ms / 1000, tz=timezone.utc)
    sv = truth.supervoxels[:3]
    want = f"before the dataset's first data; valid timestamps are {ingest.replace(microsecond=0).isoformat()}"
    with pytest.raises(InvalidTimestampError, match=re.escape(want)):
        supervoxels_to_roots(sv, timestamp=ingest - timedelta(days=1), dataset=local_spec, progress=False)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    with pytest.raises(InvalidTimestampError, match="in the future; valid timestamps are .* to now"):
        supervoxels_to_roots(sv, timestamp=future, dataset=local_spec, progress=False)
    got = supervoxels_to_roots(sv, timestamp=ingest + timedelta(seconds=1), dataset=local_spec, progress=False)
    np.testing.assert_array_equal(got, truth.root_of(sv, ingest + timedelta(seconds=1)))
