"""Tests for crantseg_dask._validate: the boundary validators."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from crantseg_dask._validate import (
    as_bbox,
    as_coordinates,
    as_ids,
    as_locations,
    as_timestamp,
    to_unix,
)
from crantseg_dask.errors import (
    InvalidIDError,
    InvalidInputError,
    InvalidLocationError,
    InvalidTimestampError,
)

UTC = timezone.utc
NEW_YEAR_2025 = datetime(2025, 1, 1, tzinfo=UTC)  # unix 1735689600
BIG_ID = 576460752303423488 + 12345  # above 2**53: not representable in float64
MAX_ID = 2**64 - 1


@pytest.fixture
def float_ids(monkeypatch):
    """Opt in to float IDs (whole values below 2**53): the tests below check that mode; the default
    refusal is tested in tests/test_reliability_ids.py."""
    monkeypatch.setenv("CRANTSEG_ALLOW_FLOAT_IDS", "1")


# --- as_coordinates -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("nm", "nm"), ("NM", "nm"), ("nanometer", "nm"), ("Nanometers", "nm"),
    ("voxel", "voxel"), ("VOXELS", "voxel"),
])
def test_as_coordinates_accepts_known_units(raw, expected):
    assert as_coordinates(raw) == expected


@pytest.mark.parametrize("raw", ["px", "voxl", "", None])
def test_as_coordinates_rejects_unknown_units(raw):
    with pytest.raises(InvalidInputError, match=re.escape(repr(raw))) as info:
        as_coordinates(raw)
    assert "'nm'" in str(info.value) and "'voxel'" in str(info.value)


# --- as_locations -------------------------------------------------------------------------------

def test_locations_list_of_rows():
    out = as_locations([[1, 2, 3], [4.5, -5, 6]])
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4.5, -5, 6]])  # negatives allowed


def test_locations_single_point_is_one_row():
    out = as_locations([331200, 100000, 4200])
    np.testing.assert_array_equal(out, [[331200, 100000, 4200]])
    assert as_locations((1, 2, 3)).shape == (1, 3)
    assert as_locations(np.array([1.0, 2.0, 3.0])).shape == (1, 3)


@pytest.mark.parametrize("empty", [[], (), np.empty((0, 3)), np.array([]),
                                   pd.DataFrame({"x": [], "y": [], "z": []})])
def test_locations_empty(empty):
    out = as_locations(empty)
    assert out.shape == (0, 3) and out.dtype == np.float64


@pytest.mark.parametrize("unit", ["voxel", "voxels", "Voxel"])
def test_locations_voxels_scaled_by_viewer_resolution(unit):
    out = as_locations([[1, 2, 3], [10, 10, 10]], coordinates=unit)
    np.testing.assert_array_equal(out, [[8, 16, 126], [80, 80, 420]])


def test_locations_custom_viewer_resolution():
    out = as_locations([[1, 1, 1]], coordinates="voxel", viewer_resolution=(4, 4, 40))
    np.testing.assert_array_equal(out, [[4, 4, 40]])


def test_locations_bad_viewer_resolution():
    with pytest.raises(InvalidInputError, match=re.escape("(4, 4)")):
        as_locations([[1, 1, 1]], coordinates="voxel", viewer_resolution=(4, 4))


def test_locations_unknown_unit():
    with pytest.raises(InvalidInputError, match="'pixels'"):
        as_locations([[1, 2, 3]], coordinates="pixels")


def test_locations_dataframe_columns_and_strings():
    df = pd.DataFrame({"id": [7, 8], "z": [3, 30], "x": ["1.5", "10"], "y": [2, 20],
                       "label": ["a", "b"]})
    out = as_locations(df)
    np.testing.assert_array_equal(out, [[1.5, 2, 3], [10, 20, 30]])


def test_locations_dataframe_not_modified():
    df = pd.DataFrame({"x": [1, 2], "y": [3, 4], "z": [5, 6], "other": ["p", "q"]})
    before = df.copy()
    out = as_locations(df, coordinates="voxel")
    out[:] = -1
    pd.testing.assert_frame_equal(df, before)


def test_locations_array_not_modified_and_copied():
    a = np.array([[1.0, 2.0, 3.0]])
    out = as_locations(a, coordinates="voxel")
    np.testing.assert_array_equal(out, [[8.0, 16.0, 126.0]])
    np.testing.assert_array_equal(a, [[1.0, 2.0, 3.0]])
    out2 = as_locations(a)
    assert not np.shares_memory(out2, a)


def test_locations_dataframe_missing_columns():
    df = pd.DataFrame({"x": [1], "Y": [2], "pos_z": [3]})
    with pytest.raises(InvalidLocationError, match=re.escape("[x, y, z] columns")) as info:
        as_locations(df)
    msg = str(info.value)
    assert "'Y'" in msg and "'pos_z'" in msg  # names the columns found
    assert isinstance(info.value, ValueError)


def test_locations_nan_names_first_row_and_count():
    locs = np.zeros((20, 3))
    locs[17] = [np.nan, 3, 4]
    locs[19] = [1, np.nan, 1]
    with pytest.raises(InvalidLocationError,
                       match=re.escape("locs[17] = (nan, 3.0, 4.0): coordinates must be finite")) \
            as info:
        as_locations(locs)
    assert "2 of 20 rows" in str(info.value)


def test_locations_inf_rejected_with_custom_name():
    with pytest.raises(InvalidLocationError, match=re.escape("points[1] = (1.0, inf, 2.0)")):
        as_locations([[0, 0, 0], [1, np.inf, 2]], name="points")


def test_locations_nan_in_dataframe_rejected():
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, -np.inf], "z": [0.0, 0.0]})
    with pytest.raises(InvalidLocationError, match=re.escape("locs[1] = (2.0, -inf, 0.0)")):
        as_locations(df)


@pytest.mark.parametrize("bad, shape", [
    (np.zeros((5, 2)), "(5, 2)"),
    (np.zeros((2, 3, 3)), "(2, 3, 3)"),
    ([1, 2], "(2,)"),
    ([1, 2, 3, 4], "(4,)"),
    (5.0, "()"),
])
def test_locations_wrong_shape(bad, shape):
    with pytest.raises(InvalidLocationError, match=re.escape(shape)) as info:
        as_locations(bad)
    assert "expected (N, 3)" in str(info.value)


def test_locations_ragged_rejected():
    with pytest.raises(InvalidLocationError, match="ragged"):
        as_locations([[1, 2, 3], [1, 2]])


def test_locations_non_numeric_names_row():
    with pytest.raises(InvalidLocationError, match=re.escape("locs[1] = (") + ".*'five'"):
        as_locations([[1, 2, 3], [4, "five", 6]])
    df = pd.DataFrame({"x": ["1", "abc"], "y": [0, 0], "z": [0, 0]})
    with pytest.raises(InvalidLocationError, match=re.escape("locs[1] = ('abc', 0, 0)")):
        as_locations(df)


# --- as_ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("x", [
    [BIG_ID, MAX_ID],
    (BIG_ID, MAX_ID),
    [str(BIG_ID), str(MAX_ID)],
    np.array([BIG_ID, MAX_ID], dtype=np.uint64),
    np.array([BIG_ID, MAX_ID], dtype=object),
    pd.Series([BIG_ID, MAX_ID], dtype="uint64"),
    pd.Index(np.array([BIG_ID, MAX_ID], dtype=np.uint64)),
    [BIG_ID, str(MAX_ID)],
])
def test_ids_uint64_edges_survive_exactly(x):
    out = as_ids(x)
    assert out.dtype == np.uint64 and out.shape == (2,)
    assert [int(v) for v in out] == [BIG_ID, MAX_ID]


def test_ids_scalars():
    for x in (MAX_ID, BIG_ID, np.uint64(MAX_ID), np.int64(BIG_ID), np.int32(7), str(BIG_ID)):
        out = as_ids(x)
        assert out.dtype == np.uint64 and out.shape == (1,)
        assert int(out[0]) == int(x)


def test_ids_single_numeric_string_is_one_id():
    out = as_ids("576460752681552812")
    assert out.tolist() == [576460752681552812]


@pytest.mark.usefixtures("float_ids")
def test_ids_collections():
    assert as_ids({3, 1, 2}).tolist() == [1, 2, 3]
    assert as_ids(pd.Series([5, 6])).tolist() == [5, 6]
    assert as_ids(np.array([1.0, 2.0, 0.0])).tolist() == [1, 2, 0]
    assert as_ids(np.array(["10", "11"])).tolist() == [10, 11]
    assert as_ids([1, np.int64(2), "3", 4.0, np.uint64(5)]).tolist() == [1, 2, 3, 4, 5]
    assert as_ids(range(3)).tolist() == [0, 1, 2]


@pytest.mark.parametrize("empty", [[], (), set(), np.array([], dtype=np.int64), np.array([]),
                                   pd.Series([], dtype=object)])
def test_ids_empty(empty):
    out = as_ids(empty)
    assert out.dtype == np.uint64 and out.shape == (0,)


def test_ids_returns_new_array_and_leaves_input_alone():
    a = np.array([1, 2], dtype=np.uint64)
    out = as_ids(a)
    out[0] = 99
    assert a.tolist() == [1, 2]
    obj = np.array([1, "2", None], dtype=object)
    as_ids(obj, nan="zero")
    assert obj.tolist() == [1, "2", None]


@pytest.mark.usefixtures("float_ids")
@pytest.mark.parametrize("x, shown", [
    ([1, -5], "ids[1] = -5"),
    (np.array([3, 2, -7]), "ids[2] = -7"),
    (-5, "ids = -5"),
    (np.int64(-3), "ids = -3"),
    (["1", "-12"], "ids[1] = '-12'"),
    ([1.0, -2.0], "ids[1] = -2.0"),
])
def test_ids_negative_rejected(x, shown):
    with pytest.raises(InvalidIDError, match=re.escape(shown)) as info:
        as_ids(x)
    assert "non-negative" in str(info.value)


@pytest.mark.usefixtures("float_ids")
@pytest.mark.parametrize("x, shown", [
    ([1.0, 1.5], "ids[1] = 1.5"),
    (np.array([2.0, 0.25]), "ids[1] = 0.25"),
    (1.5, "ids = 1.5"),
    (["7", "7.5"], "ids[1] = '7.5'"),
    (np.array([1.0, np.inf]), "ids[1] = inf"),
])
def test_ids_non_integer_rejected(x, shown):
    with pytest.raises(InvalidIDError, match=re.escape(shown)) as info:
        as_ids(x)
    assert "integer" in str(info.value)


@pytest.mark.parametrize("x, shown", [
    (["12", "abc"], "ids[1] = 'abc'"),
    ("abc", "ids = 'abc'"),
    ([True, 1], "ids[0] = True"),
    ([2**64], f"ids[0] = {2**64}"),
])
def test_ids_other_invalid_values(x, shown):
    with pytest.raises(InvalidIDError, match=re.escape(shown)):
        as_ids(x)


@pytest.mark.usefixtures("float_ids")
@pytest.mark.parametrize("x, shown", [
    ([1, None], "ids[1] = None"),
    (np.array([1.0, np.nan]), "ids[1] = nan"),
    (pd.Series([1, None], dtype="Int64"), "ids[1] = <NA>"),
    (None, "ids = None"),
])
def test_ids_missing_raise_by_default(x, shown):
    with pytest.raises(InvalidIDError, match=re.escape(shown)) as info:
        as_ids(x)
    assert "nan='zero'" in str(info.value)


@pytest.mark.usefixtures("float_ids")
def test_ids_missing_become_zero_when_asked():
    assert as_ids([1, None, np.nan, pd.NA, "4"], nan="zero").tolist() == [1, 0, 0, 0, 4]
    assert as_ids(np.array([np.nan, 3.0]), nan="zero").tolist() == [0, 3]
    assert as_ids(pd.Series([BIG_ID, None], dtype="UInt64"), nan="zero").tolist() == [BIG_ID, 0]


def test_ids_bad_nan_policy():
    with pytest.raises(InvalidInputError, match="'drop'"):
        as_ids([1], nan="drop")


def test_ids_two_dimensional_rejected():
    with pytest.raises(InvalidIDError, match=re.escape("(2, 2)")):
        as_ids(np.array([[1, 2], [3, 4]]))
    with pytest.raises(InvalidIDError, match=re.escape("(1, 2)")):
        as_ids([[1, 2]])


def test_ids_dataframe_rejected_not_read_as_column_names():
    with pytest.raises(InvalidIDError, match=re.escape("(2, 1)")):
        as_ids(pd.DataFrame({"123": [1, 2]}))


def test_ids_custom_name():
    with pytest.raises(InvalidIDError, match=re.escape("root_ids[0] = -1")):
        as_ids([-1], name="root_ids")


# --- as_timestamp / to_unix ---------------------------------------------------------------------

def test_timestamp_np_int32_is_seconds():
    ts = as_timestamp(np.int32(1735689600))
    assert ts == NEW_YEAR_2025 and ts.tzinfo is not None
    assert ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize("x", [1735689600, np.int64(1735689600), np.uint32(1735689600),
                               1735689600.0, np.float64(1735689600.9), 1735689600.999])
def test_timestamp_numbers_are_unix_seconds(x):
    assert as_timestamp(x) == NEW_YEAR_2025


def test_timestamp_iso_date_is_utc():
    ts = as_timestamp("2025-01-01")
    assert ts == NEW_YEAR_2025 and to_unix(ts) == 1735689600


@pytest.mark.parametrize("s", ["2025-01-01T00:00:00Z", "2025-01-01 00:00:00",
                               "2025-01-01T02:00:00+02:00", "2024-12-31T19:00:00-05:00",
                               " 2025-01-01T00:00:00.999999 "])
def test_timestamp_iso_strings(s):
    assert as_timestamp(s) == NEW_YEAR_2025


def test_timestamp_aware_datetime_converts_exactly():
    dt = datetime(2025, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    ts = as_timestamp(dt)
    assert ts == NEW_YEAR_2025 and ts.tzinfo == UTC and to_unix(ts) == 1735689600


def test_timestamp_sub_second_truncated():
    for x in (datetime(2025, 1, 1, 0, 0, 5, 999999, tzinfo=UTC), "2025-01-01T00:00:05.75Z",
              pd.Timestamp("2025-01-01 00:00:05.5"), np.datetime64("2025-01-01T00:00:05.900"),
              1735689605.75):
        ts = as_timestamp(x)
        assert ts == NEW_YEAR_2025 + timedelta(seconds=5) and ts.microsecond == 0, x


def test_timestamp_naive_is_utc_and_pandas_numpy_types():
    assert as_timestamp(datetime(2025, 1, 1)) == NEW_YEAR_2025
    assert as_timestamp(pd.Timestamp("2025-01-01")) == NEW_YEAR_2025
    assert as_timestamp(pd.Timestamp("2024-12-31 19:00", tz="US/Eastern")) == NEW_YEAR_2025
    assert as_timestamp(np.datetime64("2025-01-01")) == NEW_YEAR_2025
    assert as_timestamp(np.datetime64("2025-01-01T00:00:00.000000001")) == NEW_YEAR_2025


def test_timestamp_none_is_now():
    fixed = datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert as_timestamp(None, now=lambda: fixed) == NEW_YEAR_2025
    before = datetime.now(UTC).replace(microsecond=0)
    ts = as_timestamp(None)
    assert ts.tzinfo is not None and ts.microsecond == 0
    assert before <= ts <= datetime.now(UTC)


class FakeResolver:
    """Records the materialization versions asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, version):
        self.calls.append(version)
        return NEW_YEAR_2025 + timedelta(days=version or 0, microseconds=250)


