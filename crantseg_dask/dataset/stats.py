"""Density figures of a dataset's supervoxel layer: what a reader of its chunks is up against.

``dataset_stats(path)`` reports, for mip 0: bytes per storage chunk as stored (and decompressed),
labels per storage chunk and per graph chunk, mean bits per compressed_segmentation block, and the
labelled share of the voxels (of the whole volume and, when the dataset records its tissue outline,
of the tissue). Storage-chunk figures come from a deterministic sample of chunk files; labels per
graph chunk come from every supervoxel ID (each encodes its chunk). Benchmarks print these with
their results so that every figure says what world it was measured on.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .layout import load_json

__all__ = ["dataset_stats", "block_bits", "format_stats"]


def block_bits(raw: bytes, shape, block=(8, 8, 8)) -> np.ndarray:
    """Encoded bits of every block of one single-channel compressed_segmentation chunk.

    The chunk starts with the channel's header offset (in 32-bit words); each block's header is two
    words, the first holding the lookup-table offset (24 bits) and the bit width (8 bits)."""
    words = np.frombuffer(raw, dtype="<u4")
    n = int(np.prod(-(-np.asarray(shape) // np.asarray(block))))
    start = int(words[0])
    return (words[start: start + 2 * n: 2] >> 24).astype(np.int64)


def dataset_stats(path, *, sample: int = 64, seed: int = 0) -> dict:
    """Density figures of the dataset at ``path`` (mip 0; ``sample`` storage chunks at most)."""
    import compressed_segmentation as cseg

    p = Path(path)
    info = load_json(p / "segmentation" / "info")
    scale = info["scales"][0]
    block = tuple(scale.get("compressed_segmentation_block_size", (8, 8, 8)))
    files = sorted(f for f in (p / "segmentation" / scale["key"]).iterdir() if f.is_file())
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(files), size=min(sample, len(files)), replace=False).tolist())
    stored, raw_bytes, labels, bits, fg, voxels = [], [], [], [], 0, 0
    tissue_fg = tissue_n = 0
    meta = load_json(p / "dataset.json")
    mask_fn = _tissue_fn(meta)
    for i in pick:
        f = files[i]
        data = f.read_bytes()
        stored.append(len(data))
        raw = gzip.decompress(data) if f.suffix == ".gz" else data
        raw_bytes.append(len(raw))
        box = [tuple(int(v) for v in r.split("-")) for r in f.name.split(".")[0].split("_")]
        shape = tuple(b - a for a, b in box)
        arr = cseg.decompress(raw, shape, np.uint64, block, order="F")
        arr = np.asarray(arr).reshape(shape, order="F") if arr.ndim != 3 else arr
        u = np.unique(arr)
        labels.append(int((u != 0).sum()))
        bits.append(block_bits(raw, shape, block))
        fg += int(np.count_nonzero(arr))
        voxels += arr.size
        if mask_fn is not None:
            m = mask_fn(box)
            tissue_fg += int(np.count_nonzero(arr[m]))
            tissue_n += int(m.sum())
    svs = np.load(p / "history" / "supervoxels.npy")
    from .._ids import IDLayout

    layout = IDLayout.from_graph_info(meta["graph"])
    _, per_graph_chunk = np.unique(layout.chunk_id(svs), return_counts=True)
    allbits = np.concatenate(bits) if bits else np.zeros(0)
    return {
        "chunks_sampled": len(pick),
        "chunk_shape": list(scale["chunk_sizes"][0]),
        "bytes_per_chunk_mean": float(np.mean(stored)),
        "bytes_per_chunk_median": float(np.median(stored)),
        "raw_bytes_per_chunk_mean": float(np.mean(raw_bytes)),
        "labels_per_chunk_mean": float(np.mean(labels)),
        "labels_per_chunk_median": float(np.median(labels)),
        "labels_per_graph_chunk_mean": float(np.mean(per_graph_chunk)),
        "labels_per_graph_chunk_median": float(np.median(per_graph_chunk)),
        "mean_bits_per_block": float(allbits.mean()) if allbits.size else 0.0,
        "labelled_share": fg / voxels if voxels else 0.0,
        "labelled_share_of_tissue": tissue_fg / tissue_n if tissue_n else None,
        "supervoxels": int(len(svs)),
        "mean_supervoxel_voxels": float(np.prod(scale["size"]) * (fg / voxels) / len(svs)) if len(svs) else 0.0,
    }


def _tissue_fn(meta: dict):
    """Tissue mask of a mip-0 voxel box, when the dataset records its outline (dense datasets)."""
    tissue = meta.get("tissue")
    if not tissue:
        return None
    from .layout import DatasetParams
    from .tissue import tissue_box

    params = DatasetParams.from_json(meta["params"])
    return lambda box: tissue_box(params, np.asarray(tissue["phases"]), box)


def format_stats(s: dict) -> str:
    """One line for benchmark output."""
    tissue = s.get("labelled_share_of_tissue")
    return (f"dataset: {s['supervoxels']} supervoxels; per {'x'.join(map(str, s['chunk_shape']))} chunk "
            f"{s['bytes_per_chunk_mean'] / 1024:.1f} KiB stored ({s['raw_bytes_per_chunk_mean'] / 1024:.1f} KiB raw), "
            f"{s['labels_per_chunk_mean']:.0f} labels; {s['labels_per_graph_chunk_mean']:.0f} labels per graph chunk; "
            f"{s['mean_bits_per_block']:.2f} bits per block; labelled {100 * s['labelled_share']:.1f}% of voxels"
            + (f", {100 * tissue:.1f}% of tissue" if tissue is not None else ""))
