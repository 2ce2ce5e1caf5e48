"""Validation of user input at the public boundary; kernels downstream trust its output.

Errors name the parameter, the bad value (with its row) and the fix; all are InvalidInputError,
hence ValueError. Replaces anchor-semantics.md sections 3.4, 4.6 and 4.12.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from .errors import InvalidIDError, InvalidInputError, InvalidLocationError, InvalidTimestampError

__all__ = ["as_bbox", "as_coordinates", "as_ids", "as_layer", "as_locations", "as_positive_int", "as_timestamp",
           "check_layers", "check_time_range", "floats_allowed", "to_unix"]

_UINT64_MAX = 2**64 - 1
_FLOAT_EXACT = 2**53  # float64 holds every integer below this exactly, and not all above
FLOAT_OPTION = ("allow_float_ids: crantseg's setting `crantseg.allow-float-ids` (dask.config.set("
                "{'crantseg.allow-float-ids': True}) or CRANTSEG_ALLOW_FLOAT_IDS=1), CLI --allow-float-ids")


def floats_allowed() -> bool:
    """Whether the user opted in to float IDs (only whole values below 2**53 are accepted then)."""
    import os

    env = os.environ.get("CRANTSEG_ALLOW_FLOAT_IDS")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    import dask.config

    return bool(dask.config.get("crantseg.allow-float-ids", default=False))


def _float_refusal(name: str, pos: int | None, v: Any) -> InvalidIDError:
    where = name if pos is None else f"{name}[{pos}]"
    if floats_allowed():
        return InvalidIDError(f"{where} = {_fmt(v)}: a float ID of 2**53 or more cannot be exact (the nearest "
                              "float64 may be another ID); read the column as integers (dtype uint64 or "
                              "'Int64' for missing values)")
    return InvalidIDError(f"{where} = {_fmt(v)}: IDs stored as floats are refused (float64 rounds IDs of "
                          "2**53 and more to other IDs); read the column as integers (dtype uint64, or "
                          "'Int64' for missing values), or if every ID is below 2**53 opt in with "
                          f"{FLOAT_OPTION}")
_MAX_UNIX_SECONDS = 1e11  # year ~5138: anything larger is almost surely ms or ns
_MAT = re.compile(r"mat(?:_latest|_(\d+))?", re.ASCII | re.IGNORECASE)


def _fmt(v: Any) -> str:
    """``repr`` with numpy scalars shown as plain Python values."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def as_coordinates(coordinates: str) -> str:
    """Normalise a coordinate unit name to "nm" or "voxel".

    Parameters
    ----------
    coordinates : str
        "nm", "nanometer", "nanometers", "voxel" or "voxels" (case-insensitive).
    """
    c = coordinates.strip().lower() if isinstance(coordinates, str) else None
    if c in ("nm", "nanometer", "nanometers"):
        return "nm"
    if c in ("voxel", "voxels"):
        return "voxel"
    raise InvalidInputError(f"coordinates={coordinates!r} is not a known unit; use 'nm' "
                            "(or 'nanometer', 'nanometers') or 'voxel' (or 'voxels')")


def _resolution(viewer_resolution: Any) -> np.ndarray:
    try:
        r = np.array(viewer_resolution, dtype=np.float64)
    except (TypeError, ValueError):
        r = None
    if r is None or r.shape != (3,) or not np.all(np.isfinite(r) & (r > 0)):
        raise InvalidInputError(f"viewer_resolution={viewer_resolution!r} must be three positive "
                                "finite numbers (nm per voxel), e.g. (8, 8, 42)")
    return r


def _to_float(a: np.ndarray) -> tuple[np.ndarray, int | None]:
    """A new float64 copy of ``a`` (missing -> NaN) and the flat index of a non-number, if any."""
    if a.dtype.kind in "iuf":
        return np.array(a, dtype=np.float64), None
    out = np.empty(a.size, dtype=np.float64)
    for i, v in enumerate(a.ravel().tolist()):
        try:
            if isinstance(v, (bool, bytes)):
                raise TypeError
            out[i] = np.nan if v is None or v is pd.NA or v is pd.NaT else float(v)
        except (TypeError, ValueError, OverflowError):
            return out, i
    return out.reshape(a.shape), None