def test_timestamp_mat_version_calls_resolver():
    resolve = FakeResolver()
    ts = as_timestamp("mat_3", resolve_mat=resolve)
    assert resolve.calls == [3]
    assert ts == NEW_YEAR_2025 + timedelta(days=3) and ts.microsecond == 0


@pytest.mark.parametrize("s", ["mat", "mat_latest", "MAT_LATEST"])
def test_timestamp_mat_latest_calls_resolver_with_none(s):
    resolve = FakeResolver()
    assert as_timestamp(s, resolve_mat=resolve) == NEW_YEAR_2025
    assert resolve.calls == [None]


def test_timestamp_mat_resolver_may_return_unix_seconds():
    assert as_timestamp("mat_0", resolve_mat=lambda v: 1735689600) == NEW_YEAR_2025


@pytest.mark.parametrize("s", ["mat_x", "material", "mat_", "mat_-1", "mat_3.5", "mat_latest_2"])
def test_timestamp_bad_mat_strings(s):
    resolve = FakeResolver()
    with pytest.raises(InvalidTimestampError,
                       match="Invalid materialization timestamp format.*" + re.escape(repr(s))):
        as_timestamp(s, resolve_mat=resolve)
    assert resolve.calls == []


def test_timestamp_mat_without_dataset():
    with pytest.raises(InvalidTimestampError, match="'mat_3'.*dataset"):
        as_timestamp("mat_3")


