"""The scale benchmark's configuration and report: SCALE.md and the result rows from the saved
measurements (``results/scale-constants.json``, written by ``bench_scale.run``); also run alone by
``python benchmarks/bench_scale.py --report``."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from crantseg_dask import scale_model as sm

HERE = Path(__file__).resolve().parent
PARTITION = 10_000
SIZES = (60_000, 240_000)
WORKERS = (2, 4)
CONST_ROWS = 60_000
GET_MS, CAVE_MS, CAVE_CAP = 50.0, 20.0, 2
#: assumptions for CRANT that the demo cannot measure (SCALE.md says so)
CRANT_SVS_PER_TARGET = 20_000   # supervoxels of a CRANT neuron a snap target's leaves carry
CRANT_S_PER_ID = 2e-6          # PyChunkedGraph time per ID sent or answered (10k roots in ~20 ms + latency)
CRANT_TARGETS_PER_ROW = 0.4     # distinct targets per row of a task (the demo: 0.36 at 45 rows per chunk)
CRANT_CAVE = {"cave_latency": 0.2, "cave_rate": 50.0, "get_latency": 0.05}
RESULTS = HERE / "results" / "scale-constants.json"


def overheads(runs: list[dict]) -> dict:
    """``worker_overhead_cpu`` (cores per worker process and its nanny) and ``driver_overhead_cpu``
    (cores of the driver and scheduler process): the idle miniature clusters' own CPU, averaged."""
    idle = [r["idle_cpu_per_s"] for r in runs if "idle_cpu_per_s" in r]
    if not idle:
        return {}
    return {"worker_overhead_cpu": float(np.mean([i["worker"] + i["nanny"] for i in idle])),
            "driver_overhead_cpu": float(np.mean([i["driver"] for i in idle]))}


def _own(clus: sm.Clustering, rows: int, partition: int, geometry: sm.Geometry = sm.CRANT) -> float:
    """Chunks a task owns, as ``scale_model.predict`` counts them."""
    tasks = math.ceil(rows / partition)
    return clus.touched(rows, geometry.n_chunks) / tasks + 1.0


def _crant_span(clus: sm.Clustering) -> float:
    """The run of chunks of a CRANT task of ``PARTITION`` rows in a 10^8-row job."""
    return _own(clus, 10**8, PARTITION) * sm.CRANT.n_chunks / clus.touched(10**8, sm.CRANT.n_chunks)


def _span(rows: int, p: sm.Prediction, geometry: sm.Geometry) -> float:
    """A task's run of chunks in the locality order, as ``scale_model.predict`` counts it."""
    return (p.touched_chunks / p.tasks + 1.0) * geometry.n_chunks / max(p.touched_chunks, 1.0)


def available_cores(run: dict, machine_cores: int) -> float:
    """Cores a miniature run had: the machine's, less the CPU other processes (other users' tests, not
    this job: workers, nannies, driver and scheduler, server) used during the run, measured from
    /proc/stat. Runs saved before that was measured: the machine's cores."""
    if "foreign_cpu" not in run:
        return float(machine_cores)
    return max(0.5, machine_cores - run["foreign_cpu"] / run["wall"])


def mini_cluster(run: dict, machine_cores: int = os.cpu_count() or 2) -> sm.Cluster:
    """The miniature's cluster as the model sees it: one-thread workers on the cores they had, with the
    local server on the same cores."""
    return sm.Cluster(workers=run["workers"], threads=1, cores=available_cores(run, machine_cores),
                      get_latency=GET_MS / 1000, cave_latency=CAVE_MS / 1000, cave_concurrency=CAVE_CAP,
                      server_shares_cores=True)


# -- 4. the report -----------------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
    return f"{s:,.1f} s" if s < 600 else f"{s / 60:,.1f} min" if s < 36_000 else f"{s / 3600:,.1f} h"