def as_locations(x: Any, *, coordinates: str = "nm",
                 viewer_resolution: tuple[float, float, float] = (8, 8, 42),
                 name: str = "locs") -> np.ndarray:
    """Validate locations; return a new (N, 3) float64 array in nanometres.

    Parameters
    ----------
    x : array-like or pandas.DataFrame
        (N, 3) numbers, one point ``[x, y, z]`` (-> (1, 3)), or a DataFrame with x, y, z columns
        (others ignored, numeric strings converted). Empty gives (0, 3); negatives are allowed.
    coordinates, viewer_resolution : str, tuple of float
        Unit of ``x``, "nm" or "voxel"; voxels are multiplied by ``viewer_resolution`` (nm).
    name : str
        Parameter name used in messages.

    Raises
    ------
    InvalidLocationError
        Missing x/y/z columns, a shape other than (N, 3), non-numeric or non-finite values.
    """
    unit = as_coordinates(coordinates)
    if isinstance(x, pd.DataFrame):
        if missing := [c for c in "xyz" if c not in x.columns]:
            raise InvalidLocationError(
                f"`{name}` as a DataFrame must have [x, y, z] columns; missing {missing}, found "
                f"{[str(c) for c in x.columns]}. Rename the coordinate columns to x, y, z")
        a = x[["x", "y", "z"]].to_numpy()
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError):
            raise InvalidLocationError(f"`{name}` is ragged or not array-like; expected (N, 3) "
                                       "rows of [x, y, z]") from None
    a = a.reshape(-1, 3) if a.ndim == 1 and a.size in (0, 3) else a
    if a.ndim != 2 or a.shape[1] != 3:
        raise InvalidLocationError(f"`{name}` has shape {a.shape}; expected (N, 3) rows of "
                                   "[x, y, z] (or one point [x, y, z])")
    out, bad = _to_float(a)
    if bad is not None:
        raise InvalidLocationError(f"{name}[{bad // 3}] = {tuple(a[bad // 3].tolist())!r}: "
                                   "coordinates must be numbers; fix or drop that row")
    nonfinite = ~np.isfinite(out).all(axis=1)
    if nonfinite.any():
        row = int(np.argmax(nonfinite))
        vals = ", ".join(repr(float(v)) for v in out[row])
        raise InvalidLocationError(f"{name}[{row}] = ({vals}): coordinates must be finite; "
                                   f"{int(nonfinite.sum())} of {len(out)} rows have NaN or inf. "
                                   "Drop or fix those rows")
    if unit == "voxel":
        out *= _resolution(viewer_resolution)
    return out


class _BadID(Exception):
    """Internal: why one ID value is rejected."""


class _BadFloat(_BadID):
    """Internal: a float ID without the opt-in, or too large to be exact."""


