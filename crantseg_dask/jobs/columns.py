"""The columns a job stores: the user's table unchanged, the operation's inputs, categoricals.

A job keeps every column of its input table under the user's own name and dtype (strings and
categoricals as Zarr strings, a categorical's categories in the array's ``categories``
attribute). The operation's normalised inputs (``x, y, z`` in nm, ``target_id`` ...) reuse a user
column when it holds exactly those values (``post_pt_root_id`` is stored once, as itself);
otherwise they are stored under ``_in_<name>`` (hidden from ``read_output``). A user column whose
name a job needs for itself (``row``, an output column, ``_...``) is stored as ``input_<name>``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InvalidInputError

__all__ = ["job_columns", "as_stored", "from_stored", "CATEGORIES", "RESERVED"]

RESERVED = {"row", "offsets"}
CATEGORIES = "categories"  # array attribute: the categories of a categorical column, in order


def as_stored(series: pd.Series) -> tuple[np.ndarray, dict]:
    """A column as a Zarr-storable 1-D array plus array attributes (``categories``)."""
    name = series.name
    if isinstance(series.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in series.cat.categories]
        values = series.astype(object).where(series.notna(), "")
        return np.asarray(values.astype(str).to_numpy(), dtype=object), {CATEGORIES: cats}
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        values = series.to_numpy(dtype=object)
        if not all(isinstance(v, str) for v in values):
            kinds = sorted({type(v).__name__ for v in values if not isinstance(v, str)})
            raise InvalidInputError(f"input column {name!r} mixes text with {', '.join(kinds)} values; a job stores "
                                    "text columns as text: convert it (e.g. df[col].astype(str)) or drop it")
        return values, {}
    values = series.to_numpy()
    if values.dtype.kind not in "biufcmM":
        raise InvalidInputError(f"input column {name!r} has dtype {series.dtype}, which a job cannot store; "
                                "convert or drop it")
    return values, {}


def from_stored(values: np.ndarray, attrs: dict) -> np.ndarray | pd.Categorical:
    """The column as it was given: a categorical again, text as Python strings."""
    if CATEGORIES in attrs:
        return pd.Categorical(np.asarray(values, dtype=object), categories=list(attrs[CATEGORIES]))
    if values.dtype.kind in "OTU" or str(values.dtype) == "StringDType()":
        return np.asarray(values, dtype=object)
    return values


def job_columns(table: pd.DataFrame, kernel_inputs: dict[str, np.ndarray], sources: dict[str, str],
                taken: set[str]) -> tuple[dict[str, np.ndarray], dict[str, dict], dict[str, str], dict[str, str]]:
    """What a job stores for ``table``.

    Parameters
    ----------
    table : DataFrame
        The user's table (in stored row order).
    kernel_inputs : dict
        The operation's normalised inputs (same rows and order).
    sources : dict
        For a kernel input, the user column it comes from when not its own name
        (``{"target_id": "post_pt_root_id"}``).
    taken : set
        Names the job needs for itself (outputs).

    Returns
    -------
    arrays, attrs, input_map, renamed
        Stored name -> array (user columns first, in their order), stored name -> array
        attributes, kernel input -> stored name, user column -> stored name (when renamed).
    """
    arrays, attrs, renamed = {}, {}, {}
    user = {}
    for col in table.columns:
        name = str(col)
        stored = name
        while stored in RESERVED or stored in taken or stored.startswith("_") or stored in arrays:
            stored = f"input_{stored}"
        if stored != name:
            renamed[name] = stored
        values, extra = as_stored(table[col].rename(name))
        arrays[stored], user[name] = values, stored
        if extra:
            attrs[stored] = extra
    input_map = {}
    for key, values in kernel_inputs.items():
        col = sources.get(key, key)
        stored = user.get(col)
        if (stored is not None and stored not in attrs and arrays[stored].dtype == values.dtype
                and np.array_equal(arrays[stored], values)):
            input_map[key] = stored
        else:
            input_map[key] = f"_in_{key}"
            arrays[f"_in_{key}"] = values
    return arrays, attrs, input_map, renamed
