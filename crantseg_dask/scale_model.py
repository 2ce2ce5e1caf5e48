"""A scale model of a snap-and-map job: wall time, bytes, GETs, CAVE requests and the bottleneck.

Pure arithmetic, no I/O. The per-unit constants (``Constants``) are measured on the embedded
dataset by ``python benchmarks/run.py scale`` (``benchmarks/bench_scale.py``), which also runs
miniature jobs against the local server with latency and checks this model against them;
``benchmarks/SCALE.md`` holds the constants, that validation and the CRANT table.

How a job is counted (``predict``); units in brackets, and where each constant is measured:

* ``tasks = ceil(rows / partition)``; rows are sorted by storage chunk, so a task's rows are a
  contiguous run of chunks and the tasks touch ``touched(rows) + tasks`` chunks in all (each task
  boundary splits one chunk). ``touched`` is the spatial distribution (``Clustering``, fitted on the
  demo's synapse table).
* GETs [requests]: ``gets_per_chunk`` per own chunk of a task (about one per fetch round), and
  the search balls and snapped points reach into the task's halo, the chunks next to its run
  (``Geometry.halo``: the locality order is x-major, so a run is a strip of z columns with a slab
  on either side): ``gets_per_halo`` per halo chunk [GETs/chunk]. Both counted in the constants
  run, each chunk read classed as the running task's own or not, over the own and halo chunks
  counted on its table. ``bytes = GETs x bytes_per_get`` [bytes, the stored gzip files].
* CAVE requests per task: ``ceil(svs_per_row x partition / batch)`` roots requests and
  ``ceil(targets_per_row x partition / batch)`` leaves requests; the leaves answers carry
  ``targets x svs_per_target`` IDs (counted in the constants run).
* CPU per task [s, one thread; thread CPU clock per stage in the constants run]: rows x (snap +
  scatter + read + write per row) + targets x CPU per target + GETs x (fetch handling + inflate +
  decode per GET) + CAVE requests x client CPU per request.
* Time per task on its thread [s]: its CPU plus the latency it waits for: ``fetch_rounds`` rounds of
  chunk reads, each ``ceil(reads of the round / reads in flight)`` GET latencies, and its CAVE
  requests one after another (``cave_latency + ids x cave_s_per_id`` each; ``cave_s_per_id``: the
  local server's CPU per ID in the constants run, less its CPU per GET).
* Cores [cores]: the cluster's (``Cluster.cores``: for a worker pool, workers x threads; for the
  miniature, the machine's cores less what other processes took during the run). Dask's own work
  takes ``workers x worker_overhead_cpu`` of them (heartbeats, the event loop, the profiler in every
  worker process; measured on the idle miniature cluster) and, when the driver, scheduler and a
  local server run on the same cores (``server_shares_cores``), ``driver_overhead_cpu`` more (the
  scheduler and the nannies of a LocalCluster live in the driver's process) plus the server's CPU
  per GET (``server_cpu_per_get``) and per CAVE ID.
* Wall time [s] = start-up + driver planning (fixed + rows x per row, serial; timed in the
  constants run) + the largest of these bounds: ``cpu`` (all the CPU above / the cores left for
  it), ``worker`` (rounds of tasks over the worker threads x time per task), ``bandwidth`` (bytes /
  bandwidth), ``cave`` (requests / the CAVE rate the cluster can get: the server's rate limit, or
  concurrency / latency), ``scheduler`` (tasks x scheduler time per task, no-op tasks on the
  miniature cluster). The largest is the bottleneck; when it is ``worker``, the part of a task's
  time that is largest names it (``cpu``, ``storage latency``, ``cave latency``); ``driver`` when
  the serial planning is longer than all of them.

``recommend`` searches partition sizes and reads in flight for the smallest predicted wall time
that fits worker memory, and sets the CAVE concurrency per process so the cluster stays within
the server's concurrency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = ["Geometry", "Clustering", "Constants", "Cluster", "Prediction", "predict", "recommend",
           "CRANT", "DEMO", "crant_cluster", "main"]


@dataclass(frozen=True)
class Geometry:
    """A segmentation layer at mip 0: size and storage chunk in voxels, resolution in nm."""

    size: tuple[int, int, int]
    chunk: tuple[int, int, int] = (128, 128, 32)
    resolution: tuple[float, float, float] = (16.0, 16.0, 42.0)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Storage chunks along x, y, z."""
        return tuple(-(-s // c) for s, c in zip(self.size, self.chunk))

    @property
    def n_chunks(self) -> int:
        return math.prod(self.grid)

    def halo(self, span: float) -> float:
        """Chunks next to a task's chunks (26-neighbourhood) but not its own, for a task whose chunks
        are a run of ``span`` consecutive chunks in the job's locality order (``_chunking.chunk_keys``:
        x-major, z fastest; grid gx x gy x gz). A run shorter than a z column is a box of 1 x 1 x S
        (halo 9 (S + 2) - S); a longer one covers S / gz columns of an x slab (gy x gz chunks): two
        more columns in its own slab and its footprint widened by a column each way in the slabs on
        either side (one side only for the 2 of gx slabs at the volume's faces); from one slab on,
        those two neighbour slabs whole:

            halo(S) = 2 gz + 2 (1 - 1/gx) min(S + 2 gz, gy gz)   (S >= gz)

        (checked against the exact count on the demo's tables in ``benchmarks/SCALE.md``)."""
        gx, gy, gz = self.grid
        if span <= 0:
            return 0.0
        if span < gz:
            h = 9.0 * (span + 2.0) - span
        else:
            h = 2.0 * gz + 2.0 * (1.0 - 1.0 / gx) * min(span + 2.0 * gz, gy * gz)
        return min(h, max(0.0, self.n_chunks - span))  # a run over (nearly) everything has no halo


#: CRANT's segmentation at mip 0 (about 5.6 M storage chunks) and the embedded demo world
CRANT = Geometry((22_500, 21_500, 6_100))
DEMO = Geometry((2048, 2048, 256))


@dataclass(frozen=True)
class Clustering:
    """How rows fall into storage chunks: a share ``neuropil`` of the chunks can hold rows, and the
    rate of rows per such chunk is Gamma-distributed with shape ``shape`` (small: clustered; large:
    uniform over the neuropil). N rows then touch, in expectation (negative-binomial occupancy),

        touched(N) = M f (1 - (1 + N / (M f k)) ** -k),   M chunks, f = neuropil, k = shape.

    Both numbers are fitted on the demo's synthetic synapse table (``bench_scale``) and carried to
    another geometry unchanged: the same share of chunks in neuropil, the same unevenness."""

    neuropil: float
    shape: float

    def touched(self, rows: float, n_chunks: int) -> float:
        m = n_chunks * self.neuropil
        if rows <= 0 or m <= 0:
            return 0.0
        return m * (1.0 - (1.0 + rows / (m * self.shape)) ** -self.shape)


@dataclass(frozen=True)
class Constants:
    """Per-unit costs of the snap-and-map job (seconds of CPU unless named otherwise)."""

    fetch_per_get: float      # client CPU handling one chunk GET (HTTP, libcurl)
    inflate_per_get: float    # gunzip of one chunk
    decode_per_get: float     # decode: full chunk or random access, block tests, averaged per GET
    snap_per_row: float       # the kernel's own work per row: planning in the task, snapping, scatter back
    snap_per_target: float    # ... and per distinct target of a task (its leaves test, erosion, KD-tree)
    read_per_row: float       # reading a task's input rows from the job's Zarr store
    write_per_row: float      # writing a task's output rows
    plan_per_row: float       # driver: validate, locality order, fingerprint, write the input store (s wall)
    cave_cpu_per_request: float  # client CPU of one CAVE request
    sched_per_task: float     # scheduler + worker overhead per task, s of wall (serial in the scheduler)
    gets_per_chunk: float     # GETs per (task, own chunk) pair: one per fetch round
    fetch_rounds: float       # rounds of concurrent chunk reads per task
    bytes_per_get: float      # bytes on the wire per GET
    svs_per_row: float        # unique non-zero supervoxels per row of a task (roots request IDs)
    targets_per_row: float    # distinct snap targets per row of a task (leaves request IDs)
    svs_per_target: float     # supervoxels (leaves) per target
    gets_per_halo: float = 0.0  # GETs per halo chunk of a task (``Geometry.halo``)
    worker_overhead_cpu: float = 0.0  # cores each worker process (and its nanny, if a process of its own) keeps
                                      # busy with Dask's own work (heartbeats, event loop, profiler), tasks or not
    driver_overhead_cpu: float = 0.0  # cores the driver's process (scheduler, a LocalCluster's nannies) keeps busy
    batch: int = 10_000       # IDs per CAVE request
    plan_fixed: float = 0.0   # driver: fixed part of planning (open the source, create the store), s
    startup: float = 0.0      # cluster start and first-task set-up, s
    worker_base_mib: float = 300.0  # resident memory of a worker with the source open
    worker_mib_per_row: float = 0.005  # extra peak memory per row of a task
    server_cpu_per_get: float = 0.0    # a local server's CPU per GET (only when it shares the cores)
    cave_s_per_id: float = 0.0         # CAVE server time per ID sent or answered (added to a request's
                                       # latency; and a local server's CPU when it shares the cores)


@dataclass(frozen=True)
class Cluster:
    """Workers and the services they talk to."""

    workers: int                 # worker processes
    threads: int = 1             # threads per worker (one: the cseg decoder holds the GIL)
    cores: float | None = None   # cores the workers (and a local server) share; None: workers x threads
    bandwidth: float = float("inf")  # bytes/s into the cluster from storage
    get_latency: float = 0.05    # s per chunk GET
    reads_in_flight: int = 256   # per worker process (crantseg.storage.max-in-flight)
    cave_latency: float = 0.02   # s per CAVE request (plus cave_s_per_id per ID)
    cave_concurrency: int = 4    # per worker process (crantseg.cave.max-concurrency)
    cave_rate: float = float("inf")  # requests/s the CAVE server allows this job
    server_shares_cores: bool = False  # the storage/CAVE server, driver and scheduler run on the workers' cores

    @property
    def slots(self) -> int:
        return self.workers * self.threads

    @property
    def n_cores(self) -> float:
        return float(self.cores if self.cores is not None else self.slots)


@dataclass(frozen=True)
class Prediction:
    wall: float
    bounds: dict = field(default_factory=dict)
    bottleneck: str = ""
    tasks: int = 0
    touched_chunks: float = 0.0
    gets: float = 0.0
    bytes: float = 0.0
    cave_requests: float = 0.0
    cave_ids: float = 0.0
    cpu: float = 0.0
    task_seconds: float = 0.0
    worker_mib: float = 0.0
    serial: float = 0.0


def predict(rows: int, partition: int, clustering: Clustering, geometry: Geometry, const: Constants,
            cluster: Cluster, targets_per_row: float | None = None) -> Prediction:
    """Predicted cost of a snap-and-map job of ``rows`` rows in partitions of ``partition`` rows.

    ``targets_per_row``: distinct snap targets per row of a task, a property of the table and the
    partition size (None: ``const.targets_per_row``, the constants run's)."""
    tpr = const.targets_per_row if targets_per_row is None else targets_per_row
    tasks = max(1, math.ceil(rows / partition))
    per_task = rows / tasks
    touched = clustering.touched(rows, geometry.n_chunks)
    own = touched / tasks + 1.0  # chunks per task: its share of the touched ones and the one split with the next
    span = own * geometry.n_chunks / max(touched, 1.0)  # chunks between its first and last in the locality order
    halo = tasks * geometry.halo(span)
    gets = const.gets_per_chunk * (touched + tasks) + const.gets_per_halo * halo
    gets_task = gets / tasks
    roots_req = math.ceil(const.svs_per_row * per_task / const.batch)
    targets_task = tpr * per_task
    leaves_req = math.ceil(targets_task / const.batch)
    cave_task = roots_req + leaves_req
    ids_task = const.svs_per_row * per_task * 2 + targets_task * (1 + const.svs_per_target)  # sent + answered
    cpu_task = (per_task * (const.snap_per_row + const.read_per_row + const.write_per_row)
                + targets_task * const.snap_per_target
                + gets_task * (const.fetch_per_get + const.inflate_per_get + const.decode_per_get)
                + cave_task * const.cave_cpu_per_request)
    rounds = max(1.0, const.fetch_rounds)
    wait_get = rounds * math.ceil(gets_task / rounds / max(1, cluster.reads_in_flight)) * cluster.get_latency
    wait_cave = cave_task * cluster.cave_latency + ids_task * const.cave_s_per_id
    task_s = cpu_task + wait_get + wait_cave
    cpu = tasks * cpu_task
    if cluster.server_shares_cores:
        cpu += gets * const.server_cpu_per_get + tasks * ids_task * const.cave_s_per_id
    # the cores left for that CPU: Dask's own work in every worker process (and the driver and scheduler
    # when they are on the same cores) runs whether tasks do or not
    usable = cluster.n_cores - cluster.workers * const.worker_overhead_cpu
    if cluster.server_shares_cores:
        usable -= const.driver_overhead_cpu
    usable = max(usable, 0.05 * cluster.n_cores)
    cave_conc = cluster.workers * min(cluster.threads, cluster.cave_concurrency)
    cave_rate = min(cluster.cave_rate, cave_conc / (cluster.cave_latency + ids_task / cave_task * const.cave_s_per_id))
    bounds = {
        "cpu": cpu / usable,
        "worker": math.ceil(tasks / cluster.slots) * task_s,
        "bandwidth": gets * const.bytes_per_get / cluster.bandwidth,
        "cave": tasks * cave_task / cave_rate,
        "scheduler": tasks * const.sched_per_task,
    }
    bottleneck = max(bounds, key=bounds.get)
    wall = bounds[bottleneck]
    if bottleneck == "worker":  # each thread's own time: name what fills it
        bottleneck = max((("cpu", cpu_task), ("storage latency", wait_get), ("cave latency", wait_cave)),
                         key=lambda kv: kv[1])[0]
    serial = const.startup + const.plan_fixed + rows * const.plan_per_row
    mib = const.worker_base_mib + const.worker_mib_per_row * per_task * cluster.threads
    if serial > wall:
        bottleneck = "driver"
    return Prediction(wall=serial + wall, bounds=bounds, bottleneck=bottleneck, tasks=tasks,
                      touched_chunks=touched, gets=gets, bytes=gets * const.bytes_per_get,
                      cave_requests=tasks * cave_task, cave_ids=tasks * ids_task, cpu=cpu, task_seconds=task_s,
                      worker_mib=mib, serial=serial)


PARTITIONS = (10_000, 25_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
IN_FLIGHT = (8, 16, 32, 48, 64, 128, 256)


def recommend(rows: int, clustering: Clustering, geometry: Geometry, const: Constants, cluster: Cluster, *,
              worker_mib: float = 2048.0, cave_server_concurrency: int | None = None,
              targets_per_row: float | None = None):
    """(settings, prediction): among the partition sizes and reads in flight whose worker fits
    ``worker_mib`` and whose predicted wall time is within 2% of the best, the fewest reads in
    flight, then the largest partition (fewer tasks for the scheduler); the CAVE concurrency per process is the
    worker's threads, lowered so the cluster's total stays within ``cave_server_concurrency``."""
    conc = cluster.threads
    if cave_server_concurrency is not None:
        conc = max(1, min(conc, cave_server_concurrency // max(1, cluster.workers)))
    fits = []
    for f in IN_FLIGHT:
        for p in PARTITIONS:
            c = replace(cluster, reads_in_flight=f, cave_concurrency=conc)
            pred = predict(rows, p, clustering, geometry, const, c, targets_per_row)
            if pred.worker_mib <= worker_mib:
                fits.append((pred.wall, f, -p, pred))
    if not fits:
        raise ValueError(f"no partition size fits {worker_mib} MiB per worker")
    best = min(w for w, *_ in fits)
    _, f, p, pred = min((x for x in fits if x[0] <= 1.02 * best), key=lambda x: (x[1], x[2]))
    return {"partition": -p, "reads_in_flight": f, "cave_concurrency": conc}, pred


def crant_cluster(cores: int, *, get_latency: float = 0.05, cave_latency: float = 0.2,
                  cave_rate: float = 50.0, node_cores: int = 16, node_gbit: float = 10.0) -> Cluster:
    """A cluster of ``cores`` one-thread workers on nodes of ``node_cores`` cores with
    ``node_gbit`` Gbit/s each, reading a cloud bucket at ``get_latency`` and asking a shared CAVE
    server that answers in ``cave_latency`` and allows ``cave_rate`` requests/s to this job."""
    nodes = max(1, math.ceil(cores / node_cores))
    return Cluster(workers=cores, threads=1, bandwidth=nodes * node_gbit * 1e9 / 8, get_latency=get_latency,
                   cave_latency=cave_latency, cave_rate=cave_rate)


def main(argv: list[str] | None = None) -> int:
    """``python -m crantseg_dask.scale_model CONSTANTS.json [--rows N] [--cores 8 16 64 256]``:
    the CRANT table from constants saved by ``benchmarks/run.py scale``."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m crantseg_dask.scale_model", description=main.__doc__)
    p.add_argument("constants", help="scale-constants.json written by `python benchmarks/run.py scale`")
    p.add_argument("--rows", type=float, default=1e8)
    p.add_argument("--cores", type=int, nargs="+", default=[8, 16, 64, 256])
    a = p.parse_args(argv)
    with open(a.constants) as f:
        saved = json.load(f)
    const, clus = Constants(**saved["constants"]), Clustering(**saved["clustering"])
    for cores in a.cores:
        s, pred = recommend(int(a.rows), clus, CRANT, const, crant_cluster(cores))
        print(f"{cores:>4} cores: {pred.wall / 60:8.1f} min, bottleneck {pred.bottleneck}, {pred.gets:,.0f} GETs, "
              f"{pred.bytes / 1e9:,.1f} GB, {pred.cave_requests:,.0f} CAVE requests; settings {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
