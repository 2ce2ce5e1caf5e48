"""Benchmark get_voxels on the demo dataset's largest roots.

Three ways to get one root's voxels, timed and memory-profiled in the same run:

* ``l2_chunks``: ``get_voxels(use_l2_chunks=True)``: reads only the root's L2 chunks;
* ``cutout``: ``get_voxels(use_l2_chunks=False)``: reads the root's whole bounding box at once;
* ``crantpy``: crantpy's way: a cutout of the bounding box, roots of its unique supervoxels, then
  one full-array comparison per supervoxel (O(#sv x #voxels)) and ``np.where(cutout == root)``.
  The loop stops after ``CRANTPY_BUDGET_S`` seconds and its time is extrapolated linearly over
  the remaining supervoxels (it is exactly linear in #sv); rows say ``extrapolated``.

Also ``get_segmentation_cutout(root_ids=True)`` (one batched root lookup, one hash-map remap)
against crantpy's remap loop on a box in the middle of the volume.

``run(quick)`` (called by ``benchmarks/run.py``) returns one row per peer with the ratio
peer / ours for time and for peak memory; ``python benchmarks/bench_voxels.py`` prints every
measurement and the ratios.

Time is the wall time of one call (the best of two in the full run) without tracing; peak memory
is tracemalloc's peak (numpy buffers included) of a second, traced call. The L2 and cutout
results are checked to be identical.

    python benchmarks/bench_voxels.py            # full: 3 largest roots at mips 1 and 2, the largest at mip 0
    python benchmarks/bench_voxels.py --quick    # the largest root at mip 1

The largest demo roots run across the whole 2048 x 2048 x 256 volume, so their bounding box is the
volume (8.6 GB of uint64 at mip 0): the full run's mip-0 case needs about 18 GB of RAM (crantpy's
way holds the cutout and np.unique's sorted copy); the quick run stays under 5 GB.
"""
from __future__ import annotations

import os
import argparse
import gc
import time
import tracemalloc
from datetime import datetime, timezone

import numpy as np

from crantseg_dask.sources.resolve import resolve_dataset
from crantseg_dask.ops.mapping import roots_kernel
from crantseg_dask.ops.voxels import _chunk_boxes, _mip_factor, get_segmentation_cutout, get_voxels
from crantseg_dask.sources import open_source

CRANTPY_BUDGET_S = 6.0


def largest_roots(source, n: int) -> list[int]:
    """The ``n`` latest roots with the most supervoxels."""
    now = datetime.now(timezone.utc)
    roots = np.array(sorted(source.root_created), dtype=np.uint64)  # the local source's root table
    roots = roots[source.is_latest(roots, now)]
    sizes = [len(source.leaves(int(r))) for r in roots]
    return [int(roots[i]) for i in np.argsort(sizes)[::-1][:n]]


def root_geometry(source, root: int, mip: int) -> tuple[np.ndarray, int, int]:
    """(bounding box at ``mip`` = union of the root's chunk boxes, #chunks, #chunks in the box)."""
    meta = source.meta
    coords = np.unique(meta.layout.chunk_coords(source.leaves(root, 2)), axis=0)
    boxes = _chunk_boxes(meta, coords, mip, _mip_factor(meta, mip))
    box = np.stack([boxes[:, 0].min(axis=0), boxes[:, 1].max(axis=0)])
    return box, len(coords), int(np.prod(coords.max(axis=0) - coords.min(axis=0) + 1))


def crantpy_way(spec, root: int, mip: int, box: np.ndarray, budget_s: float = CRANTPY_BUDGET_S):
    """crantpy's cutout mode; returns (voxels or None if stopped early, seconds, extrapolated)."""
    source = open_source(spec)
    t0 = time.perf_counter()
    cutout = source.cutout(box, mip)
    svs = np.unique(cutout)
    svs = svs[svs != 0]
    roots = roots_kernel(svs, spec, datetime.now(timezone.utc))
    t_loop = time.perf_counter()
    done = 0
    for sv, r in zip(svs, roots):  # crantpy: cutout[cutout == sv] = root, one pass per supervoxel
        cutout[cutout == sv] = r
        done += 1
        if time.perf_counter() - t_loop > budget_s:
            break
    loop = time.perf_counter() - t_loop
    if done < len(svs):
        # the rest of the loop, extrapolated; plus the final np.where pass
        t1 = time.perf_counter()
        np.where(cutout == root)
        tail = time.perf_counter() - t1
        return None, (t_loop - t0) + loop / done * len(svs) + tail, True
    vox = np.column_stack(np.where(cutout == root)).astype(np.uint32) + box[0].astype(np.uint32)
    return vox, time.perf_counter() - t0, False