def _one_id(v: Any) -> int | None:
    """One ID as a Python int, or None when missing; raises _BadID with the reason."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        raise _BadID("booleans are not IDs")
    if isinstance(v, (float, np.floating)) and (not floats_allowed() or not abs(v) < _FLOAT_EXACT):
        raise _BadFloat()
    if isinstance(v, (str, bytes, float, np.floating)):
        try:
            d = Decimal((v.decode() if isinstance(v, bytes) else v).strip()
                        if isinstance(v, (str, bytes)) else float(v))
        except (InvalidOperation, UnicodeDecodeError):
            raise _BadID("not a numeric string") from None
        if not d.is_finite() or d != d.to_integral_value():
            raise _BadID("IDs must be integers")
        v = int(d)
    if not isinstance(v, (int, np.integer)):
        raise _BadID(f"a {type(v).__name__} is not an ID")
    if not 0 <= int(v) <= _UINT64_MAX:
        raise _BadID("IDs must be non-negative" if v < 0 else "IDs must fit in uint64 (< 2**64)")
    return int(v)


def _id_error(name: str, pos: int | None, v: Any, reason: str) -> InvalidIDError:
    fix = ("drop it, or pass nan='zero' to map missing IDs to 0" if reason == "missing ID"
           else "give non-negative integer IDs (ints or numeric strings)")
    where = name if pos is None else f"{name}[{pos}]"
    return InvalidIDError(f"{where} = {_fmt(v)}: {reason}; {fix}")


def as_ids(x: Any, *, name: str = "ids", nan: str = "raise") -> np.ndarray:
    """Validate IDs; return a new 1-D uint64 array (empty for empty input).

    Parameters
    ----------
    x : int, str, sequence, set, numpy.ndarray, pandas.Series or pandas.Index
        One ID (a numeric string is ONE ID) or a 1-D collection of ints, numeric strings or
        integral floats. Ints never pass through float64, so all of uint64 survives exactly.
    name : str
        Parameter name used in messages.
    nan : {"raise", "zero"}
        Whether None/NaN/pd.NA raise or become 0.

    Raises
    ------
    InvalidIDError
        Negative, non-integer, non-numeric, out-of-range or (``nan="raise"``) missing values;
        input that is not 1-D.
    """
    if nan not in ("raise", "zero"):
        raise InvalidInputError(f"nan={nan!r} must be 'raise' or 'zero'")
    if isinstance(x, (pd.Series, pd.Index)):
        x = x.to_numpy(dtype=object) if x.hasnans else x.to_numpy()
    elif isinstance(x, (set, frozenset)):
        try:
            x = sorted(x)
        except TypeError:
            x = list(x)
    elif isinstance(x, Iterable) and not isinstance(x, (str, bytes, np.ndarray, list, tuple,
                                                          pd.DataFrame)):
        x = list(x)  # generators, ranges, dict keys
    scalar = isinstance(x, (str, bytes, int, float, np.generic)) or x is None or x is pd.NA
    if isinstance(x, (list, tuple)) and all(type(v) is int for v in x):
        try:  # fast path, exact for every Python int in range
            return np.array(x, dtype=np.uint64).reshape(-1)
        except OverflowError:  # negative or too large: located below
            pass
    try:
        a = x if isinstance(x, np.ndarray) else np.array([x] if scalar else x, dtype=object)
    except (TypeError, ValueError):
        raise InvalidIDError(f"`{name}` is ragged or not a list of IDs") from None
    a = a.reshape(1) if a.ndim == 0 else a
    if a.ndim != 1:
        raise InvalidIDError(f"`{name}` has shape {a.shape}; expected a 1-D list of IDs "
                             "(flatten it with np.ravel if that is intended)")
    if a.dtype.kind in "iu" and not (a < 0).any():
        return a.astype(np.uint64)
    if a.dtype.kind == "f":  # vectorised check; on failure the loop below names the value
        missing = np.isnan(a)
        bad = ~np.isfinite(a) | (a < 0) | (a >= _FLOAT_EXACT) | (a != np.floor(a))
        if not floats_allowed() and (~missing).any():
            bad = ~missing | (missing if nan == "raise" else False)
        if not (bad & ~missing if nan == "zero" else bad).any():
            return np.where(missing, 0, a).astype(np.uint64)
    out = np.empty(a.size, dtype=np.uint64)
    for i, v in enumerate(a.tolist()):
        try:
            iv = _one_id(v)
        except _BadFloat:
            raise _float_refusal(name, None if scalar else i, v) from None
        except _BadID as e:
            raise _id_error(name, None if scalar else i, v, str(e)) from None
        if iv is None and nan == "raise":
            raise _id_error(name, None if scalar else i, v, "missing ID")
        out[i] = 0 if iv is None else iv
    return out


def check_layers(ids: np.ndarray, layout, *, name: str = "ids") -> np.ndarray:
    """Refuse IDs whose layer bits are impossible for ``layout`` (layer 0 or above ``n_layers``,
    e.g. 2**64-1); 0 (no segment) passes. Returns ``ids``.

    Parameters
    ----------
    ids : numpy.ndarray
        uint64 IDs (from ``as_ids``).
    layout : crantseg_dask._ids.IdLayout
        The dataset's ID bit layout.
    name : str
        Parameter name used in messages.
    """
    flat = np.asarray(ids, dtype=np.uint64).ravel()
    layer = layout.layer(flat).astype(np.int64)
    bad = (flat != 0) & ((layer < 1) | (layer > layout.n_layers))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidIDError(f"{name}[{i}] = {int(flat[i])}: its layer bits say layer {int(layer[i])}, but this "
                             f"dataset's IDs have layers 1 to {layout.n_layers}: not an ID of this dataset "
                             f"({int(bad.sum())} such values)")
    return ids


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def as_positive_int(value: Any, *, name: str) -> int:
    """``value`` as an int >= 1, else ``InvalidInputError`` naming ``name`` and the value.

    >>> as_positive_int(3, name="batch_size")
    3
    """
    if not _is_int(value) or value < 1:
        raise InvalidInputError(f"{name}={value!r} must be a positive integer")
    return int(value)


def as_layer(value: Any, n_layers: int, *, name: str = "stop_layer") -> int:
    """``value`` as a layer number 1..``n_layers``, else ``InvalidInputError`` (crantpy's message).

    >>> as_layer(2, 8)
    2
    """
    if not _is_int(value) or not 1 <= value <= n_layers:
        raise InvalidInputError(f"{name} ({value}) must be between 1 and {n_layers} inclusive.")
    return int(value)


def check_time_range(ts: datetime, first: datetime | None, *, name: str = "timestamp",
                     now: datetime | None = None) -> datetime:
    """Refuse a resolved timestamp before the dataset's first data or after now.

    Parameters
    ----------
    ts : datetime.datetime
        Aware UTC timestamp (from ``as_timestamp``).
    first : datetime.datetime or None
        The dataset's first data (oldest timestamp); None skips the lower bound.
    name : str
        Parameter name used in messages.
    now : datetime.datetime, optional
        The current time (default: now, UTC).
    """
    now = now or datetime.now(timezone.utc)
    lo = _utc(first) if first is not None else None
    if (lo is not None and ts < lo) or ts > now:
        rng = f"{lo.isoformat() if lo else '(no lower bound)'} to now ({_utc(now).isoformat()})"
        why = "before the dataset's first data" if lo is not None and ts < lo else "in the future"
        raise InvalidTimestampError(f"{name}={ts.isoformat()} is {why}; valid timestamps are {rng}")
    return ts


def _utc(dt: datetime) -> datetime:
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.replace(microsecond=0)


def to_unix(dt: datetime) -> float:
    """Unix time of a datetime in seconds (a naive datetime is UTC).

    Parameters
    ----------
    dt : datetime.datetime
        The time.
    """
    if not isinstance(dt, datetime):
        raise InvalidTimestampError(f"to_unix expects a datetime, got {dt!r}")
    return (dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt).timestamp()


def as_timestamp(x: Any, *, resolve_mat: Callable[[int | None], Any] | None = None,
                 now: Callable[[], datetime] | None = None, name: str = "timestamp") -> datetime:
    """Resolve a timestamp to an aware UTC datetime truncated to whole seconds (microsecond=0).

    Parameters
    ----------
    x : None, str, int, float, datetime, pandas.Timestamp or numpy.datetime64
        None is now. "mat"/"mat_latest" is the latest materialization, "mat_<N>" version N; other
        strings are ISO 8601 (naive = UTC). Numbers of any numpy width are unix seconds. Naive
        datetimes are UTC; aware ones are converted.
    resolve_mat : callable, optional
        ``resolve_mat(version or None)`` gives a materialization's time; needed for "mat" strings.
    now : callable, optional
        Returns the current time; default ``datetime.now(timezone.utc)``.
    name : str
        Parameter name used in messages.

    Raises
    ------
    InvalidTimestampError
        Unknown or malformed strings, "mat" without ``resolve_mat``, NaN/inf, numbers that look
        like milliseconds or nanoseconds (> 1e11), booleans and other types.
    """
    if x is None:
        return as_timestamp(now() if callable(now) else datetime.now(timezone.utc), name=name)
    if isinstance(x, str) and x.strip()[:3].lower() == "mat":
        if (m := _MAT.fullmatch(x.strip())) is None:
            raise InvalidTimestampError(
                f"Invalid materialization timestamp format for {name}: {x!r}; use 'mat', "
                "'mat_latest' or 'mat_<version>' with a non-negative integer version")
        if resolve_mat is None:
            raise InvalidTimestampError(f"{name}={x!r} needs a dataset to look up the "
                                        "materialization time; pass a dataset or a datetime")
        t = resolve_mat(None if m.group(1) is None else int(m.group(1)))
        if t is None:
            raise InvalidTimestampError(f"{name}={x!r}: no such materialization")
        return as_timestamp(t, name=name)
    if isinstance(x, str):
        try:
            return _utc(datetime.fromisoformat(x.strip()))
        except ValueError:
            raise InvalidTimestampError(f"{name}={x!r} is not a valid timestamp; strings must be "
                                        "ISO 8601 (e.g. '2025-01-01T12:00:00Z'), 'mat' or "
                                        "'mat_<version>'") from None
    if isinstance(x, (int, np.integer, float, np.floating)) and not isinstance(
            x, (bool, np.timedelta64)):
        v = x.item() if isinstance(x, np.generic) else x
        if not math.isfinite(v):
            raise InvalidTimestampError(f"{name}={_fmt(x)} must be a finite number of unix seconds")
        if not -_MAX_UNIX_SECONDS <= v <= _MAX_UNIX_SECONDS:
            raise InvalidTimestampError(f"{name}={_fmt(x)} is out of range for unix seconds; it "
                                        "looks like milliseconds or nanoseconds. Give seconds "
                                        "(divide by 1e3 or 1e9)")
        return datetime.fromtimestamp(math.floor(v), tz=timezone.utc)
    if isinstance(x, datetime) and x is not pd.NaT:  # NaT and pd.Timestamp subclass datetime
        return _utc(x.to_pydatetime(warn=False) if isinstance(x, pd.Timestamp) else x)
    if isinstance(x, np.datetime64) and not np.isnat(x):  # naive by definition: UTC
        return datetime.fromtimestamp(int(x.astype("datetime64[s]").astype(np.int64)), timezone.utc)
    raise InvalidTimestampError(f"{name}={x!r} (type {type(x).__name__}) is not a timestamp; give "
                                "unix seconds, an ISO 8601 string, a datetime or 'mat[_<N>]'")


def as_bbox(x: Any, *, coordinates: str = "nm",
            viewer_resolution: tuple[float, float, float] = (8, 8, 42),
            name: str = "bbox") -> np.ndarray:
    """Validate a box; return a new (2, 3) float64 ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` nm.

    Parameters
    ----------
    x : array-like
        Shape (2, 3) as returned, or (3, 2) ``[[xmin, xmax], [ymin, ymax], [zmin, zmax]]``;
        (3, 3) is ambiguous and rejected.
    coordinates, viewer_resolution : str, tuple of float
        Unit of ``x``, "nm" or "voxel"; voxels are multiplied by ``viewer_resolution`` (nm).
    name : str
        Parameter name used in messages.

    Raises
    ------
    InvalidInputError
        Wrong shape, non-numeric values, min > max on an axis.
    InvalidLocationError
        Non-finite values.
    """
    unit = as_coordinates(coordinates)
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape not in ((2, 3), (3, 2)):
        got = "a ragged sequence" if a is None else a.shape
        raise InvalidInputError(f"`{name}` must have shape (2, 3) or (3, 2), got {got}; give "
                                "[[xmin, ymin, zmin], [xmax, ymax, zmax]] or "
                                "[[xmin, xmax], [ymin, ymax], [zmin, zmax]]")
    b = a if a.shape == (2, 3) else a.T
    out, bad = _to_float(b)
    where = lambda i: f"{name} {'xyz'[i % 3]} {('min', 'max')[i // 3]}"  # noqa: E731
    if bad is not None:
        raise InvalidInputError(f"{where(bad)} = {_fmt(b.ravel()[bad])}: must be a number")
    if not np.isfinite(out).all():
        i = int(np.argmax(~np.isfinite(out.ravel())))
        raise InvalidLocationError(f"{where(i)} = {float(out.ravel()[i])!r}: bbox coordinates "
                                   "must be finite")
    for k, ax in enumerate("xyz"):
        if out[0, k] > out[1, k]:
            raise InvalidInputError(f"{name}: {ax} min {float(out[0, k])!r} > {ax} max "
                                    f"{float(out[1, k])!r}; swap them (min first)")
    if unit == "voxel":
        out *= _resolution(viewer_resolution)
    return out
