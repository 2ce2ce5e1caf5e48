"""The job driver: validate the input, plan partitions, run them on a cluster, resume from Zarr.

``run_job`` resolves the dataset and the timestamp once, validates and normalises the input table
before any work (errors name the bad rows), groups rows by storage chunk for locality, writes the
input columns into the job's Zarr group, and submits one task per unfinished partition. Each task
reads its rows from Zarr (never through the graph), runs the operation's kernel, and writes whole
output chunks, then its ``_done`` entry. ``resume=True`` reruns only unfinished partitions and
refuses a changed input, arguments, timestamp, dataset or store format unless ``force=True``
(which starts again from scratch). An existing output that is not a crantseg job is never
overwritten without ``force=True``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import resolve_dataset, resolve_timestamp, setting
from ..errors import InvalidInputError, SourceError
from ..persist import FORMAT, JobStore, canonical, fingerprint, status
from ..sources import open_source
from .operations import OPERATIONS, Context

__all__ = ["run_job", "run_partition", "read_table"]


def read_table(source) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a parquet / CSV file, or a Zarr group of 1-D arrays."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise InvalidInputError(f"input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    if suffix == ".zarr" or path.is_dir():
        import zarr

        g = zarr.open_group(str(path), mode="r")
        return pd.DataFrame({k: np.asarray(g[k][:]) for k in g.array_keys() if g[k].ndim == 1})
    raise InvalidInputError(f"input {str(path)!r}: use a .parquet, .csv or .zarr table")


def _locality_order(inputs: dict[str, np.ndarray], source, mip: int) -> np.ndarray:
    """Row order grouping rows by storage chunk (stable: ties keep input order)."""
    meta = source.meta
    vox = np.floor(np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1) / meta.resolution[mip])
    chunk = np.floor((vox - meta.bounds(mip)[0]) / meta.chunk_size[mip]).astype(np.int64)
    chunk = np.clip(chunk, -1, 1 << 20) + 1
    key = (chunk[:, 0] * (1 << 21) + chunk[:, 1]) * (1 << 21) + chunk[:, 2]
    return np.argsort(key, kind="stable")


def run_partition(path: str, op_name: str, i: int, ctx: Context) -> int:
    """One task: read partition ``i``'s inputs from Zarr, compute, write outputs, mark done."""
    op = OPERATIONS[op_name]
    store = JobStore(path)
    outputs = op.kernel(store.read(store.input_names(), i), ctx)
    store.write(i, outputs)
    return len(next(iter(outputs.values())))


def _existing_job(output: str, force: bool) -> dict | None:
    """The attributes of the job at ``output``; None when there is nothing there worth keeping
    (no path, an empty directory, or anything at all with ``force``). Anything else that is not a
    finished crantseg job set-up is refused, naming the path: a job's group is created with
    ``mode="w"``, which empties whatever directory it is given."""
    if not os.path.exists(output) or (os.path.isdir(output) and not os.listdir(output)):
        return None
    if not os.path.exists(os.path.join(output, "zarr.json")):
        if force:
            return None
        raise InvalidInputError(f"{output} exists and is not a crantseg job: choose another --output, or add --force "
                                "to delete what is there and write the job in its place")
    try:
        return JobStore(output).attrs
    except InvalidInputError:
        if force:
            return None
        raise


def _dataset_identity(spec) -> dict:
    """What makes two datasets the same for resume: the name and where the data comes from."""
    return {"kind": spec.kind, "name": spec.name, "path": spec.path, "server": spec.server,
            "datastack": spec.datastack}