def _timed(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _peak_mb(fn) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def measure(quick: bool) -> list[dict]:
    """Measure; one dict per (root, mip, method). L2 rows carry the ratios."""
    spec = resolve_dataset(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    source = open_source(spec)
    roots = largest_roots(source, 1 if quick else 3)
    cases = [(r, 1) for r in roots] if quick else [(r, m) for m in (1, 2) for r in roots] + [(roots[0], 0)]
    repeat = 1 if quick else 2
    rows = []
    warm = set()
    for root, mip in cases:
        if mip not in warm:  # imports, readers, page cache
            get_voxels(roots[-1], mip=mip, dataset=spec, progress=False)
            warm.add(mip)
        box, n_chunks, n_box_chunks = root_geometry(source, root, mip)
        box_voxels = int(np.prod(box[1] - box[0]))
        common = dict(bench="get_voxels", dataset="demo", root=root, mip=mip, l2_chunks=n_chunks,
                      bbox_chunks=n_box_chunks, bbox_voxels=box_voxels)
        methods = {
            "l2_chunks": lambda: get_voxels(root, mip=mip, dataset=spec, progress=False),
            "cutout": lambda: get_voxels(root, mip=mip, use_l2_chunks=False, dataset=spec, progress=False),
        }
        if not quick:
            methods["l2_chunks_2threads"] = lambda: get_voxels(root, mip=mip, threads=2, dataset=spec,
                                                               progress=False)
        res = {}
        for name, fn in methods.items():
            secs, out = _timed(fn, repeat)
            res[name] = dict(common, method=name, seconds=secs, peak_mb=_peak_mb(fn), voxels=len(out),
                             extrapolated=False)
            res[name]["_out"] = out
        assert np.array_equal(res["l2_chunks"]["_out"], res["cutout"]["_out"]), "modes disagree"
        vox, secs, extrap = crantpy_way(spec, root, mip, box)
        if vox is not None:
            assert np.array_equal(vox, res["l2_chunks"]["_out"]), "crantpy's way disagrees"
        res["crantpy"] = dict(common, method="crantpy", seconds=secs,
                              peak_mb=_peak_mb(lambda: crantpy_way(spec, root, mip, box, budget_s=0.5)),
                              voxels=res["l2_chunks"]["voxels"], extrapolated=extrap)
        l2 = res["l2_chunks"]
        l2["speedup_vs_cutout"] = res["cutout"]["seconds"] / l2["seconds"]
        l2["speedup_vs_crantpy"] = res["crantpy"]["seconds"] / l2["seconds"]
        l2["memory_ratio_cutout_over_l2"] = res["cutout"]["peak_mb"] / l2["peak_mb"]
        for r in res.values():
            r.pop("_out", None)
            rows.append(r)
    return rows


def summarize(raw: list[dict]) -> list[dict]:
    """Rows for ``benchmarks/run.py``: ours (L2-chunk mode) against each peer; ratio = peer / ours
    for time and for peak memory (higher is better)."""
    by = {(r["root"], r["mip"], r["method"]): r for r in raw}
    rows = []
    for (root, mip, method), ours in by.items():
        if method != "l2_chunks":
            continue
        case = (f"root {root} mip {mip} ({ours['l2_chunks']}/{ours['bbox_chunks']} chunks, "
                f"{ours['voxels']:,} voxels)")
        for peer, label in (("cutout", "cutout mode (bounding box)"), ("crantpy", "crantpy (bbox cutout + per-sv loop)")):
            p = by[(root, mip, peer)]
            extra = " (extrapolated)" if p["extrapolated"] else ""
            rows.append({"benchmark": "get_voxels time", "case": case, "ours": f"{ours['seconds']:.2f} s",
                         "peer": label, "peer_value": f"{p['seconds']:.2f} s{extra}",
                         "ratio": p["seconds"] / ours["seconds"], "root": root, "mip": mip})
            rows.append({"benchmark": "get_voxels peak memory", "case": case, "ours": f"{ours['peak_mb']:.0f} MB",
                         "peer": label, "peer_value": f"{p['peak_mb']:.0f} MB",
                         "ratio": p["peak_mb"] / ours["peak_mb"], "root": root, "mip": mip})
    return rows


def cutout_rows(quick: bool) -> list[dict]:
    """get_segmentation_cutout(root_ids=True) against crantpy's remap (one full-array comparison
    per supervoxel, extrapolated past ``CRANTPY_BUDGET_S``), on a box in the middle of the volume."""
    spec = resolve_dataset(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    meta = open_source(spec).meta
    lo, hi = meta.bounds(0)
    size = np.array([256, 256, 32] if quick else [512, 512, 64])
    box = np.stack([(lo + hi) // 2 - size // 2, (lo + hi) // 2 + size // 2])
    nm = (box * np.array(meta.resolution[0])).T
    get_segmentation_cutout(nm, dataset=spec)  # warm-up
    secs, (ours, _, _) = _timed(lambda: get_segmentation_cutout(nm, dataset=spec), 1 if quick else 2)
    source = open_source(spec)
    t0 = time.perf_counter()
    cutout = source.cutout(box, 0)
    svs = np.unique(cutout)
    svs = svs[svs != 0]
    roots = roots_kernel(svs, spec, datetime.now(timezone.utc))
    t_loop, done = time.perf_counter(), 0
    for sv, r in zip(svs, roots):
        cutout[cutout == sv] = r
        done += 1
        if time.perf_counter() - t_loop > CRANTPY_BUDGET_S:
            break
    peer = (t_loop - t0) + (time.perf_counter() - t_loop) / done * len(svs)
    if done == len(svs):
        assert np.array_equal(cutout, ours), "crantpy's remap disagrees"
    extra = "" if done == len(svs) else " (extrapolated)"
    return [{"benchmark": "get_segmentation_cutout time", "case": f"{tuple(size.tolist())} voxels at mip 0, "
             f"{len(svs):,} supervoxels", "ours": f"{secs:.2f} s", "peer": "crantpy (per-sv remap loop)",
             "peer_value": f"{peer:.1f} s{extra}", "ratio": peer / secs}]


def run(quick: bool) -> list[dict]:
    """What ``benchmarks/run.py`` calls: ratios of L2-chunk mode against its peers, and of the
    cutout's one-batch root remap against crantpy's per-supervoxel loop."""
    return summarize(measure(quick)) + cutout_rows(quick)


def _print(rows: list[dict]) -> None:
    print(f"{'root':>20} {'mip':>3} {'chunks':>11} {'method':>19} {'seconds':>9} {'peak MB':>9} {'voxels':>10}")
    for r in rows:
        chunks = f"{r['l2_chunks']}/{r['bbox_chunks']}"
        secs = f"{r['seconds']:.2f}" + ("*" if r["extrapolated"] else "")
        print(f"{r['root']:>20} {r['mip']:>3} {chunks:>11} {r['method']:>19} {secs:>9} {r['peak_mb']:>9.1f} "
              f"{r['voxels']:>10}")
    print("  chunks = the root's L2 chunks / graph chunks in its bounding box; * = extrapolated (crantpy loop)")
    for r in rows:
        if r["method"] == "l2_chunks":
            print(f"root {r['root']} mip {r['mip']}: L2-chunk mode is {r['speedup_vs_cutout']:.1f}x faster than the "
                  f"bounding-box cutout and {r['speedup_vs_crantpy']:.0f}x faster than crantpy's way; cutout peak "
                  f"memory / L2 peak = {r['memory_ratio_cutout_over_l2']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the largest root at mip 1 only")
    quick = ap.parse_args().quick
    _print(measure(quick))
    for r in cutout_rows(quick):
        print(f"{r['benchmark']}, {r['case']}: ours {r['ours']}, {r['peer']} {r['peer_value']}: {r['ratio']:.0f}x")


if __name__ == "__main__":
    main()