@pytest.mark.parametrize("s", ["garbage", "yesterday", "2025-13-01", "01/02/2025", ""])
def test_timestamp_unknown_strings(s):
    with pytest.raises(InvalidTimestampError, match=re.escape(repr(s)) + ".*ISO 8601"):
        as_timestamp(s)


@pytest.mark.parametrize("x, shown", [
    (float("nan"), "nan"), (float("inf"), "inf"), (np.float64("-inf"), "-inf"),
])
def test_timestamp_non_finite_rejected(x, shown):
    with pytest.raises(InvalidTimestampError, match=f"timestamp={shown} must be a finite"):
        as_timestamp(x)


@pytest.mark.parametrize("x, shown", [
    (1735689600000, "1735689600000"),
    (1735689600 * 10**9, "1735689600000000000"),
    (np.int64(1735689600000), "1735689600000"),
    (1.7e12, "1700000000000.0"),
])
def test_timestamp_milliseconds_and_nanoseconds_rejected(x, shown):
    with pytest.raises(InvalidTimestampError, match=f"timestamp={shown} .*Give seconds"):
        as_timestamp(x)


@pytest.mark.parametrize("x", [True, False, np.bool_(True), pd.NaT, np.datetime64("NaT"),
                               [1735689600], object()])
def test_timestamp_other_types_rejected(x):
    with pytest.raises(InvalidTimestampError, match="is not a timestamp"):
        as_timestamp(x)


