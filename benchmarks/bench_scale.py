"""Scale model: the per-unit constants of a snap-and-map job, and miniature jobs that check them.

1. Spatial distribution: distinct storage chunks touched by N rows of the demo's synthetic
   synapse table, fitted with ``scale_model.Clustering`` (neuropil share, clustering shape).
2. Constants: the snap job on ``CONST_ROWS`` rows, run in this process (an in-process Dask
   worker, one thread) against ``crantseg serve`` at 0 ms, every stage timed by the CPU clock of
   the thread that runs it (exclusive of the stages it calls): chunk GET handling (the libcurl thread),
   inflate, full decode, random-access decode and block tests, CAVE requests, the task's own
   work (snapping, roots scatter back), Zarr read and write; driver planning by the wall clock.
   GETs, bytes and IDs are counted; the server's CPU per GET and per CAVE ID from its process.
   Scheduler overhead per task: no-op tasks on the miniature cluster.
3. Miniature: ``run_job("snap")`` on LocalClusters of 2 and 4 one-thread worker processes
   against ``crantseg serve`` with chunk GETs at 50 ms and CAVE requests at 20 ms, at most
   ``CAVE_CAP`` CAVE requests in flight per worker process, at two table sizes; measured wall
   time, GETs and CAVE requests against ``scale_model.predict`` with the constants of step 2.
   Each run also records the CPU of every process of the job (workers, the driver's process with
   the scheduler and nannies, the server) and of the whole machine (/proc/stat): what other
   processes took is the cores the model is not given. The idle cluster's own CPU (per worker
   process, and the driver's) is measured before each run.
4. The CRANT table (10^8 rows; 8, 16, 64, 256 cores) with the settings ``recommend`` picks;
   written with everything else to ``benchmarks/SCALE.md`` (and the constants to
   ``benchmarks/results/scale-constants.json``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import dask
import numpy as np

from bench_storage import Server  # crantseg serve in a subprocess, with CAVE and storage latencies
from crantseg_dask import scale_model as sm

from scale_report import (  # noqa: F401 - the configuration and report, shared with --report
    CAVE_CAP, CAVE_MS, CONST_ROWS, CRANT_CAVE, CRANT_S_PER_ID, CRANT_SVS_PER_TARGET, CRANT_TARGETS_PER_ROW, GET_MS,
    HERE, PARTITION, RESULTS, SIZES, WORKERS, _replace_section, available_cores, mini_cluster, overheads, report)
IDLE_S = 4.0  # s of an idle miniature cluster to measure its own CPU


# -- 1. the spatial distribution ------------------------------------------------------------------
def chunk_ids(table, meta) -> np.ndarray:
    """Linear mip-0 storage chunk of each row (-1 outside the volume)."""
    vox = np.floor(table[["x", "y", "z"]].to_numpy() / np.asarray(meta.resolution[0]))
    lo, hi = meta.bounds(0)
    c = ((vox - lo) // np.asarray(meta.chunk_size[0])).astype(np.int64)
    grid = -(-(hi - lo) // np.asarray(meta.chunk_size[0]))
    inside = np.all((vox >= lo) & (vox < hi), axis=1)
    return np.where(inside, (c[:, 0] * grid[1] + c[:, 1]) * grid[2] + c[:, 2], -1)


def fit_clustering(keys: np.ndarray, n_chunks: int) -> tuple[sm.Clustering, list[tuple[int, int, float]]]:
    """Least-squares fit (in log) of ``Clustering.touched`` to the distinct chunks of the first n rows."""
    from scipy.optimize import least_squares

    keys = keys[keys >= 0]
    ns = np.unique(np.geomspace(300, len(keys), 14).astype(int))
    seen = np.array([len(np.unique(keys[:n])) for n in ns], dtype=float)

    def resid(p):
        c = sm.Clustering(neuropil=p[0], shape=math.exp(p[1]))
        return np.log([c.touched(n, n_chunks) for n in ns]) - np.log(seen)

    fit = least_squares(resid, x0=[0.9, 0.0], bounds=([1e-3, -8], [1.0, 5]))
    c = sm.Clustering(neuropil=float(fit.x[0]), shape=float(math.exp(fit.x[1])))
    return c, [(int(n), int(s), c.touched(n, n_chunks)) for n, s in zip(ns, seen)]


def task_chunks(keys_in_job_order: np.ndarray, partition: int, grid) -> tuple[int, int]:
    """Sums over tasks of the distinct chunks each task's rows touch (its own chunks) and of its halo:
    the chunks in their 26-neighbourhood (inside the grid) that are not its own."""
    k, grid = keys_in_job_order, np.asarray(grid)
    pairs = halo = 0
    for a in range(0, len(k), partition):
        u = np.unique(k[a: a + partition])
        u = u[u >= 0]
        c = np.stack([u // (grid[1] * grid[2]), (u // grid[2]) % grid[1], u % grid[2]], axis=1)
        near = np.concatenate([c + d for d in np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1)
                               .reshape(-1, 3)])
        near = near[np.all((near >= 0) & (near < grid), axis=1)]
        lin = np.unique((near[:, 0] * grid[1] + near[:, 1]) * grid[2] + near[:, 2])
        pairs, halo = pairs + len(u), halo + len(lin) - len(u)
    return pairs, halo


def gets_split(gets: float, pairs: int, halo: int, rounds: float, own_gets: float = 0.0,
               halo_gets: float = 0.0) -> dict:
    """``gets_per_chunk`` and ``gets_per_halo``: the chunk reads counted as a task's own or not
    (``_count_own_and_halo_gets``) over its own chunks and its halo counted on the table. Without
    those counts (a sharded layer): every fetch round reads each own chunk once and the rest of the
    GETs are halo reads; a kernel that reads fewer leaves nothing for the halo: then all GETs per own
    chunk and none per halo chunk."""
    if own_gets >= pairs > 0:  # each own chunk read at least once: the classification worked
        return {"gets_per_chunk": own_gets / pairs, "gets_per_halo": halo_gets / max(1, halo)}
    rest = gets - pairs * rounds
    if rest < 0:
        return {"gets_per_chunk": gets / max(1, pairs), "gets_per_halo": 0.0}
    return {"gets_per_chunk": rounds, "gets_per_halo": rest / max(1, halo)}


# -- 2. the instrumented in-process run -----------------------------------------------------------
class Probe:
    """Exclusive thread-CPU time and calls per stage, from wrappers put on the package's functions."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.count: dict[str, float] = {}
        self.log: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo = []

    def wrap(self, owner, name: str, stage: str, counter=None, log=None):
        fn = getattr(owner, name)
        probe = self

        def wrapper(*a, **k):
            stack = getattr(probe._local, "stack", None)
            if stack is None:
                stack = probe._local.stack = []
            stack.append(0.0)
            t = time.thread_time()
            try:
                out = fn(*a, **k)
            finally:
                dt = time.thread_time() - t
                inner = stack.pop()
                if stack:
                    stack[-1] += dt
                with probe._lock:
                    probe.cpu[stage] = probe.cpu.get(stage, 0.0) + dt - inner
                    probe.calls[stage] = probe.calls.get(stage, 0) + 1
                    if log is not None:
                        probe.log.append(log(a, k, dt - inner))
            if counter is not None:
                with probe._lock:
                    for key, v in counter(a, k, out).items():
                        probe.count[key] = probe.count.get(key, 0.0) + v
            return out

        wrapper.__wrapped__ = fn
        setattr(owner, name, wrapper)
        self._undo.append((owner, name, fn))

    def reset(self) -> None:
        self.cpu.clear(), self.calls.clear(), self.count.clear(), self.log.clear()

    def undo(self) -> None:
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)
        self._undo.clear()
        if getattr(self, "_restore_op", None):
            ops, op = self._restore_op
            ops["snap"] = op