def crant_rows(const: sm.Constants, clus: sm.Clustering, label: str) -> list[str]:
    out = []
    for cores in (8, 16, 64, 256):
        cluster = sm.crant_cluster(cores, **CRANT_CAVE)
        s, p = sm.recommend(10**8, clus, sm.CRANT, const, cluster, cave_server_concurrency=64,
                            targets_per_row=CRANT_TARGETS_PER_ROW)
        b = ", ".join(f"{k} {_fmt_s(v)}" for k, v in p.bounds.items())
        out.append(f"| {label} | {cores} | **{_fmt_s(p.wall)}** | {p.bottleneck} | {p.gets / 1e6:,.1f} M | "
                   f"{p.bytes / 1e9:,.0f} GB | {p.cave_requests:,.0f} ({p.cave_ids / 1e9:,.2f} G IDs) | "
                   f"{s['partition']:,} | {s['reads_in_flight']} | {s['cave_concurrency']} | "
                   f"{p.worker_mib:,.0f} MiB | {b} |")
    return out


def write_report(clus, fit, const_raw, const: sm.Constants, runs, checks, machine: dict, geometry) -> str:
    c = asdict(const)
    crant_const = replace(const, svs_per_target=CRANT_SVS_PER_TARGET, cave_s_per_id=CRANT_S_PER_ID)
    roots_only = replace(const, svs_per_target=0.0, cave_s_per_id=CRANT_S_PER_ID)
    lost = [r["foreign_cpu"] / (machine["cores"] * r["wall"]) for r in runs if "foreign_cpu" in r]
    lost = f"{min(lost):.0%}-{max(lost):.0%}" if lost else "an unmeasured share"
    head = ("| case | cores | wall | bottleneck | GETs | bytes | CAVE requests | partition | reads in flight "
            "| CAVE concurrency / process | worker memory | bounds |\n|" + "---|" * 12)
    lines = [
        "# Scale model: a 10^8-row snap-and-map job on CRANT",
        "",
        f"`python benchmarks/run.py scale` on {machine['node']} "
        f"({machine['cores']} cores, Python {machine['python']}), {machine['at']}, {machine['seconds']:.0f} s; "
        "`python benchmarks/bench_scale.py --report` redoes the arithmetic below from the saved measurements "
        "(`benchmarks/results/scale-constants.json`). The model is "
        "`crantseg_dask/scale_model.py` (pure arithmetic; its docstring says how a job is counted); "
        "`python -m crantseg_dask.scale_model benchmarks/results/scale-constants.json` reprints the CRANT "
        "lines from the saved constants. Read every measured figure as +-30% (perf-baseline.md).",
        "",
        "## CRANT, 10^8 synapse rows",
        "",
        f"Geometry {sm.CRANT.size} voxels at mip 0, {sm.CRANT.n_chunks:,} storage chunks of 128 x 128 x 32. "
        f"Cluster: one-thread worker processes, nodes of 16 cores with 10 Gbit/s, chunk GETs at "
        f"{CRANT_CAVE['get_latency'] * 1000:.0f} ms, a shared CAVE server answering in "
        f"{CRANT_CAVE['cave_latency'] * 1000:.0f} ms plus {CRANT_S_PER_ID * 1e6:g} us per ID sent or answered "
        "(assumed) and allowing "
        f"{CRANT_CAVE['cave_rate']:.0f} requests/s and 64 concurrent requests to this job; 2 GiB per worker. "
        f"Rows touch {clus.touched(1e8, sm.CRANT.n_chunks):,.0f} chunks "
        f"(fitted distribution below). Settings are `recommend`'s: partition = `--partition-size` / "
        "`crantseg.partition-size`, reads in flight = `crantseg.storage.max-in-flight`, CAVE concurrency = "
        "`crantseg.cave.max-concurrency`.",
        "",
        "Two cases. *As implemented*: the snap kernel fetches each target's leaves (one `leaves_many` per task "
        f"since this branch) to test whether a row is on its target; a CRANT neuron has some "
        f"{CRANT_SVS_PER_TARGET:,} supervoxels (an assumption: the demo's neurons have "
        f"{const.svs_per_target:.0f}), so the leaves answers dominate. *On-target by roots*: the same job if the "
        "test used the root of the row's supervoxel (which the job looks up anyway) and the search compared "
        "roots of the ball's supervoxels: no leaves IDs (the per-target CPU stays). That is the change to make "
        f"before running CRANT. Both assume {CRANT_TARGETS_PER_ROW} distinct targets per row of a task (the demo "
        "table has 0.36 at a similar density of rows per chunk).",
        "",
        head,
        *crant_rows(crant_const, clus, "as implemented"),
        *crant_rows(roots_only, clus, "on-target by roots"),
        "",
        "Which resource to add first when a job is slow: the bottleneck column. `cpu`: cores, as more "
        "one-thread worker processes, on cores nothing else uses (each worker process also spends "
        f"`worker_overhead_cpu` of a core on Dask's own work; the miniature lost {lost} of its cores to "
        "other users' processes, see below); `storage latency`: more reads in flight per worker "
        "(`crantseg.storage.max-in-flight`), then more workers; `cave latency`: more CAVE concurrency per "
        "worker (`crantseg.cave.max-concurrency`) up to the server's limit; `cave`: a higher CAVE rate limit "
        "(more workers do not help); `bandwidth`: nodes with faster network; `scheduler`: larger partitions; "
        "`driver`: planning is serial, split the table. Memory per worker bounds the partition size "
        "(`worker_mib_per_row`), and larger partitions have fewer halo GETs per row.",
        "",
        f"GETs: a task of {PARTITION:,} rows owns about {_own(clus, 10**8, PARTITION):,.0f} CRANT chunks, a run "
        f"in the x-major locality order that is a strip of z columns ({sm.CRANT.grid[2]} chunks each); its halo "
        f"(`Geometry.halo`) is {sm.CRANT.halo(_crant_span(clus)):,.0f} chunks, so the search "
        f"balls' reads across the task's edge ({const.gets_per_halo:.2f} GETs per halo chunk) outnumber its "
        f"{const.gets_per_chunk:g} reads of each own chunk. A compact order (Morton, or z-order over chunk blocks) "
        "would give the same task a halo of about its own size and cut the GETs by about half.",
        "",
        "## Miniature validation (model vs measured)",
        "",
        f"`run_job(\"snap\")` on the demo world, partitions of {PARTITION:,}, LocalCluster of one-thread worker "
        f"processes on this {machine['cores']}-core machine, against `crantseg serve --latency-ms {CAVE_MS:g} "
        f"--storage-latency-ms {GET_MS:g}` (a subprocess on the same cores), `crantseg.cave.max-concurrency` "
        f"{CAVE_CAP}. Workers are warmed (CAVE client built) before the timed run. The model gets the same "
        "constants, the demo geometry, each table's own distinct targets per row of a task and "
        f"`Cluster(workers, cores=C, get_latency={GET_MS / 1000:g}, cave_latency={CAVE_MS / 1000:g}, "
        "server_shares_cores=True)`, where C is the cores the job had: the machine's less what other "
        "processes (other users' tests) used during the run, measured from /proc/stat (`available_cores`). "
        "That is the share they took from the job only while the machine had no idle time left (the idle "
        "column): a job that left cores idle would have given them away, not lost them.",
        "",
        "| rows | workers | measured wall | model wall | model/measured | bottleneck | cores C (others' CPU; machine idle) "
        "| CPU measured / model | GETs measured / model | CAVE requests measured / model | bounds (model) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, p in zip(runs, checks):
        b = ", ".join(f"{k} {v:.1f} s" for k, v in p.bounds.items())
        cores = available_cores(r, machine["cores"])
        if "worker_cpu" in r:
            used = r["worker_cpu"] + r["nanny_cpu"] + r["driver_cpu"] + r["server_cpu"]
            model_cpu = p.cpu + p.wall * (r["workers"] * const.worker_overhead_cpu + const.driver_overhead_cpu)
            cpu = f"{used:.0f} s / {model_cpu:.0f} s"
            idle = max(0.0, 1 - r["machine_busy"] / (machine["cores"] * r["wall"]))
            other = f"{cores:.2f} ({r['foreign_cpu']:.0f} s; idle {idle:.0%})"
        else:
            cpu, other = f"- / {p.cpu:.0f} s", f"{cores:.2f} (not measured)"
        lines.append(f"| {r['rows']:,} | {r['workers']} | {r['wall']:.1f} s | {p.wall:.1f} s | "
                     f"{p.wall / r['wall']:.2f} | {p.bottleneck} | {other} | {cpu} | {r['gets']:,} / {p.gets:,.0f} | "
                     f"{r['cave']:,} / {p.cave_requests:,.0f} | {b} |")
    worst = max(abs(p.wall / r["wall"] - 1) for r, p in zip(runs, checks))
    whole = [sm.predict(r["rows"], PARTITION, clus, geometry, const,
                        replace(mini_cluster(r, machine["cores"]), cores=machine["cores"]), r["targets_per_row"]).wall
             / r["wall"] for r in runs]
    full = f"{min(whole):.2f}-{max(whole):.2f}"
    lines += ["", f"Largest disagreement: {worst:.0%} ({'within' if worst <= 0.3 else 'OUTSIDE'} the 30% bar).",
              "CPU measured: the worker processes, the driver's process (with the scheduler and the "
              "LocalCluster's nannies) and the server; the model's: the tasks' and the server's CPU plus the "
              "cluster's own overhead over the model's wall time. Measured CAVE requests include a few per worker "
              "process made once (set-up, not per task), which the model leaves out (it counts the tasks'). "
              f"Given all {machine['cores']} cores instead of C, the model would say {full} of the measured "
              "time: the gap the previous version of this model had. "
              f"Worker warm-up (import caveclient, build the CAVE client) before each run: "
              f"{', '.join('%.1f s' % r['warm'] for r in runs)}.", ""]
    if "task_halo_chunks" in runs[0]:
        lines += ["Halo chunks (`Geometry.halo`, the chunks next to a task's own): counted on each table / model: "
                  + ", ".join(f"{r['rows']:,} rows {r['task_halo_chunks']:,} / "
                              f"{p.tasks * geometry.halo(_span(r['rows'], p, geometry)):,.0f}"
                              for r, p in zip(runs[:len(SIZES)], checks)) + ".", ""]
    lines += ["## Constants (measured in the same command)", "",
              f"Snap job on {const_raw['rows']:,} demo synapse rows, {const_raw['tasks']} tasks of {PARTITION:,}, "
              f"one in-process worker thread, `crantseg serve` at 0 ms; wall {const_raw['wall_s']:.1f} s.", "",
              "| constant | value | unit |", "|---|---|---|"]
    units = {"fetch_per_get": ("us CPU per GET: fetch handling (the libcurl thread and the caller's checks)", 1e6),
             "inflate_per_get": ("us CPU per GET: inflate (gunzip)", 1e6),
             "decode_per_get": ("us CPU per GET: decode (full chunk or random access, block tests)", 1e6),
             "snap_per_row": ("us CPU per row: the task's own work (plan in task, snap, roots scatter back)", 1e6),
             "snap_per_target": ("us CPU per distinct target of a task (leaves test, erosion, KD-tree)", 1e6),
             "read_per_row": ("us CPU per row: read the task's inputs from Zarr", 1e6),
             "write_per_row": ("us CPU per row: write the outputs", 1e6),
             "plan_per_row": ("us wall per row: driver (read, validate, locality order, fingerprint, input store)", 1e6),
             "plan_fixed": ("s wall: driver's fixed planning (source, timestamp, store creation)", 1),
             "cave_cpu_per_request": ("ms client CPU per CAVE request", 1e3),
             "sched_per_task": ("ms wall per task: scheduler round trip (no-op tasks, 2 workers)", 1e3),
             "gets_per_chunk": ("GETs per (task, own chunk): reads of chunks holding the task's rows", 1),
             "gets_per_halo": ("GETs per halo chunk of a task: reads of the other chunks, over the halo", 1),
             "worker_overhead_cpu": ("cores per worker process + nanny for Dask's own work (idle cluster)", 1),
             "driver_overhead_cpu": ("cores of the driver + scheduler process (idle cluster)", 1),
             "fetch_rounds": ("fetch rounds per task", 1),
             "bytes_per_get": ("KiB on the wire per GET", 1 / 1024),
             "svs_per_row": ("unique supervoxels per row of a task (roots IDs)", 1),
             "targets_per_row": ("distinct targets per row of a task (leaves_many IDs)", 1),
             "svs_per_target": ("leaves per target (demo neurons)", 1),
             "batch": ("IDs per CAVE request (crantseg.batch-size)", 1),
             "startup": ("s start-up: a one-row job on the warm miniature cluster, less plan_fixed", 1),
             "worker_base_mib": ("MiB resident per worker, source open", 1),
             "worker_mib_per_row": ("MiB peak per row of a task", 1),
             "server_cpu_per_get": ("us local-server CPU per GET (miniature only)", 1e6),
             "cave_s_per_id": ("us CAVE server time per ID sent or answered", 1e6)}
    for k, v in c.items():
        name, scale = units[k]
        lines.append(f"| `{k}` | {v * scale:,.3g} | {name} |")
    lines += ["", "CPU by stage in that run (s, exclusive): "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(const_raw["cpu_by_stage_s"].items())),
              f"GETs {const_raw['gets']:,}, task-chunk pairs {const_raw['task_chunk_pairs']:,}, CAVE requests "
              f"{const_raw['cave_requests']:,}, server CPU {const_raw['server_cpu_s']:.1f} s.", ""]
    if "process_cpu_s" in const_raw:  # a check of the overhead constants on a run they were not measured on
        stages = sum(const_raw["cpu_by_stage_s"].values()) + const_raw["plan_s"]
        idle = const_raw["wall_s"] * (const.worker_overhead_cpu + const.driver_overhead_cpu)
        lines += [f"That run's process (driver, scheduler and the one worker) used {const_raw['process_cpu_s']:.1f} s "
                  f"of CPU: {stages:.1f} s in the timed stages and planning, {const_raw['process_cpu_s'] - stages:.1f} s "
                  f"besides, against {idle:.1f} s that `worker_overhead_cpu` + `driver_overhead_cpu` (from the idle "
                  "miniature clusters) give for its wall time.", ""]
    lines += ["## Spatial distribution", "",
              f"The demo's synthetic synapse table (points near random supervoxels; {geometry.n_chunks:,} chunks): "
              f"fitted neuropil share f = {clus.neuropil:.3f}, clustering shape k = {clus.shape:.3f} "
              "(`Clustering.touched`), carried to CRANT unchanged.", "",
              "| rows | chunks touched (table) | model |", "|---|---|---|"]
    lines += [f"| {n:,} | {s:,} | {m:,.0f} |" for n, s, m in fit]
    lines += ["", "Not modelled: retries and failures, stragglers, the driver reading a 10^8-row table (it holds "
              "the table in memory: about 5 GB for x, y, z and a target), CAVE server time beyond latency + per ID, "
              "and real CRANT chunks (more labels, less compressible than the demo's).", ""]
    return "\n".join(lines)