def test_to_unix():
    assert to_unix(NEW_YEAR_2025) == 1735689600.0
    assert to_unix(datetime(2025, 1, 1)) == 1735689600.0  # naive = UTC
    assert to_unix(datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == 1735689600.0
    with pytest.raises(InvalidTimestampError, match="'2025'"):
        to_unix("2025")


# --- as_bbox ------------------------------------------------------------------------------------

def test_bbox_transposed_form():
    bbox = [[329200, 333200], [91376, 95376], [112712, 112912]]
    out = as_bbox(bbox)
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[329200, 91376, 112712], [333200, 95376, 112912]])


def test_bbox_row_form_and_copy():
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = as_bbox(a, coordinates="voxels")
    np.testing.assert_array_equal(out, [[8, 16, 126], [32, 40, 252]])
    np.testing.assert_array_equal(a, [[1, 2, 3], [4, 5, 6]])  # not modified
    out2 = as_bbox(a)
    assert not np.shares_memory(out2, a)
    np.testing.assert_array_equal(out2, a)


def test_bbox_zero_extent_allowed():
    np.testing.assert_array_equal(as_bbox([[1, 1], [2, 2], [3, 3]]), [[1, 2, 3], [1, 2, 3]])


@pytest.mark.parametrize("bad, shape", [
    (np.zeros((3, 3)), "(3, 3)"),
    (np.zeros((2, 2)), "(2, 2)"),
    ([1, 2, 3, 4, 5, 6], "(6,)"),
    (np.zeros((2, 3, 1)), "(2, 3, 1)"),
])
def test_bbox_wrong_shape(bad, shape):
    with pytest.raises(InvalidInputError,
                       match=re.escape(f"`bbox` must have shape (2, 3) or (3, 2), got {shape}")):
        as_bbox(bad)


