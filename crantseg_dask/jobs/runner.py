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
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from .._chunking import chunk_keys, nm_to_voxels
from ..cluster import quiet_teardown
from ..config import setting
from ..errors import CrantsegError, InvalidInputError, JobStoreError, SourceError
from ..ops.extent import inside_volume, outside_message
from ..persist import FORMAT, JobStore, canonical, fingerprint, status, verify
from ..sources import open_source
from ..sources.resolve import resolve_dataset, resolve_timestamp
from .columns import job_columns
from .lock import check_output_path, output_lock
from .validate import check_job_arguments
from .operations import OPERATIONS, Context

__all__ = ["run_job", "run_partition", "read_table", "threads_per_worker"]


def read_table(source) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a parquet / CSV file, or a Zarr group of 1-D arrays."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not str(source).strip():
        raise InvalidInputError("--input '' is empty: give a .parquet, .csv or .zarr table")
    if not path.exists():
        raise InvalidInputError(f"input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    kind = ("parquet" if suffix in (".parquet", ".pq") else "CSV" if suffix in (".csv", ".tsv", ".txt")
            else "Zarr" if suffix == ".zarr" or path.is_dir() else None)
    if kind is None:
        raise InvalidInputError(f"input {str(path)!r}: use a .parquet, .csv or .zarr table")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "CSV":
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        import zarr

        g = zarr.open_group(str(path), mode="r")
        if "crantseg" in g.attrs:  # a job's output: its table, in input order
            from ..persist import read_output

            return read_output(str(path)).reset_index(drop=True)
        return pd.DataFrame({k: np.asarray(g[k][:]) for k in g.array_keys() if g[k].ndim == 1})
    except CrantsegError:
        raise
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, EmptyDataError, ParserError, Zstd, OSError ...
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise InvalidInputError(f"input {str(path)!r} cannot be read as a {kind} table "
                                f"({type(e).__name__}{': ' + msg if msg else ''})") from None


def _locality_order(inputs: dict[str, np.ndarray], source, mip: int) -> np.ndarray:
    """Row order grouping rows by storage chunk at ``mip`` (``_chunking.chunk_keys``; rows outside
    the volume count to the nearest chunk, as the snap plan does). Stable: ties keep input order."""
    meta = source.meta
    bounds = meta.bounds(mip)
    vox = np.clip(nm_to_voxels(np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1), meta.resolution[mip]),
                  bounds[0], bounds[1] - 1)
    return np.argsort(chunk_keys(vox, bounds, meta.chunk_size[mip]), kind="stable")


def run_partition(path: str, op_name: str, i: int, ctx: Context) -> int:
    """One task: read partition ``i``'s inputs from Zarr, compute, write outputs, mark done."""
    op = OPERATIONS[op_name]
    store = JobStore(path)
    inputs = store.read_inputs(i)  # JobStoreError naming file and partition when damaged
    outputs = op.kernel(inputs, ctx)
    store.write(i, outputs)
    return len(next(iter(outputs.values())))


def threads_per_worker(source) -> int:
    """Threads per worker of a job's own local cluster: ``crantseg.storage.job-threads`` (default
    2) when ``source`` reads its layer from remote storage (http(s)://, gs://, s3://), so that one
    task's chunk reads and CAVE requests overlap another task's search; 1 for a ``file://`` layer
    (local reads are CPU-bound: a second thread made that job slower)."""
    reader = getattr(source, "_reader", None)
    layer = str(getattr(reader, "cloudpath", "") or getattr(source, "data_dir", "") or "")
    if not layer or layer.startswith("file://"):
        return 1
    value = setting("storage.job-threads", 2)
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise InvalidInputError(f"crantseg.storage.job-threads={value!r}: give a whole number of threads >= 1")
    return n


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


_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _dataset_identity(spec, source) -> dict:
    """What makes two datasets the same for resume: the name and where the data comes from.

    A local ``crantseg serve`` (a loopback address) is identified by the data it serves (the
    dataset digest in its graphene info), not by its port, so a job survives a restart of the
    server on another port."""
    ident = {"kind": spec.kind, "name": spec.name, "path": spec.path, "server": spec.server,
             "datastack": spec.datastack}
    if spec.kind == "cave" and spec.server:
        host = spec.server.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        try:
            data = (source.segmentation_info or {}).get("crantseg_dataset")
        except Exception:  # noqa: BLE001 - no info: keep the address as the identity
            data = None
        if host in _LOOPBACK and data:
            ident["server"] = "local crantseg serve"
            ident["data"] = data
    return ident


