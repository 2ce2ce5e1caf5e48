"""The job driver: validate the input, plan partitions, run them on a cluster, resume from Zarr.

``run_job`` resolves the dataset and the timestamp once, validates and normalises the input table
before any work (errors name the bad rows), groups rows by storage chunk for locality, writes the
input columns into the job's Zarr group, and submits one task per unfinished partition. Each task
reads its rows from Zarr (never through the graph), runs the operation's kernel, and writes whole
output chunks, then its ``_done`` entry. ``resume=True`` reruns only unfinished partitions and
refuses a changed input or changed arguments unless ``force=True``.
"""
from __future__ import annotations

import contextlib
import os
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import resolve_dataset, resolve_timestamp, setting
from ..errors import InvalidInputError
from ..persist import JobStore, canonical, fingerprint, status
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
    names = [n for n in store.group.array_keys() if n not in ("_done", "row", *op.outputs)]
    outputs = op.kernel(store.read(names, i), ctx)
    store.write(i, outputs)
    return len(next(iter(outputs.values())))


def run_job(op_name: str, input, output, *, dataset=None, timestamp=None, scheduler=None, cluster=None,
            resume: bool = False, force: bool = False, partition_size: int | None = None, progress: bool = True,
            performance_report: str | None = None, n_workers: int = 2, client=None, **args) -> dict:
    """Run job ``op_name`` over ``input`` into the Zarr group ``output``; return a summary dict."""
    if op_name not in OPERATIONS:
        raise InvalidInputError(f"unknown operation {op_name!r}; operations: {sorted(OPERATIONS)}")
    op = OPERATIONS[op_name]
    args = {**op.defaults, **args}
    t0 = time.perf_counter()
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    ts = resolve_timestamp(timestamp, source) if op.uses_timestamp else None
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
             "dataset": spec.name, "fingerprint": fp}
    output = str(output)
    P = int(partition_size or setting("partition-size", 200_000))
    exists = os.path.exists(os.path.join(output, "zarr.json"))
    if exists and resume:
        old = JobStore(output).attrs
        same = (old.get("fingerprint"), old.get("arguments_json"), old.get("operation"), old.get("timestamp")) == \
            (fp, attrs["arguments_json"], op_name, attrs["timestamp"])
        if not same and not force:
            raise InvalidInputError(
                f"{output} holds a job with another input, operation, timestamp or arguments; "
                "use --force to start it again from scratch"
            )
        if not same:
            exists = False
    elif exists and not force:
        raise InvalidInputError(f"{output} already exists: add --resume to finish it or --force to replace it")
    if not exists or not resume:
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
                _submit(c, output, op_name, todo, ctx, fp, progress)
    if op.ragged and store.done().all():
        store.finalize_ragged(op.ragged, count_column=next(iter(op.outputs)))
    summary["seconds"] = time.perf_counter() - t0
    summary["status"] = status(output)
    return summary


def _submit(client, output, op_name, todo, ctx, fp, progress) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    keys = [f"crantseg-{op_name}-{fp[:10]}-{i:06d}" for i in todo]
    futures = client.map(run_partition, [output] * len(todo), [op_name] * len(todo), todo, [ctx] * len(todo),
                         key=keys, retries=2, pure=False)
    with tqdm(total=len(todo), unit="partition", disable=not progress, desc=op_name) as bar:
        for future in as_completed(futures):
            future.result()  # re-raises a partition's error here, naming it
            bar.update(1)
