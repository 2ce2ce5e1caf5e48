"""Point lookups: locs_to_supervoxels vs the full-decode path, crantpy's way and scattered_points.

"full decode" is the same call with random access off (``_cseg.CROSSOVER = 0``: every touched
chunk decoded whole, the path before issue 12). Sizes 10^3 to 10^6 (--quick: 10^3, 10^4), uniform
over the volume and synapse-like (clustered on neurons, ``jobs.demo.synapse_table``).

"read + inflate only" fetches and un-gzips the chunks the points touch and decodes nothing: the
floor under any decoder on this storage (a ratio near 1 means the lookup costs the reads).

"inflate the touched chunks" (uniform 10^3 and 10^4 points): whether a streamed inflate that
stops at the last byte the points need (zlib ``max_length``) beats libdeflate inflating whole
chunks; the fraction needed is measured from the points' block headers, values and tables.

crantpy reads one 1x1x1 box per point through cloud-volume, one after another; cloud-volume's
``scattered_points`` is the library's batch call. Both are measured on a sample in the same run
(they are far too slow for 10^6 points) and compared per point.
"""
from __future__ import annotations

import os
import time

import numpy as np

from crantseg_dask.sources.resolve import local_dataset_path
from crantseg_dask.jobs.demo import synapse_table


def _uniform(path, n, rng):
    from crantseg_dask.dataset.layout import read_params

    p = read_params(path)
    lo = np.array(p.voxel_offset) * p.resolution
    hi = lo + np.array(p.size) * p.resolution
    return rng.uniform(lo, hi, size=(n, 3))


def crantpy_way(path, locs: np.ndarray) -> np.ndarray:
    """crantpy's locs_to_supervoxels loop: a 1-voxel cloud-volume read per point."""
    from cloudvolume import CloudVolume

    vol = CloudVolume(f"file://{path}/segmentation", mip=0, fill_missing=True, cache=False, progress=False)
    res = np.asarray(vol.scale["resolution"])
    out = np.zeros(len(locs), dtype=np.uint64)
    for i, loc in enumerate((locs / res).astype(int)):
        try:
            out[i] = vol[loc[0]: loc[0] + 1, loc[1]: loc[1] + 1, loc[2]: loc[2] + 1][0, 0, 0, 0]
        except Exception:
            out[i] = 0
    return out


def scattered_points(path, locs: np.ndarray) -> np.ndarray:
    from cloudvolume import CloudVolume

    vol = CloudVolume(f"file://{path}/segmentation", mip=0, fill_missing=True, bounded=False, progress=False)
    vox = (locs / np.asarray(vol.scale["resolution"])).astype(int)
    lo, hi = np.asarray(vol.bounds.minpt), np.asarray(vol.bounds.maxpt)
    inside = np.all((vox >= lo) & (vox < hi), axis=1)  # it raises on points outside the volume
    got = vol.scattered_points(vox[inside])
    out = np.zeros(len(vox), dtype=np.uint64)
    out[inside] = [got[tuple(v)] for v in vox[inside]]
    return out


def full_decode_way(path, locs: np.ndarray) -> np.ndarray:
    """Today's path before random access: locs_to_supervoxels with every touched chunk decoded whole."""
    from crantseg_dask import locs_to_supervoxels
    from crantseg_dask.sources import _cseg

    saved = _cseg.CROSSOVER, _cseg.CROSSOVER_COMPILED
    _cseg.CROSSOVER = _cseg.CROSSOVER_COMPILED = 0.0
    try:
        return locs_to_supervoxels(locs, dataset=str(path), progress=False)
    finally:
        _cseg.CROSSOVER, _cseg.CROSSOVER_COMPILED = saved