def _differences(old: dict, attrs: dict) -> list[str]:
    """What differs between a stored job and the requested one, each as ``what (old -> new)``."""
    out = []
    if old.get("operation") != attrs.get("operation"):
        out.append(f"operation ({old.get('operation')} -> {attrs.get('operation')})")
    if old.get("fingerprint") != attrs.get("fingerprint"):
        out.append(_input_difference(old, attrs))
    a, b = old.get("arguments") or {}, attrs.get("arguments") or {}
    for key in sorted(set(a) | set(b)):
        if canonical(a.get(key)) != canonical(b.get(key)):
            out.append(f"argument {key} ({a.get(key, '(none)')!r} -> {b.get(key, '(none)')!r})")
    if old.get("arguments_json") != attrs.get("arguments_json") and canonical(a) == canonical(b):
        out.append(f"arguments ({old.get('arguments_json')} -> {attrs.get('arguments_json')})")
    if old.get("timestamp") != attrs.get("timestamp"):
        out.append(f"timestamp ({old.get('timestamp')} -> {attrs.get('timestamp')})")
    if old.get("dataset_identity") != attrs.get("dataset_identity"):
        a, b = old.get("dataset_identity"), attrs.get("dataset_identity")
        oa, na = (a or {}).get("server"), (b or {}).get("server")
        addr = (f"; the server address changed ({old.get('dataset_address')} -> "
                f"{attrs.get('dataset_address')}) and the server does not identify its data as the same"
                if old.get("dataset_address") != attrs.get("dataset_address") else "")
        out.append(f"dataset ({canonical(a)} -> {canonical(b)}{addr})" if oa == na or not addr
                   else f"dataset{addr}")
    if old.get("format") != FORMAT:
        out.append(f"store format ({old.get('format')} -> {FORMAT})")
    return out


def _input_difference(old: dict, attrs: dict) -> str:
    """Which part of the input changed: its rows, its columns, or which columns' values."""
    n_old, n_new = old.get("n_rows"), attrs.get("n_rows")
    if n_old is not None and n_new is not None and n_old != n_new:
        return f"input ({n_old} rows -> {n_new} rows)"
    a, b = old.get("column_fingerprints"), attrs.get("column_fingerprints")
    if isinstance(a, dict) and isinstance(b, dict):
        cols = lambda d: sorted(k for k in d if not k.startswith("_") and k not in ("row", "in_volume"))  # noqa: E731
        if cols(a) != cols(b):
            return f"input columns ({cols(a)} -> {cols(b)})"
        changed = [k for k in cols(a) if a[k] != b[k]] or [k for k in sorted(a) if a.get(k) != b.get(k)]
        return f"input (the values of column{'s' if len(changed) > 1 else ''} {', '.join(changed)} differ)"
    return "input (the table's contents differ)"


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
    args = op.arguments(args)  # unknown names and ill-typed values raise here, before anything is created
    check_job_arguments(args, partition_size=partition_size, n_workers=n_workers, scheduler=scheduler,
                        cluster=cluster, client=client)
    t0 = time.perf_counter()
    output = check_output_path(output)
    with output_lock(output, f"{op_name} -> {output}"):
        try:
            return _run_locked(op, op_name, input, output, t0, dataset=dataset, timestamp=timestamp,
                               scheduler=scheduler, cluster=cluster, resume=resume, force=force,
                               partition_size=partition_size, progress=progress,
                               performance_report=performance_report, n_workers=n_workers, client=client,
                               args=args)
        except OSError as e:
            if isinstance(e, CrantsegError):
                raise
            raise JobStoreError(f"{output}: {type(e).__name__}: {e.strerror or e}"
                                f"{' (' + e.filename + ')' if getattr(e, 'filename', None) else ''}") from None


