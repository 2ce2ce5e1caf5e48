"""Random access vs full decode of compressed_segmentation chunks: where is the crossover?

    python benchmarks/bench_cseg_crossover.py [--quick] [DATASET]     (default: the demo dataset)

For a sample of the dataset's mip-0 chunks (encoded bytes already in memory, as both paths read
the same bytes): the time to decode a chunk whole (the structural check plus
``compressed_segmentation.decompress``) and the time per voxel of ``_cseg.decode_points`` at
several points-per-chunk counts (all chunks in one call, as ``lookup_points`` does), by the numpy
path and by the compiled kernel. The crossover is the fraction of a chunk's voxels at which both
cost the same; ``_cseg.CROSSOVER`` (numpy) and ``_cseg.CROSSOVER_COMPILED`` should sit near them.
Also reported: block-range decode (``decode_blocks``) per voxel.
"""
from __future__ import annotations

import sys
import time

import numpy as np


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(path, n_chunks: int = 64, seed: int = 0) -> dict:
    import compressed_segmentation as cseg

    from crantseg_dask.sources import SourceSpec, open_source
    from crantseg_dask.sources import _cseg
    from crantseg_dask.sources._chunks import cseg_problem
    from crantseg_dask.sources._partial import chunk_shapes

    source = open_source(SourceSpec(kind="local", name="bench", path=str(path)))
    meta = source.meta
    rng = np.random.default_rng(seed)
    lo, hi = meta.bounds(0)
    grid = -(-(hi - lo) // np.array(meta.chunk_size[0]))
    keys = np.unique(np.stack([rng.integers(0, g, n_chunks) for g in grid], axis=1), axis=0)
    datas = [source.read_encoded(tuple(int(v) for v in k), 0) for k in keys]
    shapes = chunk_shapes(meta, keys, 0)
    block = tuple(meta.cseg_block_size[0])
    vox = int(np.prod(meta.chunk_size[0]))

    def full():
        for d, s in zip(datas, shapes):
            s = tuple(int(v) for v in s)
            assert cseg_problem(d, s, block) is None
            cseg.decompress(bytes(d), s + (1,), np.uint64, block, order="F")  # bytes, as the read path gives it

    t_full = _best(full) / len(keys)
    out = {"chunks": len(keys), "chunk_voxels": vox, "full_ms": t_full * 1e3, "ra_ns": {}, "blocks_ns": {}}
    from crantseg_dask.sources import _cseg_numba

    _cseg_numba.warm_up()
    out["ra_compiled_ns"] = {}
    for per in (1, 16, 256, 4096):
        chunk_of = np.repeat(np.arange(len(keys)), per)
        local = (rng.random((len(chunk_of), 3)) * shapes[chunk_of]).astype(np.int64)
        t = _best(lambda: _cseg.decode_points(datas, shapes, block, chunk_of, local))
        out["ra_ns"][per] = t / len(chunk_of) * 1e9
        t = _best(lambda: _cseg.decode_points(datas, shapes, block, chunk_of, local, compiled=True))
        out["ra_compiled_ns"][per] = t / len(chunk_of) * 1e9
    for side in (8, 32):  # boxes of side^3-ish voxels, one per chunk
        lo_b = np.zeros((len(keys), 3), np.int64)
        hi_b = np.minimum(np.array([side, side, min(side, 16)]), shapes)
        n = int(sum(_cseg.block_voxels(a, b, s, block) for a, b, s in zip(lo_b, hi_b, shapes)))
        t = _best(lambda: _cseg.decode_blocks(datas, shapes, block, np.arange(len(keys)), lo_b, hi_b))
        out["blocks_ns"][side] = t / n * 1e9
    out["crossover"] = t_full / (out["ra_ns"][256] * 1e-9 * vox)
    out["crossover_compiled"] = t_full / (out["ra_compiled_ns"][4096] * 1e-9 * vox)
    return out


def main(argv) -> int:
    from crantseg_dask.sources.resolve import local_dataset_path

    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    path = names[0] if names else local_dataset_path("demo")
    r = measure(path, n_chunks=16 if quick else 64)
    print(f"{r['chunks']} chunks of {r['chunk_voxels']:,} voxels: full decode {r['full_ms']:.3f} ms/chunk "
          f"({r['full_ms'] * 1e6 / r['chunk_voxels']:.2f} ns/voxel)")
    for per, ns in r["ra_ns"].items():
        print(f"  random access, {per:>5} points/chunk: {ns:7.1f} ns/point (numpy), "
              f"{r['ra_compiled_ns'][per]:6.1f} ns/point (compiled)")
    for side, ns in r["blocks_ns"].items():
        print(f"  block-range decode, {side}-voxel boxes: {ns:7.1f} ns/voxel")
    print(f"crossover (full decode = random access at 256 points/chunk): {r['crossover']:.4f} of a chunk "
          f"({r['crossover'] * r['chunk_voxels']:,.0f} voxels)")
    print(f"crossover, compiled (full decode = random access at 4096 points/chunk): "
          f"{r['crossover_compiled']:.4f} of a chunk ({r['crossover_compiled'] * r['chunk_voxels']:,.0f} voxels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
