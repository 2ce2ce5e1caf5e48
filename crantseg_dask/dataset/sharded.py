"""Rewrite a written precomputed segmentation layer in the neuroglancer sharded format.

``shard_layer(seg_dir)`` turns every scale of an unsharded ``compressed_segmentation`` layer (the
one ``make_dataset`` writes) into ``neuroglancer_uint64_sharded_v1`` shard files, keeping the
encoded chunks byte for byte (compressed_segmentation inside, gzip data and minishard index
encoding as igneous writes them). The preshift, minishard and shard bits come from cloud-volume's
``compute_shard_params_for_image`` (the helper igneous uses for production image layers), with the
uncompressed bytes per shard capped at 1/8 of the scale so a small volume still has several shards
(production's 3.5 GB default would put a test volume in one shard). Chunk keys are the compressed
Morton codes of the chunk grid positions (relative to the voxel offset), as cloud-volume and
neuroglancer read them. The output depends only on the input bytes (libdeflate gzip has no
timestamp), so the dataset stays deterministic by seed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["shard_layer", "shard_spec_for"]


def shard_spec_for(size, chunk_size, *, max_shard_bytes: int = int(3.5e9)):
    """The ``ShardingSpecification`` for a uint64 compressed_segmentation scale of ``size`` voxels.

    Parameters
    ----------
    size, chunk_size : sequence of 3 int
        Scale size and chunk size in voxels.
    max_shard_bytes : int
        Cap on uncompressed bytes per shard (production: 3.5e9); lowered to 1/8 of the scale.
    """
    from cloudvolume.datasource.precomputed.sharding import compute_shard_params_for_image

    total = int(np.prod(size)) * 8
    cap = max(int(np.prod(chunk_size)) * 8, min(max_shard_bytes, total // 8))
    return compute_shard_params_for_image(dataset_size=list(size), chunk_size=list(chunk_size),
                                          encoding="compressed_segmentation", dtype=np.uint64,
                                          uncompressed_shard_bytesize=cap)


def shard_layer(seg_dir, *, max_shard_bytes: int = int(3.5e9)) -> dict[int, dict]:
    """Convert every scale of the unsharded layer at ``seg_dir`` to sharded, in place.

    Returns the sharding spec written for each mip. The unsharded chunk files are removed once
    the scale's shards are written and its info entry updated."""
    from cloudfiles import CloudFiles
    from cloudvolume.datasource.precomputed.common import compressed_morton_code

    seg_dir = Path(seg_dir)
    info = json.loads((seg_dir / "info").read_text())
    cf = CloudFiles(f"file://{seg_dir}", progress=False)
    specs = {}
    for mip, scale in enumerate(info["scales"]):
        size, cs = np.array(scale["size"]), np.array(scale["chunk_sizes"][0])
        off = np.array(scale["voxel_offset"])
        grid = -(-size // cs)
        spec = shard_spec_for(size.tolist(), cs.tolist(), max_shard_bytes=max_shard_bytes)
        names, points = [], []
        for gx in range(grid[0]):
            for gy in range(grid[1]):
                for gz in range(grid[2]):
                    lo = off + np.array([gx, gy, gz]) * cs
                    hi = np.minimum(lo + cs, off + size)
                    names.append(f"{scale['key']}/{lo[0]}-{hi[0]}_{lo[1]}-{hi[1]}_{lo[2]}-{hi[2]}")
                    points.append((gx, gy, gz))
        codes = compressed_morton_code(np.array(points), grid.tolist())
        got = {r["path"]: r["content"] for r in cf.get(names)}
        data = {}
        for name, code in zip(names, codes):
            if got.get(name) is None:  # all-background chunks may be absent: absent in the shard too
                continue
            data[int(code)] = got[name]
        files = spec.synthesize_shards(data)
        for fname, blob in files.items():
            (seg_dir / scale["key"] / fname).write_bytes(blob)
        for name in names:
            for suffix in ("", ".gz", ".br", ".zstd"):
                p = seg_dir / (name + suffix)
                if p.exists():
                    p.unlink()
        scale["sharding"] = {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in spec.to_dict().items()}
        specs[mip] = scale["sharding"]
    (seg_dir / "info").write_text(json.dumps(info, indent=2, sort_keys=True))
    return specs


def n_shard_files(spec: dict, size, chunk_size) -> int:
    """Upper bound on shard files of a scale (for messages and tests)."""
    grid = -(-np.asarray(size) // np.asarray(chunk_size))
    return min(2 ** int(spec["shard_bits"]), int(math.prod(grid.tolist())))