def _ids_counter(key):
    def count(a, k, out):
        ids = np.asarray(a[1], dtype=np.uint64)
        return {key: float(np.count_nonzero(np.unique(ids)))}
    return count


def _leaves_counter(a, k, out):
    return {"targets": float(len(np.unique(np.asarray(a[1], dtype=np.uint64)))),
            "leaves": float(sum(len(v) for v in out.values()))}


def _count_own_and_halo_gets(p: Probe, holder, meta) -> None:
    """Count each mip-0 chunk file read (one GET each) as ``own_gets`` when a row of the running task
    lies in that chunk, else ``halo_gets``. One task at a time (the constants run's single thread)."""
    from crantseg_dask.sources import _chunks

    res, off = np.asarray(meta.resolution[0], float), np.asarray(meta.bounds(0)[0])
    size = np.asarray(meta.chunk_size[0])
    own = {"set": frozenset()}
    kernel, fetch_files = holder.kernel, _chunks.ChunkReader._fetch_files

    def with_own(inputs, *a, **k):
        try:  # a count that fails leaves own_gets short: gets_split then falls back, the run goes on
            vox = np.floor(np.stack([inputs["x"], inputs["y"], inputs["z"]], axis=1) / res).astype(np.int64)
            own["set"] = frozenset(map(tuple, ((vox - off) // size).tolist()))
        except Exception:  # noqa: BLE001
            own["set"] = frozenset()
        return kernel(inputs, *a, **k)

    def counted(self, chunks, mip):
        try:
            if mip == 0:
                n_own = sum(tuple(int(v) for v in c) in own["set"] for c in chunks)
                with p._lock:
                    p.count["own_gets"] = p.count.get("own_gets", 0.0) + n_own
                    p.count["halo_gets"] = p.count.get("halo_gets", 0.0) + len(chunks) - n_own
        except Exception:  # noqa: BLE001
            pass
        return fetch_files(self, chunks, mip)

    holder.kernel = with_own
    _chunks.ChunkReader._fetch_files = counted
    p._undo.append((_chunks.ChunkReader, "_fetch_files", fetch_files))


def instrument(meta=None) -> Probe:
    from crantseg_dask.persist import JobStore
    from crantseg_dask.sources import _chunks, _cseg, _curl, _fetch, _http
    from crantseg_dask.sources.cave import CaveSource

    p = Probe()
    p.wrap(_curl._Driver, "_step", "fetch")  # the HTTP work, on the process's libcurl thread
    p.wrap(_fetch.HttpStore, "result", "fetch")  # and in the caller (checks, gunzip)
    p.wrap(_chunks, "gunzip_if", "inflate")
    p.wrap(_chunks.ChunkReader, "decode", "decode")
    for name in ("decode_points", "decode_positions", "blocks_holding", "decode_box"):
        p.wrap(_cseg, name, "random_access")
    p.wrap(_http.RetryPolicy, "call", "cave")
    p.wrap(JobStore, "read", "read")
    p.wrap(JobStore, "write", "write")
    import types
    from dataclasses import replace as _replace

    from crantseg_dask.jobs.operations import OPERATIONS

    op = OPERATIONS["snap"]
    holder = types.SimpleNamespace(kernel=op.kernel)
    p.wrap(holder, "kernel", "task", log=lambda a, k, cpu: (len(a[0]["x"]), len(np.unique(a[0]["target_id"])), cpu))
    if meta is not None:
        _count_own_and_halo_gets(p, holder, meta)
    OPERATIONS["snap"] = _replace(op, kernel=holder.kernel)
    p._restore_op = (OPERATIONS, op)
    p.wrap(CaveSource, "roots", "roots", _ids_counter("roots_ids"))
    p.wrap(CaveSource, "leaves_many", "leaves_many", _leaves_counter)
    p.wrap(CaveSource, "leaves", "leaves_one", lambda a, k, out: {"targets": 1.0, "leaves": float(len(out))})
    p.wrap(_chunks, "fetch", "fetch_round")
    return p


def measure_planning(spec, tmp: Path, tables: list) -> tuple[float, float]:
    """(fixed s, s per row) of the driver's planning: ``run_job`` up to the submission of its
    tasks (none is run), at two table sizes."""
    from crantseg_dask.errors import SourceError
    from crantseg_dask.jobs import run_job, runner

    submit, times = runner._submit, []
    mark = {}
    runner._submit = lambda *a, **k: mark.setdefault("t", time.perf_counter())
    try:
        for i, table in enumerate(tables):
            table.to_parquet(tmp / f"plan{i}.parquet")
            mark.clear()
            t0 = time.perf_counter()
            try:
                run_job("snap", tmp / f"plan{i}.parquet", tmp / f"plan{i}.zarr", dataset=spec, timestamp="mat",
                        partition_size=PARTITION, client=object(), progress=False, snap_zero=True)
            except SourceError:  # "partitions were not written": expected, no task ran
                pass
            times.append(mark["t"] - t0)
            shutil.rmtree(tmp / f"plan{i}.zarr", ignore_errors=True)
    finally:
        runner._submit = submit
    (n0, t0), (n1, t1) = [(len(t), s) for t, s in zip(tables, times)]
    per_row = max(0.0, (t1 - t0) / (n1 - n0))
    return max(0.0, t0 - per_row * n0), per_row


def measure_constants(path, tmp: Path, table, big) -> tuple[dict, dict]:
    """The constants (``scale_model.Constants`` fields) and the raw measurements behind them."""
    from distributed import Client, LocalCluster

    from crantseg_dask.sources.resolve import resolve_timestamp
    from crantseg_dask.jobs import run_job, runner
    from crantseg_dask.sources import _fetch, open_source

    server = Server(path)
    probe = None
    try:
        spec = server.spec()
        source = open_source(spec)
        resolve_timestamp("mat", source)
        from crantseg_dask.ops import _snap_numba

        _snap_numba.warm_up()  # once per process (numba imported, the kernel loaded): not a per-row cost
        # the server's CPU per GET: every chunk the table touches, read once
        keys = chunk_ids(table, source.meta)
        grid = -(-(np.array(source.meta.size[0])) // np.array(source.meta.chunk_size[0]))
        uk = np.unique(keys[keys >= 0])
        chunks = np.stack([uk // (grid[1] * grid[2]), (uk // grid[2]) % grid[1], uk % grid[2]], axis=1)
        c0 = server.cpu()
        _fetch.reset_stats()
        n = sum(1 for _ in source.read_encoded_many([tuple(c) for c in chunks.tolist()], 0))
        server_per_get = (server.cpu() - c0) / max(1, _fetch.stats["gets"])
        assert n == len(chunks)
        # on the wire a chunk is its stored gzip file; the HTTP client inflates it (libdeflate, in the
        # caller's thread: ``HttpStore.result``, inside the "fetch" stage)
        blobs = [(Path(path) / "segmentation" / (source._reader.filename(c, 0) + ".gz")).read_bytes()
                 for c in chunks.tolist()]
        t = time.thread_time()
        for b in blobs:
            _fetch.gunzip_if(b, "chunk")
        inflate = (time.thread_time() - t) / len(blobs)
        wire = float(np.mean([len(b) for b in blobs]))
        plan_fixed, plan_row = measure_planning(spec, tmp, [big.iloc[:CONST_ROWS], big.iloc[:300_000]])
        table.to_parquet(tmp / "const.parquet")
        probe = instrument(source.meta)
        t_submit = {}
        submit = runner._submit

        def timed_submit(*a, **k):
            t_submit["t"] = time.perf_counter()
            return submit(*a, **k)

        runner._submit = timed_submit
        try:
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
                    Client(lc) as client:
                probe.reset()
                _fetch.reset_stats()
                c0, d0, m0 = server.cpu(), _own_cpu(), machine_cpu()
                t0 = time.perf_counter()
                summary = run_job("snap", tmp / "const.parquet", tmp / "const.zarr", dataset=spec, timestamp="mat",
                                  partition_size=PARTITION, client=client, progress=False, snap_zero=True)
                wall = time.perf_counter() - t0
                server_cpu, process_cpu, m1 = server.cpu() - c0, _own_cpu() - d0, machine_cpu()
        finally:
            runner._submit = submit
            probe.undo()
        plan = t_submit["t"] - t0
        gets, nbytes = _fetch.stats["gets"], _fetch.stats["bytes"]
    finally:
        server.stop()
    cpu, calls, count = dict(probe.cpu), dict(probe.calls), dict(probe.count)
    rows, tasks = len(table), summary["partitions"]
    order = runner._locality_order({"x": table.x.to_numpy(), "y": table.y.to_numpy(), "z": table.z.to_numpy()},
                                   source, 0)
    pairs, halo = task_chunks(keys[order], PARTITION, grid)
    cave_req = calls.get("cave", 0)
    # the task's own CPU, all of it per row. A fit of a x rows + b x distinct targets over this
    # run's tasks is not determined: they have nearly the same rows and targets per row. With the
    # numpy snap gather (before the compiled search) such a fit gave 42.9 us/row + 463 us/target
    # and a model at 0.57x the 240k-row miniature; per row it is 0.8-0.9x.
    log = np.array(probe.log, dtype=float)
    per_row, per_target = log[:, 2].sum() / log[:, 0].sum(), 0.0
    nested = cpu.get("roots", 0) + cpu.get("leaves_many", 0) + cpu.get("leaves_one", 0) + cpu.get("fetch_round", 0)
    ids = 2 * count.get("roots_ids", 0) + count.get("targets", 0) + count.get("leaves", 0)
    const = {
        "fetch_per_get": max(0.0, cpu.get("fetch", 0) / gets - inflate),
        "inflate_per_get": inflate + cpu.get("inflate", 0) / gets,
        "decode_per_get": (cpu.get("decode", 0) + cpu.get("random_access", 0)) / gets,
        "snap_per_row": float(per_row) + nested / rows,
        "snap_per_target": float(per_target),
        "read_per_row": cpu.get("read", 0) / rows,
        "write_per_row": cpu.get("write", 0) / rows,
        "plan_per_row": plan_row,
        "plan_fixed": plan_fixed,
        "cave_cpu_per_request": cpu.get("cave", 0) / max(1, cave_req),
        **gets_split(gets, pairs, halo, calls.get("fetch_round", 0) / tasks, count.get("own_gets", 0.0),
                     count.get("halo_gets", 0.0)),
        "fetch_rounds": calls.get("fetch_round", 0) / tasks,
        "bytes_per_get": wire,
        "svs_per_row": count.get("roots_ids", 0) / rows,
        "targets_per_row": float(log[:, 1].sum() / log[:, 0].sum()),
        "svs_per_target": count.get("leaves", 0) / max(1, count.get("targets", 0)),
        "server_cpu_per_get": server_per_get,
        "cave_s_per_id": max(0.0, server_cpu - gets * server_per_get) / max(1, ids),
    }
    print(f"constants: {const}", flush=True)
    raw = {"rows": rows, "tasks": tasks, "wall_s": wall, "plan_s": plan, "gets": gets, "bytes": nbytes,
           "task_chunk_pairs": pairs, "task_halo_chunks": halo, "cave_requests": cave_req, "cave_ids": ids, "server_cpu_s": server_cpu,
           "process_cpu_s": process_cpu, "machine_busy_s": m1["busy"] - m0["busy"],
           "machine_steal_s": m1["steal"] - m0["steal"],
           "cpu_by_stage_s": cpu, "calls": calls, "counts": count,
           "tasks_rows_targets_cpu": probe.log}
    return const, raw


# -- 3. the miniature -------------------------------------------------------------------------------
def _noop(i):
    return i


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ``ru_maxrss``: that carries over ``exec`` the RSS the
    forking process had (a spawned worker reported the benchmark process's 1.8 GiB as its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_cpu() -> dict:
    """CPU seconds (user + system, all threads) of this worker process and of its parent, the nanny's
    process: for a LocalCluster that is the driver's own process (its nannies are objects there)."""
    import psutil

    me = psutil.Process()
    parent = me.parent()
    t, n = me.cpu_times(), parent.cpu_times() if parent is not None else None
    return {"worker": t.user + t.system, "nanny": (n.user + n.system) if n is not None else 0.0,
            "nanny_pid": parent.pid if parent is not None else -1}


def _nanny_cpu(before: dict, after: dict) -> float:
    """CPU of the nanny processes that are not this (the driver's) process, counted once each."""
    seen = {}
    for k in after:
        if after[k]["nanny_pid"] not in (os.getpid(), -1):
            seen[after[k]["nanny_pid"]] = after[k]["nanny"] - before[k]["nanny"]
    return float(sum(seen.values()))


def machine_cpu() -> dict:
    """Machine-wide CPU seconds from /proc/stat: busy (user, nice, system, irq, softirq), idle, steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return {"busy": (sum(v[:3]) + v[5] + v[6]) / hz, "idle": (v[3] + v[4]) / hz, "steal": v[7] / hz}


def _own_cpu() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _count_cave() -> None:
    from crantseg_dask.sources import _http

    if getattr(_http.RetryPolicy.call, "_counted", False):
        return
    fn = _http.RetryPolicy.call
    box = {"n": 0}

    def call(self, *a, **k):
        box["n"] += 1
        return fn(self, *a, **k)

    call._counted, call._box = True, box
    _http.RetryPolicy.call = call


def _worker_counts() -> dict:
    from crantseg_dask.sources import _fetch, _http

    return {"gets": _fetch.stats["gets"], "bytes": _fetch.stats["bytes"],
            "cave": getattr(_http.RetryPolicy.call, "_box", {"n": 0})["n"]}


def _reset_counts() -> None:
    from crantseg_dask.sources import _fetch, _http

    _fetch.reset_stats()
    box = getattr(_http.RetryPolicy.call, "_box", None)
    if box is not None:
        box["n"] = 0


def _warm(spec) -> None:
    """A worker's one-time set-up, before the timed run: the source opened, the time resolved, and
    the compiled snap search loaded (numba imported, the kernel loaded from its cache: ~1 s per
    process, paid once per worker whatever the table's size)."""
    from crantseg_dask.ops import _snap_numba
    from crantseg_dask.sources.resolve import resolve_timestamp
    from crantseg_dask.sources import open_source

    resolve_timestamp("mat", open_source(spec))
    _snap_numba.warm_up()


def miniature(path, tmp: Path, tables: dict) -> tuple[list[dict], dict]:
    """Measured runs: {workers, rows, wall, gets, bytes, cave}; and scheduler and memory constants."""
    import cloudpickle

    from crantseg_dask.cluster import make_client
    from crantseg_dask.jobs import run_job

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    server = Server(path, latency_ms=CAVE_MS, storage_latency_ms=GET_MS)
    runs, extra = [], {}
    try:
        spec = server.spec()
        for n, table in tables.items():
            table.to_parquet(tmp / f"mini{n}.parquet")
        with dask.config.set({"crantseg.cave.max-concurrency": CAVE_CAP}):
            for w in WORKERS:
                for n in tables:  # a fresh cluster per run: empty caches, no restart
                    with make_client(n_workers=w) as client:
                        if "sched_per_task" not in extra:
                            client.gather(client.map(_noop, range(20), pure=False))
                            t = time.perf_counter()
                            client.gather(client.map(_noop, range(400), pure=False))
                            extra["sched_per_task"] = (time.perf_counter() - t) / 400
                        client.run(_count_cave)
                        t = time.perf_counter()
                        client.run(_warm, spec)
                        warm = time.perf_counter() - t
                        if "job_fixed_wall" not in extra:  # a job's fixed latencies: one row, warm workers
                            one = next(iter(tables.values())).iloc[:1]
                            one.to_parquet(tmp / "one.parquet")
                            t = time.perf_counter()
                            run_job("snap", tmp / "one.parquet", tmp / "one.zarr", dataset=spec, timestamp="mat",
                                    partition_size=PARTITION, client=client, progress=False, snap_zero=True)
                            extra["job_fixed_wall"] = time.perf_counter() - t
                            shutil.rmtree(tmp / "one.zarr", ignore_errors=True)
                        base = max(client.run(_rss_mib).values())
                        # the cluster's own CPU while no task runs (heartbeats, the nannies' memory
                        # monitors, the scheduler): per worker process and second
                        i0, di0, t = client.run(_proc_cpu), _own_cpu(), time.perf_counter()
                        time.sleep(IDLE_S)
                        i1, di1, idle_s = client.run(_proc_cpu), _own_cpu(), time.perf_counter() - t
                        idle = {"worker": sum(i1[k]["worker"] - i0[k]["worker"] for k in i1) / idle_s / w,
                                "nanny": _nanny_cpu(i0, i1) / idle_s / w,
                                "driver": (di1 - di0) / idle_s}
                        client.run(_reset_counts)
                        p0 = client.run(_proc_cpu)
                        c0, d0, m0 = server.cpu(), _own_cpu(), machine_cpu()
                        t = time.perf_counter()
                        run_job("snap", tmp / f"mini{n}.parquet", tmp / f"mini{n}-{w}.zarr", dataset=spec,
                                timestamp="mat", partition_size=PARTITION, client=client, progress=False,
                                snap_zero=True)
                        wall = time.perf_counter() - t
                        server_cpu, driver_cpu, m1 = server.cpu() - c0, _own_cpu() - d0, machine_cpu()
                        p1 = client.run(_proc_cpu)
                        counts = client.run(_worker_counts).values()
                        peak = max(client.run(_peak_mib).values())
                        worker_cpu = sum(p1[k]["worker"] - p0[k]["worker"] for k in p1)
                        nanny_cpu = _nanny_cpu(p0, p1)
                        busy = m1["busy"] - m0["busy"]
                        runs.append({"workers": w, "rows": n, "wall": wall, "warm": warm,
                                     "server_cpu": server_cpu, "worker_cpu": worker_cpu, "nanny_cpu": nanny_cpu,
                                     "driver_cpu": driver_cpu, "machine_busy": busy,
                                     "machine_steal": m1["steal"] - m0["steal"],
                                     "foreign_cpu": max(0.0, busy - worker_cpu - nanny_cpu - driver_cpu - server_cpu),
                                     "gets": sum(c["gets"] for c in counts), "bytes": sum(c["bytes"] for c in counts),
                                     "cave": sum(c["cave"] for c in counts), "base_mib": base, "peak_mib": peak,
                                     "idle_cpu_per_s": idle})
                        print(f"miniature: {runs[-1]}", flush=True)
                        shutil.rmtree(tmp / f"mini{n}-{w}.zarr", ignore_errors=True)
    finally:
        server.stop()
    first = runs[0]
    extra["worker_base_mib"] = first["base_mib"]
    extra["worker_mib_per_row"] = max(0.0, first["peak_mib"] - first["base_mib"]) / PARTITION
    extra.update(overheads(runs))
    return runs, extra


def targets_per_row(table, source, partition: int) -> float:
    """Distinct targets per row of a task, the job's rows in its locality order (from the table alone)."""
    from crantseg_dask.jobs import runner

    order = runner._locality_order({c: table[c].to_numpy() for c in "xyz"}, source, 0)
    t = table["target_id"].to_numpy()[order]
    return sum(len(np.unique(t[a: a + partition])) for a in range(0, len(t), partition)) / len(t)


def run(quick: bool = False) -> list[dict]:
    """Measure (steps 1-3), save every raw figure to ``results/scale-constants.json``, report (step 4)."""
    from crantseg_dask.sources.resolve import local_dataset_path, resolve_dataset
    from crantseg_dask.jobs.demo import synapse_table
    from crantseg_dask.sources import open_source

    t_start = time.perf_counter()
    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    meta = open_source(resolve_dataset(str(path))).meta
    big = synapse_table(path, 10**6, seed=0)
    geometry = sm.Geometry(tuple(int(v) for v in meta.size[0]), tuple(int(v) for v in meta.chunk_size[0]),
                           tuple(float(v) for v in meta.resolution[0]))
    clus, fit = fit_clustering(chunk_ids(big, meta), geometry.n_chunks)
    sizes = tuple(s // 10 for s in SIZES) if quick else SIZES
    tmp = Path(tempfile.mkdtemp(prefix="crantseg-scale-"))
    try:
        const_vals, const_raw = measure_constants(path, tmp, synapse_table(path, CONST_ROWS // (10 if quick else 1),
                                                                          seed=3), big)
        tables = {n: synapse_table(path, n, seed=1) for n in sizes}
        runs, extra = miniature(path, tmp, tables)
        # start-up: what a job of one row takes on the warm cluster (store, one task's round trips,
        # the result), less the driver's fixed planning the model counts apart; workers are warmed
        # before every timed run (their warm-up is reported apart)
        const_raw["job_fixed_wall"] = extra.pop("job_fixed_wall")
        extra["startup"] = max(0.0, const_raw["job_fixed_wall"] - const_vals["plan_fixed"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    source = open_source(resolve_dataset(str(path)))
    keys = {n: chunk_ids(t, meta) for n, t in tables.items()}
    for r in runs:
        t = tables[r["rows"]]
        r["targets_per_row"] = targets_per_row(t, source, PARTITION)
        order = runner_order(t, source)
        r["task_chunk_pairs"], r["task_halo_chunks"] = task_chunks(keys[r["rows"]][order], PARTITION,
                                                                   geometry.grid)
    saved = {"constants": {**const_vals, **extra}, "clustering": asdict(clus), "fit": fit, "raw": const_raw,
             "miniature": runs, "geometry": asdict(geometry),
             "machine": {"node": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
                         "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "seconds": time.perf_counter() - t_start, "quick": quick}}
    if not quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=1, default=float))
    return report(saved, write=not quick)


def runner_order(table, source) -> np.ndarray:
    from crantseg_dask.jobs import runner

    return runner._locality_order({c: table[c].to_numpy() for c in "xyz"}, source, 0)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from run import print_rows

    if "--report" in sys.argv:  # SCALE.md and results/scale.md again from the saved measurements
        import run as bench_run

        saved = json.loads(RESULTS.read_text())
        table = print_rows(report(saved))
        m = saved["machine"]
        preset = os.environ.get("CRANTSEG_BENCH_PRESET", "demo")
        (HERE / "results" / "scale.md").write_text(
            f"## scale\n\n`python benchmarks/run.py scale` on {m['node']} ({m['cores']} cores, Python {m['python']}), "
            f"{m['at']}, {m['seconds']:.0f} s; the model's arithmetic redone by `python benchmarks/bench_scale.py "
            f"--report`.\n\nDataset: {bench_run.dataset_line(preset)}.\n\n{(__doc__ or '').strip()}\n\n{table}\n")
        _replace_section(HERE / "RESULTS.md", (HERE / "results" / "scale.md").read_text())
    else:
        print_rows(run(quick="--quick" in sys.argv))
