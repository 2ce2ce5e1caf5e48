"""The scale model's arithmetic (``crantseg_dask.scale_model``) against a case computed by hand."""
from __future__ import annotations

import math

import pytest

from crantseg_dask import scale_model as sm

# A 4 x 4 x 4 volume in chunks of 2 x 2 x 2: M = 8 chunks. Half of them neuropil (f = 0.5),
# shape k = 1, so M f = 4 and touched(N) = 4 (1 - 1 / (1 + N / 4)).
GEOMETRY = sm.Geometry((4, 4, 4), (2, 2, 2))
CLUSTERING = sm.Clustering(neuropil=0.5, shape=1.0)
CONSTANTS = sm.Constants(
    fetch_per_get=0.01, inflate_per_get=0.02, decode_per_get=0.07,  # 0.1 s per GET
    snap_per_row=0.1, read_per_row=0.02, write_per_row=0.03,        # 0.15 s per row
    snap_per_target=0.05,                                            # per distinct target
    plan_per_row=0.25, cave_cpu_per_request=0.05, sched_per_task=0.5,
    gets_per_chunk=2.0, fetch_rounds=1.0, bytes_per_get=1000.0,
    svs_per_row=0.5, targets_per_row=1 / 3, svs_per_target=4.0, batch=2,
    startup=1.0, worker_base_mib=100.0, worker_mib_per_row=1.0,
    server_cpu_per_get=0.02, cave_s_per_id=0.01)
CLUSTER = sm.Cluster(workers=2, threads=1, cores=1, bandwidth=2000.0, get_latency=0.1, reads_in_flight=2,
                     cave_latency=0.2, cave_concurrency=4, server_shares_cores=True)


def test_geometry_counts_partial_chunks():
    assert GEOMETRY.n_chunks == 8
    # CRANT: ceil(22500/128) x ceil(21500/128) x ceil(6100/32) = 176 x 168 x 191
    assert sm.CRANT.n_chunks == 176 * 168 * 191


def test_hand_computed_job():
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, CONSTANTS, CLUSTER)
    # tasks = ceil(12 / 6) = 2, 6 rows each
    assert p.tasks == 2
    # touched(12) = 4 (1 - 1 / (1 + 12/4)) = 4 (1 - 1/4) = 3 chunks
    assert p.touched_chunks == pytest.approx(3.0)
    # GETs = gets_per_chunk (touched + tasks) = 2 (3 + 2) = 10, so 5 per task; bytes = 10 x 1000
    assert p.gets == pytest.approx(10.0)
    assert p.bytes == pytest.approx(10_000.0)
    # per task: roots requests ceil(0.5 x 6 / 2) = ceil(1.5) = 2; targets 6 / 3 = 2, leaves requests
    # ceil(2 / 2) = 1; 3 requests per task, 6 in all
    assert p.cave_requests == pytest.approx(6.0)
    # IDs per task: roots sent + answered 2 x 3 = 6; leaves: 2 targets sent, 2 x 4 leaves answered = 10;
    # 16 per task, 32 in all
    assert p.cave_ids == pytest.approx(32.0)
    # CPU per task: 6 rows x 0.15 = 0.9, 2 targets x 0.05 = 0.1, 5 GETs x 0.1 = 0.5,
    #   3 requests x 0.05 = 0.15 -> 1.65 s
    # waits per task: 1 round x ceil(5 / 2 in flight) = 3 latencies x 0.1 = 0.3 s of GETs;
    #   3 requests x 0.2 + 16 IDs x 0.01 = 0.76 s of CAVE  -> task time 1.65 + 0.3 + 0.76 = 2.71 s
    assert p.task_seconds == pytest.approx(2.71)
    # CPU in all: 2 x 1.65 = 3.3, plus the local server: 10 GETs x 0.02 = 0.2 and 32 IDs x 0.01 = 0.32
    #   -> 3.82 s on 1 core
    assert p.cpu == pytest.approx(3.82)
    assert p.bounds["cpu"] == pytest.approx(3.82)
    # worker: ceil(2 tasks / 2 slots) = 1 round x 2.71 s
    assert p.bounds["worker"] == pytest.approx(2.71)
    # bandwidth: 10,000 bytes / 2,000 bytes/s = 5 s
    assert p.bounds["bandwidth"] == pytest.approx(5.0)
    # cave: 2 workers x min(1 thread, 4) = 2 in flight, each request 0.2 + (16 / 3) x 0.01 s
    #   -> 2 / 0.25333 = 7.8947 requests/s; 6 requests take 0.76 s
    assert p.bounds["cave"] == pytest.approx(6 / (2 / (0.2 + 16 / 3 * 0.01)))
    assert p.bounds["cave"] == pytest.approx(0.76)
    # scheduler: 2 tasks x 0.5 s
    assert p.bounds["scheduler"] == pytest.approx(1.0)
    # serial part: start-up 1 s + 12 rows x 0.25 s of planning = 4 s; wall = 4 + max(bounds) = 4 + 5
    assert p.serial == pytest.approx(4.0)
    assert p.bottleneck == "bandwidth"
    assert p.wall == pytest.approx(9.0)
    # worker memory: 100 MiB + 1 MiB/row x 6 rows x 1 thread
    assert p.worker_mib == pytest.approx(106.0)


