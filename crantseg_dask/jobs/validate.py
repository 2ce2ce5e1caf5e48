"""Checks of a job's arguments that need no dataset: run before anything is created or started."""
from __future__ import annotations

import math
import numbers
import os

from ..errors import InvalidInputError

__all__ = ["check_job_arguments"]


def _int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidInputError(f"{name}={value!r}: expected an integer >= {low}")


def check_job_arguments(args: dict, *, partition_size=None, n_workers=2, scheduler=None, cluster=None,
                        client=None) -> None:
    """Refuse impossible job arguments, naming the value (``InvalidInputError``).

    ``partition_size`` and ``n_workers`` must be >= 1, ``mip`` >= 0 (its upper bound is checked
    against the dataset), ``search_radius`` a finite number >= 0 (as ``snap_table``), ``nan`` "raise" or "zero", a
    scheduler file or cluster spec must exist. Nothing is created, no cluster started.
    """
    if partition_size is not None:
        _int("partition_size (--partition-size)", partition_size, 1)
    if client is None and scheduler is None and cluster is None:
        _int("n_workers (--workers)", n_workers, 1)
    if scheduler is not None:
        from ..cluster import check_scheduler

        check_scheduler(scheduler)
    if cluster is not None and not os.path.isfile(cluster):
        raise InvalidInputError(f"--cluster {cluster}: no such cluster spec file (see cluster/*.yaml)")
    if args.get("mip") is not None:
        _int("mip (--mip)", args["mip"], 0)
    if "search_radius" in args:
        r = args["search_radius"]
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r < 0:
            raise InvalidInputError(f"search_radius={r!r} (--search-radius): expected a number of nm >= 0")
    if "nan" in args and args["nan"] not in ("raise", "zero"):
        raise InvalidInputError(f"nan={args['nan']!r} (--nan): expected 'raise' or 'zero'")
    if "id_column" in args and (not isinstance(args["id_column"], str) or not args["id_column"].strip()):
        raise InvalidInputError(f"id_column={args['id_column']!r} (--id-column): give a column name")
    if "coordinates" in args:
        from .._validate import as_coordinates

        as_coordinates(args["coordinates"])
