"""Keep a table of root IDs current: refresh only the rows whose roots changed since its time.

``refresh(table, to)`` asks the chunked graph once which roots expired between the table's time
``t0`` and ``to`` (``delta_roots``), touches only the rows holding one, and maps them to ``to``:
through their supervoxel (its root at ``to``) where the table has one, through ``update_ids`` at
``to`` otherwise. Every root in the table is also checked to be alive at ``t0`` (one
``is_latest`` request per batch of unique roots): roots already outdated at ``t0`` are updated
too; roots the dataset does not know are reported (count and examples), never silently kept.

The refreshed table replaces the old one atomically (see ``_refresh_store``). It records the new
time (job attribute ``timestamp`` / column ``roots_valid_at``), a refresh record (from, to, rows
touched and changed per column, unknown roots), and for each root column ``<col>_previous``: the
root the row held before this refresh where it changed, 0 elsewhere.

Cost: one pass over the root columns (read and factorized), validity requests in proportion to
the table's unique roots, supervoxels read and mapped for the touched rows only, and for a job's
Zarr output only the chunks whose values change are written (``_refresh_zarr``). A job's root
column known valid (its own, or one the last refresh left valid, by each chunk's crc32c) with the
job's per-partition root ranges (``_range_root_id``) is read only in the chunks whose range holds
an expired root; a job's chunks are decoded and encoded in parallel threads (``_zarr_chunks``).
A parquet file is written anew (``_refresh_parquet``), its unchanged column chunks copied as
stored (``_parquet_splice``): its write starts once the first row group's rows are mapped and
runs while the rest are mapped and the roots are checked.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np

from ..errors import CrantsegError, InvalidInputError, InvalidTimestampError
from ..sources import open_source
from ..sources.resolve import cave_dataset, resolve_dataset, resolve_timestamp
from ._refresh_store import TIMESTAMP_COLUMN, open_table
from ._refresh_kernel import _chunk_runs, _unique_pairs, chunks_in_range, roots_checksum, rows_holding  # noqa: F401
from ._refresh_map import (_apply, _known, _left, _Memo, _not_alive, _rows_and_supervoxels, _successors,
                           _unique_roots)

__all__ = ["RefreshReport", "main", "refresh", "refresh_roots"]

N_EXAMPLES = 10
N_THREADS = 4  # concurrent requests (delta roots, validity batches)
PREFILL = 4 * 64  # a window of up to this many expired roots is mapped whole ahead (4 overlap tasks)


@dataclass
class RefreshReport:
    """What a refresh did. ``status``: "refreshed", "unchanged" (already at that time) or
    "dry-run"."""

    table: str
    status: str
    from_timestamp: str
    to_timestamp: str
    rows: int = 0
    expired_roots: int = 0                                 # expired roots the window holds
    rows_touched: dict = field(default_factory=dict)       # column -> rows holding an outdated root
    rows_changed: dict = field(default_factory=dict)       # column -> rows whose root changed
    stale_roots: int = 0                                   # outdated already at the table's time
    unknown_roots: int = 0
    unknown_examples: list = field(default_factory=list)
    files_written: int = 0                                 # Zarr: rewritten chunks + metadata
    bytes_written: int = 0
    seconds: float = 0.0
    message: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _time(ts: datetime) -> str:
    return ts.isoformat()


def refresh_roots(roots: dict[str, np.ndarray], supervoxels: dict, source, spec, t0: datetime, t1: datetime,
                  stop_layer: int = 2, progress: bool = False, check=None,
                  inplace: bool = False, delta=None, search: dict | None = None, early=None,
                  waves: list[int] | None = None, check_from: dict | None = None,
                  ahead=None) -> tuple[dict, dict]:
    """Roots of each column at ``t1`` given the roots at ``t0`` (uint64 arrays, 0 = empty).

    ``supervoxels[col]``: None, the column's supervoxels (an array), or a function of row
    indices giving the supervoxels of those rows only (read for the touched rows alone).
    ``check``: the columns whose roots are checked to be alive at ``t0`` (default: every one);
    a column known to hold only roots alive at ``t0`` (a job computed them then, or the last
    refresh left them so) skips the check, and with it the pass for its unique roots.
    ``delta``: a future of ``source.delta_roots(t0, t1)`` already sent (the caller overlaps it
    with reading the columns), else sent here.
    ``search[col] = (size, chunks)``: the column's rows holding an expired root lie in those
    length-``size`` chunks only (the rest of the column need not even be read).
    ``inplace``: refresh each writable column in place (``new[col]`` is ``roots[col]``; no copy of
    a 10^7-row column), else in a copy.
    ``check_from[col]``: arrays holding the values of ``roots[col]`` that a refresh in place does
    not change (a parquet column's arrow chunks): the check reads them, so ``roots[col]`` is
    refreshed in place at once.
    ``ahead``: a future of ``map_window`` (the window's roots as (root, 0) pairs and their
    successors, or None), sent while the columns are read: those pairs are not asked again.
    ``early(new)``: called once the rows of the first wave (``waves``: the rows each wave of
    the window's rows ends at, the last the row count; default one wave) holding a root the
    window expired are refreshed, before the validity check is awaited; it returns a handle
    (a writer of the new table: ``_refresh_parquet.ParquetStage``) whose ``previous[col +
    "_previous"]`` is filled in and ``advance(end)`` called as each wave's rows are final, and
    whose ``cancel()`` is called before ``new`` changes further (roots found outdated already at
    ``t0``, rare). The new table's first rows are thus written while the next are mapped.
    Returns ``(new, info)``: ``new[col]`` the refreshed column; ``info`` holds ``touched`` /
    ``changed`` (row indices per column), ``previous`` (the roots of the changed rows before),
    ``expired`` (the table's roots the window expired),
    ``stale``, ``unknown`` (unique roots) and ``outdated_left`` (touched rows still on an
    outdated root: no successor found).
    Requests: one ``delta_roots`` (sent while the checked columns are read), then for the rows
    holding an expired root their supervoxels' roots at ``t1`` (batches in parallel) or, without
    a supervoxel, the overlap step; ``is_latest`` over the checked columns' unique roots not in
    the window (batches in parallel, in the background: at once, or with ``early`` once it has
    started); roots outdated already at ``t0`` go through ``update_ids``."""
    from .updates import update_ids

    layout = source.meta.layout
    check = list(roots) if check is None else [c for c in roots if c in set(check)]
    step = int(getattr(source, "batch_size", 0) or 10_000)
    search = search or {}
    with ThreadPoolExecutor(N_THREADS) as pool, ThreadPoolExecutor(N_THREADS + 1) as checks:
        # in the background: the checked columns' unique roots (one hash pass each); with ``early``
        # once it has started (its CPU is not taken from reading and mapping the first rows)
        checked = [a for c in check for a in ((check_from or {}).get(c) or [roots[c]])]
        apart = {c for c in check if (check_from or {}).get(c)}  # checked in other arrays
        uniq = None if early else checks.submit(_unique_roots, checked)
        delta = delta or pool.submit(source.delta_roots, t0, t1)
        window = delta.result()[0]
        alive = None if early else checks.submit(lambda: _not_alive(uniq.result(), window, source, t0, step, checks))
        # the window's rows, their supervoxels and their new roots: what the table's new version needs
        # (in waves: each wave's supervoxels read with it, the first wave's first)
        staged = early is not None and bool(waves)
        reads = {col: pool.submit(_rows_and_supervoxels, r, window, None if staged else supervoxels.get(col),
                                  search.get(col)) for col, r in roots.items()}
        # each (root, supervoxel) pair asked once over the waves (roots only: the first wave holds most)
        successors = _Memo(lambda pairs: _successors(pairs, source, spec, t1, stop_layer, pool, step))
        found = {col: f.result() for col, f in reads.items()}
        if ahead is not None and ahead.result() is not None:  # the window's roots mapped already
            successors.seed(*ahead.result())
        new, info, handle, lo = roots, None, None, 0
        for hi in (waves if early is not None and waves else [None]):
            part = {}
            for col, (rows, sv) in found.items():
                a, b = np.searchsorted(rows, [lo, hi if hi is not None else np.iinfo(np.int64).max])
                part[col] = (rows[a:b], sv[a:b])
                if staged and supervoxels.get(col) is not None:
                    part[col] = _rows_and_supervoxels(None, None, supervoxels[col], rows=rows[a:b])
            # a checked column is refreshed in a copy while its unique roots are still being read
            new, got = _apply(new, part, successors, True if info is not None else
                              {c for c in roots if inplace and (c not in check or c in apart
                                                                or (uniq is not None and uniq.done()))})
            info = got if info is None else {k: ({c: np.concatenate([info[k][c], got[k][c]]) for c in new}
                                                 if k != "expired" else np.union1d(info[k], got[k])) for k in got}
            if early is not None:
                if handle is None:
                    handle = early(new)
                    uniq = checks.submit(_unique_roots, checked)
                for col in new:  # this wave's previous roots, then its rows are final
                    handle.previous[f"{col}_previous"][got["changed"][col]] = got["previous"][col]
                handle.advance(hi if hi is not None else len(next(iter(new.values()))))
            lo = hi
        info.update(expired=np.asarray(info["expired"]), stale=np.zeros(0, np.uint64),
                    unknown=np.zeros(0, np.uint64))
        # with ``early``, the roots are checked once it has started (its work overlaps the requests)
        bad = (alive.result() if alive is not None else _not_alive(uniq.result(), window, source, t0, step, checks))
    stale = unknown = np.zeros(0, np.uint64)
    if bad.size:  # not alive at t0: outdated already (update them too) or unknown to the dataset
        got = update_ids(bad, timestamp=t1, stop_layer=stop_layer, dataset=spec, progress=progress)
        lost = (got["confidence"].to_numpy() == 0) | (layout.layer(bad) != layout.n_layers)
        lost[lost] = [not _known(source, r) for r in bad[lost].tolist()]  # a few, one by one
        unknown, stale = bad[lost], bad[~lost]
    info.update(stale=stale, unknown=unknown)
    if stale.size:  # rows holding a root not alive at t0 (perhaps created after it): the whole update step
        if handle is not None:
            handle.cancel()
        more = {}
        for col, r in new.items():
            rows, sv = _rows_and_supervoxels(r, stale, supervoxels.get(col))
            keep = ~np.isin(rows, info["touched"][col])  # a window row already holds its root at t1
            more[col] = (rows[keep], sv[keep])

        def late(pairs: np.ndarray) -> np.ndarray:
            svs = pairs[:, 1]
            got = update_ids(pairs[:, 0], supervoxels=svs if svs.any() else None, timestamp=t1,
                             stop_layer=stop_layer, dataset=spec, progress=progress, use_annotations=False)
            return got["new_id"].to_numpy().astype(np.uint64)

        new, extra = _apply(new, more, late, inplace=True)
        for key in ("touched", "changed", "previous"):
            for col in new:
                info[key][col] = np.concatenate([info[key][col], extra[key][col]])
        for col in new:
            order = np.argsort(info["touched"][col], kind="stable")
            info["touched"][col] = info["touched"][col][order]
            order = np.argsort(info["changed"][col], kind="stable")
            info["changed"][col], info["previous"][col] = info["changed"][col][order], info["previous"][col][order]
    info["outdated_left"] = _left(new, info["touched"], np.concatenate([window, stale]))
    return new, info


def _columns(table, root_columns, supervoxel_columns) -> tuple[list[str], dict[str, str | None]]:
    names = table.names
    if root_columns is None:
        if table.operation == "update-ids":
            root_columns = ["new_id"]
        else:
            root_columns = [c for c in names if c.endswith("root_id") and not c.endswith("_previous")]
        if not root_columns:
            raise InvalidInputError(f"{table.path}: no root columns found (names ending in 'root_id'); "
                                    f"name them with --roots; columns: {names}")
    for c in root_columns:
        if c not in names:
            raise InvalidInputError(f"{table.path}: root column {c!r} does not exist; columns: {names}")
    sv = dict(supervoxel_columns or {})
    for c in root_columns:
        if c not in sv:
            guess = "supervoxel_id" if c == "new_id" else c[: -len("root_id")] + "supervoxel_id"
            sv[c] = guess if c.endswith(("root_id", "new_id")) and guess in names else None
        elif sv[c] is not None and sv[c] not in names:
            raise InvalidInputError(f"{table.path}: supervoxel column {sv[c]!r} does not exist; columns: {names}")
    return list(root_columns), sv


def refresh(table, to=None, *, dataset=None, timestamp=None, root_columns=None, supervoxel_columns=None,
            unknown: str = "report", stop_layer: int = 2, dry_run: bool = False,
            progress: bool = False) -> RefreshReport:
    """Bring the root columns of ``table`` from the time they are valid at to ``to``, in place.

    Parameters
    ----------
    table : str or path
        A finished job's Zarr output (its ``timestamp`` attribute is the roots' time), or a
        .parquet / .csv file with root columns (the time: column ``roots_valid_at``, else
        ``timestamp``).
    to : None, str, int, datetime
        Target time: None or "now", "mat"/"mat_<N>", ISO, unix seconds.
    dataset : str or SourceSpec, optional
        For a job: default the job's dataset.
    timestamp : optional
        The roots' time for a table that records none (must agree with the table if it does).
    root_columns : list of str, optional
        Default: every column ending in ``root_id`` (``new_id`` for an update-ids job).
    supervoxel_columns : dict, optional
        Root column -> supervoxel column (None: map through the update step). Default:
        ``X_root_id`` -> ``X_supervoxel_id`` where that column exists.
    unknown : "report" or "raise"
        Roots unknown to the dataset are kept and reported (count and examples) or refused.
    stop_layer : int
        ``update_ids``' overlap layer for rows without a supervoxel.
    dry_run : bool
        Compute and report, write nothing.

    Returns
    -------
    RefreshReport

    Raises
    ------
    InvalidTimestampError
        ``to`` precedes the table's time, or the table has no time and none is given.
    """
    t_start = time.perf_counter()
    tab = open_table(table)
    if tab.kind == "zarr" and dataset is None:
        ident = tab.attrs.get("dataset_identity") or {}
        if ident.get("kind") == "cave" and ident.get("server"):
            dataset = cave_dataset(ident["server"], ident["datastack"], name=ident.get("name") or "cave")
        else:
            dataset = ident.get("path") or tab.attrs.get("dataset")
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    recorded = None if tab.timestamp is None else resolve_timestamp(tab.timestamp, source, name="table time")
    given = None if timestamp is None else resolve_timestamp(timestamp, source, name="timestamp")
    if recorded is not None and given is not None and recorded != given:
        raise InvalidTimestampError(f"{tab.path}: its roots are recorded as valid at {_time(recorded)}, "
                                    f"not at the given {_time(given)}")
    t0 = recorded or given
    if t0 is None:
        raise InvalidTimestampError(f"{tab.path}: the table does not record when its roots are valid (no job "
                                    f"timestamp, no {TIMESTAMP_COLUMN!r} column): pass it with --from / timestamp=")
    t1 = resolve_timestamp(None if isinstance(to, str) and to.strip().lower() == "now" else to, source, name="to")
    report = RefreshReport(str(tab.path), "unchanged", _time(t0), _time(t1))
    if t1 < t0:
        raise InvalidTimestampError(f"refusing to refresh {tab.path} backwards: its roots are valid at "
                                    f"{_time(t0)}, later than the requested {_time(t1)}")
    if unknown not in ("report", "raise"):
        raise InvalidInputError(f"unknown={unknown!r}: use 'report' or 'raise'")
    cols, sv_cols = _columns(tab, root_columns, supervoxel_columns)
    if t1 == t0:
        report.rows = len([tab.ids(c) for c in cols][0])  # each column still checked to hold IDs
        report.message = f"roots already valid at {_time(t1)}: nothing to do, table unchanged"
        report.seconds = time.perf_counter() - t_start
        return report
    # parquet: the supervoxel columns read in the background while the root columns are read, then
    # the columns a refresh only writes back (not for a dry run), while the requests are answered
    # (spliced: the other columns are copied as stored, never read)
    replaced = list(cols) + [f"{c}_previous" for c in cols] + [TIMESTAMP_COLUMN]
    rest = dry_run or tab.splices(replaced)
    tab.prefetch(first=[s for s in sv_cols.values() if s],
                 skip=replaced + ([c for c in tab.names if c not in sv_cols.values()] if rest else []))
    sizes = getattr(tab.columns, "sizes", None) or []
    waves = [sizes[0], sum(sizes)] if len(sizes) > 1 and not dry_run else None
    ahead = None
    with ThreadPoolExecutor(1) as pool:  # the window's expired roots asked while the root columns are read
        delta = pool.submit(source.delta_roots, t0, t1)
        if waves and any(sv_cols[c] is None for c in cols):  # a small window's roots mapped meanwhile too
            other = ThreadPoolExecutor(1)
            ahead = other.submit(map_window, delta, source, spec, t1, stop_layer)
            other.shutdown(wait=False)  # its thread ends with the task
        trusted = known_valid(tab, cols, spec.name, _job_dataset(tab, spec, source), _time(t0), read=tab.ids)
        # a trusted column of a job with a per-chunk index: only the chunks whose range can hold
        # an expired root are read (the others cannot hold a root to refresh)
        ranges = {c: r for c in cols if c in trusted and (r := tab.ranges(c)) is not None}
        roots, search = {}, {}
        for c in cols:
            if c in ranges:
                chunks = chunks_in_range(ranges[c], delta.result()[0])
                roots[c], search[c] = tab.ids_in_chunks(c, chunks), (tab.chunk_size(c), chunks)
            else:
                roots[c] = tab.ids(c)
        report.rows = len(next(iter(roots.values())))
    svs = {c: ((lambda rows, s=s: tab.ids_at(s, rows)) if s else None) for c, s in sv_cols.items()}
    ctx = {"tab": tab, "cols": cols, "spec": spec, "report": report, "t0": t0, "t1": t1}
    staged = []  # a parquet file's write, started with the first rows refreshed (``early``)

    def early(new):
        staged.append(tab.stage(new, _time(t1)))
        return staged[-1]

    # parquet: the first row group's rows mapped first, so its write starts while the rest are mapped
    try:
        new, info = refresh_roots(roots, svs, source, spec, t0, t1, stop_layer, progress,
                                  check=[c for c in cols if c not in trusted], inplace=True, delta=delta,
                                  search=search, early=None if dry_run or tab.kind != "parquet" else early,
                                  waves=waves, check_from={c: tab.originals(c) for c in cols}, ahead=ahead)
        del roots  # refreshed in place: ``info["previous"]`` holds the roots that changed
        record, previous = _outcome(ctx, new, info)
        if report.unknown_roots and unknown == "raise":
            raise InvalidInputError(f"{tab.path}: {report.unknown_roots} roots are unknown to dataset {spec.name!r} "
                                    f"(e.g. {report.unknown_examples[:5]}); table not refreshed")
        if dry_run:
            report.status = "dry-run"
        else:
            if staged and not info["stale"].size:  # what was staged is the final table (no stale roots)
                written = staged.pop().finish(tab.record_metadata(record))
            else:
                written = tab.write(new, previous, _time(t1), record, changed=info["changed"])
            report.files_written, report.bytes_written = written["files_written"], written["bytes_written"]
            report.status = "refreshed"
    finally:
        for stage in staged:  # an error before the staged file was used, or stale roots: dropped
            stage.cancel()
    report.seconds = time.perf_counter() - t_start
    return report


def map_window(delta, source, spec, t1: datetime, stop_layer: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The roots of the window (``delta``: a future of ``delta_roots``) as (root, 0) pairs and
    their successors at ``t1`` by the update step, when there are at most ``PREFILL``; else None."""
    window = delta.result()[0]
    if not 0 < len(window) <= PREFILL:
        return None
    pairs = np.stack([window, np.zeros(len(window), np.uint64)], axis=1)
    with ThreadPoolExecutor(N_THREADS) as pool:
        step = int(getattr(source, "batch_size", 0) or 10_000)
        return pairs, _successors(pairs, source, spec, t1, stop_layer, pool, step)


def _outcome(ctx: dict, new: dict, info: dict) -> tuple[dict, dict]:
    """Fill ``ctx["report"]`` from ``refresh_roots``' ``info``; return the refresh record and the
    previous-roots columns (the root each changed row held before, 0 elsewhere)."""
    report, cols, spec = ctx["report"], ctx["cols"], ctx["spec"]
    t0, t1, tab = ctx["t0"], ctx["t1"], ctx["tab"]
    report.expired_roots = len(info["expired"])
    report.stale_roots = len(info["stale"])
    report.unknown_roots = len(info["unknown"])
    report.unknown_examples = [int(v) for v in info["unknown"][:N_EXAMPLES]]
    report.rows_touched = {c: len(info["touched"][c]) for c in cols}
    report.rows_changed = {c: len(info["changed"][c]) for c in cols}
    report.message = ""
    if report.unknown_roots:
        report.message = (f"{report.unknown_roots} roots unknown to dataset {spec.name!r} kept as they are "
                          f"(e.g. {report.unknown_examples[:5]}). ")
    report.message += (f"{sum(report.rows_changed.values())} root entries changed in "
                       f"{report.rows:,} rows ({_time(t0)} -> {_time(t1)})")
    previous = {}
    for c in cols:
        previous[f"{c}_previous"] = prev = np.zeros(report.rows, np.uint64)
        prev[info["changed"][c]] = info["previous"][c]
    record = {k: v for k, v in report.as_dict().items()
              if k not in ("table", "status", "seconds", "message", "files_written", "bytes_written")}
    record["dataset"] = spec.name
    if not (report.unknown_roots or report.stale_roots or info["outdated_left"]):
        # every root now alive at t1: the next refresh need not check them
        if tab.kind == "zarr" and all(tab.chunk_size(c) for c in cols):  # each chunk's checksum
            record["valid_chunks"] = list(cols)  # (filled in as the chunks are written)
        else:
            record["valid_roots"] = {c: roots_checksum(new[c]) for c in cols}
    return record, previous


# -- which columns are known valid --------------------------------------------------------------
#: job operations whose output column holds, by construction, the roots at the job's timestamp
ROOTS_AT_JOB_TIME = {"supervoxels-to-roots": "root_id", "locs-to-segments": "root_id", "snap": "root_id"}


def _job_dataset(tab, spec, source) -> bool:
    """Whether ``spec`` is the dataset the job at ``tab`` ran on (its ``dataset_identity``: a
    local ``crantseg serve`` is known by the data it serves, not by its port)."""
    ident = tab.attrs.get("dataset_identity") or {}
    if not ident or any(ident.get(k) != getattr(spec, k, None) for k in ("kind", "name", "path", "datastack")):
        return False
    if ident.get("server") == "local crantseg serve":
        data = (getattr(source, "segmentation_info", None) or {}).get("crantseg_dataset")
        return data is not None and data == ident.get("data")
    return ident.get("server") == spec.server


def known_valid(tab, cols: list[str], dataset: str, job_dataset: bool, t0: str, read=None) -> set[str]:
    """The root columns known to hold only roots alive at the table's time (0 aside), whose
    validity check ``refresh`` skips:

    * a job's output column that the job computed at its timestamp (``ROOTS_AT_JOB_TIME``,
      roots layer), of a job never refreshed and refreshed against its own dataset;
    * a column the last refresh (to ``t0``, ISO) left with every root alive (no unknown or stale
      roots, none left outdated), when it still matches what that refresh recorded and the
      dataset is the same: a job's column by each chunk file's crc32c (nothing decoded), a
      file's column by ``roots_checksum`` (``read(col)`` gives the column).
    """
    out = set()
    if not tab.history:
        args = tab.attrs.get("arguments") or {}
        col = ROOTS_AT_JOB_TIME.get(tab.operation)
        if tab.kind == "zarr" and job_dataset and col in cols and args.get("stop_layer") is None:
            out.add(col)
        return out
    last = tab.history[-1]
    if last.get("dataset") != dataset or last.get("to_timestamp") != t0:
        return out
    for col, tails in (last.get("valid_chunks") or {}).items():
        if col in cols and tab.kind == "zarr" and tab.tails(col) == list(tails):
            out.add(col)
    for col, summary in (last.get("valid_roots") or {}).items():
        if col in cols and read is not None and roots_checksum(read(col)) == list(summary):
            out.add(col)
    return out


# -- command line -----------------------------------------------------------------------------
def _pairs(text: str | None) -> dict[str, str | None] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        root, _, sv = part.partition("=")
        out[root.strip()] = sv.strip() or None
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="crantseg refresh", description="bring a table's root IDs up to date: only "
                                "the rows whose roots changed since the table's time are touched")
    p.add_argument("table", help="a finished job's Zarr output, or a .parquet / .csv file with root columns")
    p.add_argument("--to", help="target time: now (default), mat, mat_<N>, ISO 8601 or unix seconds")
    p.add_argument("--from", dest="from_", metavar="TIME", help="the roots' time, for a table that does not record it")
    p.add_argument("--dataset", help="dataset (default: the job's, else the configured default)")
    p.add_argument("--roots", help="root columns, comma-separated (default: every column ending in root_id; the "
                   "recorded time then holds for these columns only)")
    p.add_argument("--supervoxels", help="root=supervoxel column pairs, comma-separated "
                   "(default: X_root_id=X_supervoxel_id where present); root= for none")
    p.add_argument("--unknown", choices=["report", "raise"], default="report",
                   help="roots unknown to the dataset: keep and report (default), or refuse")
    p.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    roots = a.roots.split(",") if a.roots else None
    try:
        rep = refresh(a.table, a.to, dataset=a.dataset, timestamp=a.from_, root_columns=roots,
                      supervoxel_columns=_pairs(a.supervoxels), unknown=a.unknown, dry_run=a.dry_run)
    except CrantsegError as e:
        print(f"crantseg refresh: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(f"{rep.status}: {rep.table} {rep.from_timestamp} -> {rep.to_timestamp}")
        print(rep.message)
        for c in rep.rows_changed:
            print(f"  {c}: {rep.rows_touched[c]:,} rows touched, {rep.rows_changed[c]:,} changed")
    return 0