def read_only_way(path, locs: np.ndarray) -> None:
    """The floor under any decoder: fetch and inflate (un-gzip) the storage chunks the points
    touch, through the same concurrent reads, and decode nothing."""
    from crantseg_dask._chunking import chunk_keys, nm_to_voxels
    from crantseg_dask.sources import open_source
    from crantseg_dask.sources.resolve import resolve_dataset

    source = open_source(resolve_dataset(str(path)))
    meta = source.meta
    lo, hi = meta.bounds(0)
    cs = np.array(meta.chunk_size[0])
    grid = -(-(hi - lo) // cs)
    key = np.unique(chunk_keys(nm_to_voxels(locs, meta.resolution[0]), (lo, hi), cs))
    key = key[key >= 0]
    keys = np.stack([key // (grid[1] * grid[2]), key // grid[2] % grid[1], key % grid[2]], axis=1)
    for _ in source.read_encoded_many([tuple(k) for k in keys.tolist()], 0):
        pass


def _needed_prefix(words: np.ndarray, local: np.ndarray, shape, block=(8, 8, 8)) -> int:
    """Bytes of one inflated chunk of ``shape`` that a random-access read of ``local`` (M, 3)
    needs: up to the last word read (block headers, values words, table entries; the format as
    described in ``crantseg_dask.sources._cseg``)."""
    block = np.array(block)
    blk, w = np.divmod(local, block)
    grid = -(-np.asarray(shape) // block)
    b = blk[:, 0] + grid[0] * (blk[:, 1] + grid[1] * blk[:, 2])
    h0, h1 = words[1 + 2 * b].astype(np.int64), words[2 + 2 * b].astype(np.int64)
    bits, table = h0 >> 24, h0 & 0xFFFFFF
    bitpos = (w[:, 0] + block[0] * (w[:, 1] + block[1] * w[:, 2])) * bits
    vpos = np.where(bits > 0, 1 + h1 + (bitpos >> 5), 0)
    idx = (words[vpos].astype(np.int64) >> (bitpos & 31)) & ((1 << bits) - 1)
    return 4 * int(max(vpos.max(), (2 + table + 2 * idx).max(), 2 + 2 * b.max()) + 1)


def partial_inflate_rows(path, locs: np.ndarray, case: str) -> list[dict]:
    """Could a streamed inflate that stops at the last byte the points need beat inflating whole
    chunks? Serial, one thread, the gzipped chunk files already in memory: libdeflate's
    whole-buffer inflate (what the reads do) against zlib's ``decompressobj`` with ``max_length``
    (stops early; libdeflate cannot stop early)."""
    import zlib

    import deflate

    from crantseg_dask._chunking import nm_to_voxels
    from crantseg_dask.sources import open_source
    from crantseg_dask.sources.resolve import resolve_dataset

    reader = open_source(resolve_dataset(str(path)))._reader
    meta = reader.meta
    cs = np.array(meta.chunk_size[0])
    lo, hi = meta.bounds(0)
    vox = nm_to_voxels(locs, meta.resolution[0])
    vox = vox[np.all((vox >= lo) & (vox < hi), axis=1)] - lo
    keys, inv = np.unique(vox // cs, axis=0, return_inverse=True)
    inv = inv.ravel()
    base = reader.cloudpath[len("file://"):]
    gz = [open(f"{base}/{n}.gz", "rb").read() for n in reader.filenames(keys, 0)]
    whole = [bytes(deflate.gzip_decompress(g)) for g in gz]
    need = [_needed_prefix(np.frombuffer(d, "<u4"), vox[inv == k] % cs, np.subtract(*reader.chunk_box(keys[k], 0)[::-1]))
            for k, d in enumerate(whole)]
    frac = sum(need) / sum(len(d) for d in whole)

    def best(fn):
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    t_whole = best(lambda: [deflate.gzip_decompress(g) for g in gz])
    t_zlib = best(lambda: [zlib.decompressobj(31).decompress(g, m) for g, m in zip(gz, need)])
    return [{"benchmark": "inflate the touched chunks (1 thread)",
             "case": f"{case}: {len(gz):,} chunks, {frac:.0%} of their inflated bytes needed",
             "ours": f"libdeflate, whole chunks: {1000 * t_whole:.0f} ms",
             "peer": "zlib streamed, stopping at the last needed byte",
             "peer_value": f"{1000 * t_zlib:.0f} ms", "ratio": t_zlib / t_whole}]


def run(quick: bool = False) -> list[dict]:
    from crantseg_dask import locs_to_supervoxels

    path = local_dataset_path(os.environ.get("CRANTSEG_BENCH_PRESET", "demo"))
    rng = np.random.default_rng(0)
    rows = []
    warm = _uniform(path, 50, rng)  # first-use costs (imports, opening the dataset) are not per point
    from crantseg_dask.sources import _cseg_numba

    _cseg_numba.warm_up()  # nor is loading the compiled decoder (~0.9 s once per process, numba included)
    locs_to_supervoxels(warm, dataset=str(path), progress=False), crantpy_way(path, warm[:5]), scattered_points(path, warm[:5])
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
    sample = 100 if quick else 300
    for layout in ("uniform", "synapses"):
        for n in sizes:
            locs = _uniform(path, n, rng) if layout == "uniform" else synapse_table(path, n)[["x", "y", "z"]].to_numpy()
            t = time.perf_counter()
            ours = locs_to_supervoxels(locs, dataset=str(path), progress=False)
            ours_s = time.perf_counter() - t
            peers = {}
            t = time.perf_counter()
            assert np.array_equal(full_decode_way(path, locs), ours), "the full-decode path disagrees with ours"
            peers["full decode (before random access)"] = n / (time.perf_counter() - t)
            t = time.perf_counter()
            read_only_way(path, locs)
            peers["read + inflate the touched chunks only (floor)"] = n / (time.perf_counter() - t)
            for name, fn, m in (("crantpy per-point", crantpy_way, sample), ("scattered_points", scattered_points, sample * 5)):
                m = min(m, n)
                t = time.perf_counter()
                got = fn(path, locs[:m])
                peers[name] = m / (time.perf_counter() - t)
                assert np.array_equal(got, ours[:m]), f"{name} disagrees with ours"
            ours_rate = n / ours_s
            for name, rate in peers.items():
                rows.append({"benchmark": "locs_to_supervoxels", "case": f"{layout} n={n:,}",
                             "ours": f"{ours_rate:,.0f} pts/s ({ours_s:.2f} s)", "peer": name,
                             "peer_value": f"{rate:,.0f} pts/s", "ratio": ours_rate / rate})
    for n in sizes[:2]:
        rows += partial_inflate_rows(path, _uniform(path, n, rng), f"uniform n={n:,}")
    return rows


if __name__ == "__main__":
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from run import print_rows

    print_rows(run(quick="--quick" in sys.argv))