def test_without_the_bandwidth_limit_cpu_bounds_the_job():
    c = sm.Cluster(**{**CLUSTER.__dict__, "bandwidth": math.inf})
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, CONSTANTS, c)
    # max(cpu 3.82, worker 2.71, cave 0.76, scheduler 1.0) = cpu; wall 4 + 3.82; but the serial
    # driver part (4 s) is longer than the 3.82 s the cores take, so the driver is named
    assert max(p.bounds, key=p.bounds.get) == "cpu"
    assert p.bottleneck == "driver"
    assert p.wall == pytest.approx(7.82)


def test_targets_per_row_of_the_table_overrides_the_constant():
    # 1 target per row: 6 per task -> leaves requests ceil(6 / 2) = 3, 5 requests per task, 10 in all
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, CONSTANTS, CLUSTER, targets_per_row=1.0)
    assert p.cave_requests == pytest.approx(10.0)


def test_a_slow_worker_is_named_by_what_fills_its_time():
    # the hand case with GETs at 10 s: per task 5 GETs in 1 round, ceil(5 / 2) = 3 latencies
    # x 10 s = 30 s of waiting against 1.65 s of CPU and 0.76 s of CAVE: worker bound
    # = ceil(2 tasks / 2 slots) x (1.65 + 30 + 0.76) = 32.41 s, named "storage latency"
    c = sm.Cluster(**{**CLUSTER.__dict__, "bandwidth": math.inf, "get_latency": 10.0})
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, CONSTANTS, c)
    assert p.bounds["worker"] == pytest.approx(32.41)
    assert p.bottleneck == "storage latency"
    assert p.wall == pytest.approx(4 + 32.41)


def test_touched_chunks_limits():
    # few rows in many chunks: almost every row touches its own chunk; many rows: all neuropil chunks
    c = sm.Clustering(neuropil=0.5, shape=2.0)
    assert c.touched(10, 1_000_000) == pytest.approx(10, rel=1e-4)
    assert c.touched(1e12, 1_000_000) == pytest.approx(500_000, rel=1e-4)
    assert c.touched(0, 1_000_000) == 0.0


def test_recommend_keeps_workers_within_memory():
    # 1 MiB per row of a task on top of 100 MiB: only partitions of at most 1,948 rows fit in 2,048 MiB;
    # the smallest partition offered is 10,000 rows, so nothing fits
    with pytest.raises(ValueError, match="2048"):
        sm.recommend(10**6, CLUSTERING, GEOMETRY, CONSTANTS, CLUSTER)
    small = sm.Constants(**{**CONSTANTS.__dict__, "worker_mib_per_row": 0.01})
    settings, p = sm.recommend(10**6, CLUSTERING, GEOMETRY, small, CLUSTER, worker_mib=700.0,
                               cave_server_concurrency=1)
    # 100 + 0.01 x partition <= 700 MiB: partitions up to 60,000 rows
    assert settings["partition"] <= 60_000
    assert p.worker_mib <= 700.0
    # one concurrent CAVE request allowed for 2 workers: still at least 1 per worker
    assert settings["cave_concurrency"] == 1