@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (np.inf, "inf")])
def test_bbox_non_finite(value, shown):
    with pytest.raises(InvalidLocationError, match=f"bbox y max = {shown}"):
        as_bbox([[0, 10], [0, value], [0, 10]])


def test_bbox_min_above_max_names_axis():
    with pytest.raises(InvalidInputError, match=re.escape("x min 20.0 > x max 10.0")):
        as_bbox([[20, 10], [0, 5], [0, 5]])
    with pytest.raises(InvalidInputError, match=re.escape("z min 9.0 > z max 1.0")):
        as_bbox([[0, 0, 9], [1, 1, 1]])


def test_bbox_non_numeric():
    with pytest.raises(InvalidInputError, match=re.escape("bbox x max = 'big'")):
        as_bbox([[0, "big"], [0, 1], [0, 1]])


def test_bbox_unknown_unit():
    with pytest.raises(InvalidInputError, match="'px'"):
        as_bbox([[0, 1], [0, 1], [0, 1]], coordinates="px")


# --- the error contract -------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: as_coordinates("px"),
    lambda: as_locations([[np.nan, 0, 0]]),
    lambda: as_locations(np.zeros((4, 2))),
    lambda: as_locations(pd.DataFrame({"a": [1]})),
    lambda: as_ids([-1]),
    lambda: as_ids([1.5]),
    lambda: as_ids("abc"),
    lambda: as_ids([None]),
    lambda: as_ids([[1, 2], [3]]),
    lambda: as_locations([[1, 2, 3], [1, 2]]),
    lambda: as_locations([[1, "a", 3]]),
    lambda: as_timestamp("mat_3"),
    lambda: as_timestamp(10**13),
    lambda: as_timestamp(True),
    lambda: as_timestamp("mat_x"),
    lambda: as_timestamp("garbage"),
    lambda: as_timestamp(float("nan")),
    lambda: as_bbox(np.zeros((3, 3))),
    lambda: as_bbox([[0, np.nan], [0, 1], [0, 1]]),
])
def test_errors_are_value_errors(call):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, InvalidInputError)
    # raised by the validator itself, not chained onto a numpy/pandas exception
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