def _replace_section(path: Path, section: str) -> None:
    """Replace the ``## scale`` section of RESULTS.md (up to the next ``## ``) with ``section``."""
    text = path.read_text()
    a = text.find("\n## scale\n")
    if a < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    b = text.find("\n## ", a + 1)
    path.write_text(text[:a + 1] + section.rstrip("\n") + "\n" + (text[b:] if b >= 0 else ""))


def report(saved: dict, write: bool = True) -> list[dict]:
    """The model against the saved measurements: SCALE.md (``write``) and the result rows. Runs
    alone (``python benchmarks/bench_scale.py --report``) to redo the arithmetic on saved figures."""
    const = sm.Constants(**{**overheads(saved["miniature"]), **saved["constants"]})
    clus = sm.Clustering(**saved["clustering"])
    g = saved["geometry"]
    geometry = sm.Geometry(tuple(g["size"]), tuple(g["chunk"]), tuple(g["resolution"]))
    runs = saved["miniature"]
    checks = [sm.predict(r["rows"], PARTITION, clus, geometry, const, mini_cluster(r, saved["machine"]["cores"]),
                         r["targets_per_row"]) for r in runs]
    text = write_report(clus, saved["fit"], saved["raw"], const, runs, checks, saved["machine"], geometry)
    if write:
        (HERE / "SCALE.md").write_text(text)
    else:
        print(text)
    rows = []
    for r, p in zip(runs, checks):
        rows.append({"benchmark": "scale model vs miniature", "case": f"{r['rows']:,} rows, {r['workers']} workers",
                     "ours": f"model {p.wall:.1f} s ({p.bottleneck})", "peer": "measured",
                     "peer_value": f"{r['wall']:.1f} s", "ratio": p.wall / r["wall"]})
    for cores in (8, 16, 64, 256):
        s, p = sm.recommend(10**8, clus, sm.CRANT, replace(const, svs_per_target=0.0, cave_s_per_id=CRANT_S_PER_ID),
                            sm.crant_cluster(cores, **CRANT_CAVE), cave_server_concurrency=64,
                            targets_per_row=CRANT_TARGETS_PER_ROW)
        rows.append({"benchmark": "CRANT 10^8 rows (on-target by roots)", "case": f"{cores} cores",
                     "ours": f"{_fmt_s(p.wall)} ({p.bottleneck})", "peer": "settings", "peer_value": str(s),
                     "ratio": ""})
    return rows