def _run_locked(op, op_name, input, output, t0, *, dataset, timestamp, scheduler, cluster, resume, force,
                partition_size, progress, performance_report, n_workers, client, args) -> dict:
    old = _existing_job(output, force)
    if old is not None and not resume and not force:
        raise InvalidInputError(f"{output} already exists: add --resume to finish it or --force to replace it")
    spec = resolve_dataset(dataset)
    source = open_source(spec)
    if "mip" in args:
        args["mip"] = source.meta.check_mip(args["mip"])
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
    inputs = {k: v[order] for k, v in inputs.items()}
    sources = {k: args[a] for k, a in (("target_id", "id_column"), ("supervoxel_id", "supervoxel_column"))
               if isinstance(args.get(a), str)}
    flag = op.locality == "locations" and "status" not in op.outputs  # snap has its own out_of_bounds status
    stored, array_attrs, input_map, renamed = job_columns(table.iloc[order].reset_index(drop=True), inputs, sources,
                                                          set(op.outputs) | set(op.ragged) | ({"in_volume"} if flag else set()))
    if flag:
        mip = int(args.get("mip", 0))
        xyz = np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1)
        stored["in_volume"] = inside_volume(xyz, source.meta, mip)
        if not stored["in_volume"].all():  # a warning, not progress: always said
            back = np.empty_like(order)
            back[order] = np.arange(len(order))  # input row order, so the message names the user's first row
            print(f"warning: {outside_message(xyz[back], source.meta, mip, args.get('coordinates', 'nm'), what='rows')}",
                  file=sys.stderr, flush=True)
    inputs = {"row": order.astype(np.int64), **stored}
    fp = fingerprint(inputs)
    attrs = {"version": version("crantseg_dask"), "operation": op_name, "arguments": args,
             "arguments_json": canonical(args), "timestamp": ts.isoformat() if ts else None,
             "dataset": spec.name, "dataset_identity": _dataset_identity(spec, source),
             "dataset_address": spec.server, "fingerprint": fp, "renamed": renamed, "n_rows": len(table),
             "column_fingerprints": {k: fingerprint({k: v}) for k, v in inputs.items()}}
    P = int(partition_size or setting("partition-size", 200_000))
    keep = False
    if old is not None and resume:
        keys = ("fingerprint", "arguments_json", "operation", "timestamp", "dataset_identity")
        keep = [old.get(k) for k in keys] + [old.get("format")] == [attrs[k] for k in keys] + [FORMAT]
        if not keep and not force:
            raise InvalidInputError(
                f"{output} holds a job with another input, operation, timestamp, arguments, dataset or store format "
                f"than the one asked for; differs (stored -> asked for): {'; '.join(_differences(old, attrs))}. "
                "Rerun with the stored values to finish it, or add --force to start it again from scratch")
    repaired = _repair(output, inputs, progress) if keep else {}
    store = JobStore(output)
    pending = (~store.done()).any() if keep else True
    ctx = Context(spec=spec, timestamp=ts, args=tuple(sorted(args.items())))
    summary = {"output": output, "operation": op_name, "rows": len(table), "partitions": 0, "ran": 0,
               "timestamp": attrs["timestamp"], "dashboard": None, **repaired}
    if renamed:
        summary["renamed"] = renamed
    if pending:
        from ..cluster import dashboard_link, make_client

        # the cluster first: a scheduler that cannot be reached leaves no half-created output behind
        with (contextlib.nullcontext(client) if client is not None
              else make_client(scheduler, cluster, n_workers=n_workers,
                               threads_per_worker=threads_per_worker(source))) as c:
            if not keep:
                try:
                    JobStore.create(output, inputs=inputs, outputs=op.outputs, partition_size=P, attrs=attrs,
                                    array_attrs=array_attrs, input_map=input_map)
                except OSError as e:
                    if isinstance(e, CrantsegError):
                        raise
                    raise JobStoreError(f"{output}: cannot create the job's store: {type(e).__name__}: "
                                        f"{e.strerror or e}") from None
            todo = np.flatnonzero(~store.done()).tolist()
            summary["ran"] = len(todo)
            summary["dashboard"] = dashboard_link(c)
            if progress:
                print(f"dashboard: {summary['dashboard']}", flush=True)
            report = contextlib.nullcontext()
            if performance_report:
                from distributed import performance_report as pr

                report = pr(filename=performance_report)
            with report:
                _submit(c, os.path.abspath(output), op_name, todo, ctx, _job_token(output, attrs), progress)
        summary["partitions"] = len(store.done())
        unfinished = np.flatnonzero(~store.done()).tolist()
        if unfinished:
            raise SourceError(f"{output}: partitions {unfinished[:20]}{' ...' if len(unfinished) > 20 else ''} "
                              f"({len(unfinished)} of {summary['partitions']}) were not written although their "
                              "tasks reported success; rerun with --resume")
    summary["partitions"] = len(store.done())
    if op.ragged and store.done().all() and not store.is_finalized(op.ragged):
        store.finalize_ragged(op.ragged, count_column=next(iter(op.outputs)))
    summary["seconds"] = time.perf_counter() - t0
    summary["status"] = status(output)
    return summary