def _exact_halo(grid, start: int, span: int) -> int:
    """Brute force: chunks in the 26-neighbourhood of the run [start, start + span) of linear chunk
    keys (x-major, z fastest, as ``_chunking.chunk_keys``), inside the grid, not in the run."""
    import numpy as np

    gx, gy, gz = grid
    lin = np.arange(start, start + span)
    c = np.stack([lin // (gy * gz), (lin // gz) % gy, lin % gz], axis=1)
    d = np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3)
    near = (c[:, None, :] + d[None]).reshape(-1, 3)
    near = near[np.all((near >= 0) & (near < np.array(grid)), axis=1)]
    return len(np.unique((near[:, 0] * gy + near[:, 1]) * gz + near[:, 2])) - span


@pytest.mark.parametrize("span", [8, 40, 90, 336, 700])
def test_halo_matches_a_brute_force_count(span):
    # the demo's grid (16 x 16 x 8 chunks); the model's halo against the exact count averaged over
    # every position of the run in the volume (a column, within a slab, over slabs)
    g = sm.Geometry((2048, 2048, 256))
    assert g.grid == (16, 16, 8)
    exact = [_exact_halo(g.grid, s, span) for s in range(0, g.n_chunks - span + 1, 7)]
    assert g.halo(span) == pytest.approx(sum(exact) / len(exact), rel=0.15)


def test_halo_by_hand():
    # grid 4 x 4 x 4: a run of 2 (shorter than a z column of 4) is a 1 x 1 x 2 box: 3 x 3 x 4 - 2 = 34;
    # a run of 8: 2 gz + 2 (1 - 1/gx) min(8 + 2 gz, gy gz) = 8 + 2 x 0.75 x 16 = 32; a run of 60 of
    # the 64 chunks: at most the 4 others
    g = sm.Geometry((8, 8, 8), (2, 2, 2))
    assert g.halo(2) == pytest.approx(34.0)
    assert g.halo(8) == pytest.approx(32.0)
    assert g.halo(60) == pytest.approx(4.0)
    assert g.halo(0) == 0.0


def test_halo_gets_by_hand():
    # the hand case with 0.75 GETs per halo chunk: a task owns 3 / 2 + 1 = 2.5 chunks, a run of
    # 2.5 x 8 / 3 = 6.667 chunks of the 8 (grid 2 x 2 x 2); 2 gz + 2 (1 - 1/2) min(6.667 + 4, 4) = 8,
    # but at most the 8 - 6.667 = 1.333 chunks outside the run; 2 tasks x 1.333 x 0.75 = 2 more GETs
    c = sm.Constants(**{**CONSTANTS.__dict__, "gets_per_halo": 0.75})
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, c, CLUSTER)
    assert p.gets == pytest.approx(12.0)
    assert p.bytes == pytest.approx(12_000.0)


def test_cluster_overhead_takes_cores_from_the_tasks():
    # the hand case with Dask's own work: 0.1 core per worker process, 0.3 core for the driver and
    # scheduler; with the server (and driver) on the 1 core: 1 - 2 x 0.1 - 0.3 = 0.5 core left for the
    # 3.82 s of CPU -> 7.64 s, longer than the 5 s of bandwidth: wall 4 + 7.64
    c = sm.Constants(**{**CONSTANTS.__dict__, "worker_overhead_cpu": 0.1, "driver_overhead_cpu": 0.3})
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, c, CLUSTER)
    assert p.bounds["cpu"] == pytest.approx(7.64)
    assert p.bottleneck == "cpu"
    assert p.wall == pytest.approx(11.64)
    # server, driver and scheduler elsewhere: only the tasks' 3.3 s on 1 - 0.2 = 0.8 core -> 4.125 s;
    # the bandwidth's 5 s bound the job again
    apart = sm.Cluster(**{**CLUSTER.__dict__, "server_shares_cores": False})
    p = sm.predict(12, 6, CLUSTERING, GEOMETRY, c, apart)
    assert p.bounds["cpu"] == pytest.approx(4.125)
    assert p.bottleneck == "bandwidth"
    assert p.wall == pytest.approx(9.0)