def run_job(op_name: str, input, output, *, dataset=None, timestamp=None, scheduler=None, cluster=None,
            resume: bool = False, force: bool = False, partition_size: int | None = None, progress: bool = True,
            performance_report: str | None = None, n_workers: int = 2, client=None, **args) -> dict:
    """Run job ``op_name`` over ``input`` into the Zarr group ``output``; return a summary dict.

    ``resume=True`` finishes the job at ``output`` if it is the same job (operation, input, arguments,
    timestamp, dataset, store format), reusing its recorded timestamp when ``timestamp`` is None;
    ``force=True`` starts again from scratch instead of refusing (an existing output or a changed job).
    """
    if op_name not in OPERATIONS:
        raise InvalidInputError(f"unknown operation {op_name!r}; operations: {sorted(OPERATIONS)}")
    op = OPERATIONS[op_name]
    if unknown := sorted(set(args) - set(op.defaults)):
        raise InvalidInputError(f"{op_name} takes no argument {', '.join(map(repr, unknown))}; its arguments: "
                                f"{sorted(op.defaults)}")
    args = {**op.defaults, **args}
    t0 = time.perf_counter()
    output = str(output)
    old = _existing_job(output, force)
    if old is not None and not resume and not force:
        raise InvalidInputError(f"{output} already exists: add --resume to finish it or --force to replace it")
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    ts = None
    if op.uses_timestamp:
        if timestamp is None and resume and old is not None and old.get("timestamp"):
            timestamp = old["timestamp"]  # resume the job at its own time, not at a new "now"
        ts = resolve_timestamp(timestamp, source)
    table = read_table(input)
    if len(table) == 0:
        raise InvalidInputError(f"input {input!r} is an empty table: nothing to do")
    inputs = op.inputs(table, args)
    if op.check is not None:
        op.check(inputs, source)
    order = (_locality_order(inputs, source, int(args.get("mip", 0))) if op.locality == "locations"
             else np.arange(len(table)))
    inputs = {"row": order.astype(np.int64), **{k: v[order] for k, v in inputs.items()}}
    fp = fingerprint(inputs)
    attrs = {"version": version("crantseg_dask"), "operation": op_name, "arguments": args,
             "arguments_json": canonical(args), "timestamp": ts.isoformat() if ts else None,
             "dataset": spec.name, "dataset_identity": _dataset_identity(spec), "fingerprint": fp}
    P = int(partition_size or setting("partition-size", 200_000))
    keep = False
    if old is not None and resume:
        keys = ("fingerprint", "arguments_json", "operation", "timestamp", "dataset_identity")
        keep = [old.get(k) for k in keys] + [old.get("format")] == [attrs[k] for k in keys] + [FORMAT]
        if not keep and not force:
            raise InvalidInputError(
                f"{output} holds a job with another input, operation, timestamp, arguments, dataset or store "
                "format; use --force to start it again from scratch"
            )
    if not keep:
        JobStore.create(output, inputs=inputs, outputs=op.outputs, partition_size=P, attrs=attrs)
    store = JobStore(output)
    todo = np.flatnonzero(~store.done()).tolist()
    ctx = Context(spec=spec, timestamp=ts, args=tuple(sorted(args.items())))
    summary = {"output": output, "operation": op_name, "rows": len(table), "partitions": len(store.done()),
               "ran": len(todo), "timestamp": attrs["timestamp"], "dashboard": None}
    if todo:
        from ..cluster import dashboard_link, make_client

        with (contextlib.nullcontext(client) if client is not None
              else make_client(scheduler, cluster, n_workers=n_workers)) as c:
            summary["dashboard"] = dashboard_link(c)
            if progress:
                print(f"dashboard: {summary['dashboard']}", flush=True)
            report = contextlib.nullcontext()
            if performance_report:
                from distributed import performance_report as pr

                report = pr(filename=performance_report)
            with report:
                _submit(c, output, op_name, todo, ctx, _job_token(output, attrs), progress)
        unfinished = np.flatnonzero(~store.done()).tolist()
        if unfinished:
            raise SourceError(f"{output}: partitions {unfinished[:20]}{' ...' if len(unfinished) > 20 else ''} "
                              f"({len(unfinished)} of {summary['partitions']}) were not written although their "
                              "tasks reported success; rerun with --resume")
    if op.ragged and store.done().all() and not store.is_finalized(op.ragged):
        store.finalize_ragged(op.ragged, count_column=next(iter(op.outputs)))
    summary["seconds"] = time.perf_counter() - t0
    summary["status"] = status(output)
    return summary


def _job_token(output: str, attrs: dict) -> str:
    """Task keys of one job: two jobs share tasks only if they write the same output from the same
    input, operation, arguments, timestamp and dataset (then the tasks are the same work)."""
    key = [os.path.abspath(output), attrs["fingerprint"], attrs["operation"], attrs["timestamp"],
           attrs["arguments_json"], canonical(attrs["dataset_identity"])]
    return hashlib.sha256(canonical(key).encode()).hexdigest()[:16]


def _submit(client, output, op_name, todo, ctx, token, progress) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    keys = [f"crantseg-{op_name}-{token}-{i:06d}" for i in todo]
    # retries=0: a task's own failure (auth, bad IDs, a bug) is not transient, and the HTTP layer has
    # already retried what is; tasks lost with a killed worker are rerun by the scheduler
    # (distributed.scheduler.allowed-failures), not by these retries.
    futures = client.map(run_partition, [output] * len(todo), [op_name] * len(todo), todo, [ctx] * len(todo),
                         key=keys, retries=0, pure=False)
    with tqdm(total=len(todo), unit="partition", disable=not progress, desc=op_name) as bar:
        for future in as_completed(futures):
            future.result()  # re-raises a partition's error here, naming it
            bar.update(1)