def _repair(output: str, inputs: dict[str, np.ndarray], progress: bool) -> dict:
    """Before resuming: read every chunk; rewrite damaged input chunks from the user's input (the
    same table: its fingerprint matched) and mark partitions with damaged inputs or outputs
    unfinished, so that they are computed again. Returns what was found (for the summary)."""
    store = JobStore(output)
    found = verify(output)
    bad_in, bad_out = found["inputs"], found["outputs"]
    if bad_in:
        store.rewrite_inputs(inputs, sorted(bad_in))
    rerun = sorted(set(bad_in) | set(bad_out))
    if rerun:
        store.mark_undone(rerun)
        if progress:
            for i in rerun:
                print(f"{output}: partition {i} damaged ({'; '.join((bad_in.get(i, []) + bad_out.get(i, []))[:2])}): "
                      f"{'input rewritten from --input and ' if i in bad_in else ''}recomputed", flush=True)
    return {"damaged_inputs": sorted(bad_in), "damaged_outputs": sorted(bad_out)} if rerun else {}


def _job_token(output: str, attrs: dict) -> str:
    """Task keys of one job: two jobs share tasks only if they write the same output from the same
    input, operation, arguments, timestamp and dataset (then the tasks are the same work)."""
    key = [os.path.abspath(output), attrs["fingerprint"], attrs["operation"], attrs["timestamp"],
           attrs["arguments_json"], canonical(attrs["dataset_identity"])]
    return hashlib.sha256(canonical(key).encode()).hexdigest()[:16]


def _submit(client, output, op_name, todo, ctx, token, progress) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]  # per run: a resumed run never meets a failed run's erred tasks
    keys = [f"crantseg-{op_name}-{token}-{run}-{i:06d}" for i in todo]
    # retries=0: a task's own failure (auth, bad IDs, a bug) is not transient, and the HTTP layer has
    # already retried what is; tasks lost with a killed worker are rerun by the scheduler
    # (distributed.scheduler.allowed-failures), not by these retries.
    futures = client.map(run_partition, [output] * len(todo), [op_name] * len(todo), todo, [ctx] * len(todo),
                         key=keys, retries=0, pure=False)
    if not futures:
        return
    with tqdm(total=len(todo), unit="partition", disable=not progress, desc=op_name) as bar, \
            _deferred_interrupt() as interrupted:
        try:
            pending = as_completed(futures)
            while not pending.is_empty():
                if interrupted():
                    raise KeyboardInterrupt
                batch = pending.next_batch(block=False)
                if not batch:
                    time.sleep(0.05)
                for future in batch:
                    future.result()  # re-raises a partition's error here, naming it
                    bar.update(1)
        except KeyboardInterrupt:
            # cancelled tasks, and workers closed mid-connection, are expected now: no log line each.
            # The whole of Dask's logging only on workers this job started (client.cluster is set);
            # a running cluster's workers it shares with others keep their error logs.
            _quiet_cancelled()  # here: the nanny's "still alive, killing" while a cluster= spec's closes
            with contextlib.suppress(Exception):
                client.run(quiet_teardown if client.cluster is not None else _quiet_cancelled)
            client.cancel(futures, force=True)
            raise
        except BaseException:
            client.cancel(futures, force=True)  # no task of a failed run writes after it returns
            raise


def _quiet_cancelled() -> None:
    import logging

    for name in ("distributed.worker.state_machine", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _deferred_interrupt():
    """Ctrl-C (SIGINT) noted, not raised inside Dask's event-loop calls (which would print their
    own tracebacks): the submit loop checks ``interrupted()`` and stops cleanly."""
    import signal
    import threading

    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    old = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, old)
