"""Write a deterministic CRANT-like dataset: supervoxel volume, contacts, edit history, chunked graph.

``make_dataset(params, out)`` is what ``crantseg make-dataset`` runs. The volume is rasterised one
graph-chunk-high z-slab at a time (supervoxels never cross a graph chunk, so each slab owns its
chunks' supervoxels), labelled with graphene layer-1 IDs, written at mip 0 with cloud-volume
(compressed_segmentation) and downsampled 2x2x1 by majority for mips 1.. .
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .._ids import IDLayout
from .history import build_graph, simulate_edits
from .layout import GENERATOR_VERSION, DatasetParams, is_dataset_dir, write_json
from .neurons import grow_neurons, rasterize_slab

__all__ = ["make_dataset", "graph_info", "downsample_mode"]

log = logging.getLogger("crantseg.dataset")


def graph_info(params: DatasetParams) -> dict:
    """The ``graph`` section of the graphene info for this dataset."""
    layout = IDLayout.pcg(params.n_layers)
    return {
        "chunk_size": list(params.graph_chunk),
        "n_layers": params.n_layers,
        "spatial_bit_masks": layout.spatial_bit_masks(),
        "n_bits_for_layer_id": layout.layer_bits,
        "fan_out": 2,
        "cv_mip": 0,
        "bounding_box": [2048, 2048, 512],
    }


def downsample_mode(a: np.ndarray) -> np.ndarray:
    """2x2x1 majority downsampling of a label block (ties go to the lowest-index corner)."""
    x, y = a.shape[:2]
    if x % 2 or y % 2:
        a = np.pad(a, ((0, x % 2), (0, y % 2), (0, 0)), mode="edge")
    p, q, r, s = a[0::2, 0::2], a[1::2, 0::2], a[0::2, 1::2], a[1::2, 1::2]
    return np.where((p == q) | (p == r) | (p == s), p, np.where((q == r) | (q == s), q, np.where(r == s, r, p)))


def _label_slab(pieces: np.ndarray, params: DatasetParams, layout: IDLayout, cz: int):
    """Turn piece ids into layer-1 IDs: one supervoxel per (piece, graph chunk).

    Returns the label block, the new IDs, each ID's piece, each ID's first voxel (local), and the
    face-adjacent pairs of different labels inside the block (computed on foreground voxels only)."""
    gx, gy, _ = params.graph_chunk
    ny = -(-params.size[1] // gy)
    flat = pieces.ravel()
    fg = np.flatnonzero(flat)
    X, Y, Z = pieces.shape
    x, rem = np.divmod(fg, Y * Z)
    y, z = np.divmod(rem, Z)
    chunk = (x // gx) * ny + (y // gy)
    n_pieces = int(flat.max()) + 1 if fg.size else 1
    key = chunk.astype(np.int64) * n_pieces + flat[fg]
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    u_chunk, u_piece = np.divmod(uniq, n_pieces)
    starts = np.r_[0, np.flatnonzero(np.diff(u_chunk)) + 1]
    counter = np.arange(len(uniq)) - np.repeat(starts, np.diff(np.r_[starts, len(uniq)])) + 1
    cx, cy = np.divmod(u_chunk, ny)
    ids = layout.encode(1, cx, cy, np.full_like(cx, cz), counter.astype(np.uint64))
    labels = np.zeros(flat.shape, dtype=np.uint64)
    fg_labels = ids[inv]
    labels[fg] = fg_labels
    pairs = []
    for stride, coord, limit in ((Y * Z, x, X - 1), (Z, y, Y - 1), (1, z, Z - 1)):
        ok = coord < limit
        u, v = fg_labels[ok], labels[fg[ok] + stride]
        m = (v != 0) & (u != v)
        pairs.append(np.stack([u[m], v[m]], axis=1))
    anchor = np.stack([x[first], y[first], z[first]], axis=1)
    return labels.reshape(pieces.shape), ids, u_piece.astype(np.int64), anchor, np.concatenate(pairs)


def _contacts_across(below: np.ndarray | None, labels: np.ndarray) -> np.ndarray:
    """Pairs of different non-zero labels facing each other across a slab boundary."""
    if below is None:
        return np.zeros((0, 2), np.uint64)
    u, v = below.ravel(), labels[:, :, 0].ravel()
    m = (u != v) & (u != 0) & (v != 0)
    return np.stack([u[m], v[m]], axis=1)


def make_dataset(params: DatasetParams, out, *, overwrite: bool = False, progress: bool = False,
                 sharded: bool = False) -> Path:
    """Generate the dataset described by ``params`` into directory ``out`` and return its path.

    ``sharded=True`` writes every mip in the neuroglancer sharded format (``dataset.sharded``).

    ``out`` must not exist or be empty; ``overwrite=True`` also replaces a dataset directory (never
    any other directory), and only once the new dataset is complete."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not is_dataset_dir(out):
            raise FileExistsError(f"{out} is not a dataset directory (no dataset.json and segmentation/info): "
                                  "overwrite only replaces a dataset; choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside ``out`` and swapped in only when complete: ``out`` keeps the old dataset until then
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _build(params, tmp, progress)
        if sharded:
            from .sharded import shard_layer

            shard_layer(tmp / "segmentation")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "dataset")
            try:
                tmp.rename(out)
            except BaseException:
                (old / "dataset").rename(out)  # put the old dataset back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(params: DatasetParams, tmp: Path, progress: bool) -> None:
    """Write the whole dataset into the (empty) directory ``tmp``."""
    from cloudvolume import CloudVolume

    t0 = time.perf_counter()
    rng = np.random.default_rng(params.seed)
    layout = IDLayout.pcg(params.n_layers)
    sk = grow_neurons(params, rng)

    seg = f"file://{tmp / 'segmentation'}"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64", encoding="compressed_segmentation",
        resolution=list(params.resolution), voxel_offset=list(params.voxel_offset),
        volume_size=list(params.size), chunk_size=list(params.storage_chunk),
        compressed_segmentation_block_size=[8, 8, 8],
    )
    vols = [CloudVolume(seg, info=info, progress=False)]
    for _ in range(1, params.n_mips):
        vols[0].add_scale([2 ** len(vols), 2 ** len(vols), 1], chunk_size=list(params.storage_chunk),
                          encoding="compressed_segmentation")
        vols.append(None)
    vols[0].commit_info()
    vols = [CloudVolume(seg, mip=m, progress=False) for m in range(params.n_mips)]

    all_ids, all_pieces, all_anchor, contact_list = [], [], [], []
    below = None
    gz = params.graph_chunk[2]
    off = np.asarray(params.voxel_offset)
    for cz, z0 in enumerate(range(0, params.size[2], gz)):
        z1 = min(z0 + gz, params.size[2])
        pieces = rasterize_slab(sk, params, z0, z1)
        labels, ids, piece_of, anchor, inside = _label_slab(pieces, params, layout, cz)
        del pieces
        contact_list += [inside, _contacts_across(below, labels)]
        below = labels[:, :, -1].copy()
        all_ids.append(ids), all_pieces.append(piece_of), all_anchor.append(anchor + off + [0, 0, z0])
        block = labels
        for m, vol in enumerate(vols):
            if m:
                block = downsample_mode(block)
            o = vol.voxel_offset
            vol[o[0]: o[0] + block.shape[0], o[1]: o[1] + block.shape[1], o[2] + z0: o[2] + z1] = block
        if progress:
            print(f"  slab {cz + 1}/{-(-params.size[2] // gz)} written ({time.perf_counter() - t0:.1f} s)", flush=True)

    svs = np.concatenate(all_ids)
    order = np.argsort(svs)
    svs = svs[order]
    piece_of = np.concatenate(all_pieces)[order]
    anchor = np.concatenate(all_anchor)[order].astype(np.int64)
    sv_fragment = sk.piece_fragment[piece_of].astype(np.int32)
    sv_neuron = sk.fragment_neuron[sv_fragment].astype(np.int32)
    pairs = np.sort(np.concatenate(contact_list), axis=1)
    if len(pairs):
        contacts, area = np.unique(pairs, axis=0, return_counts=True)
    else:
        contacts, area = np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)

    history = simulate_edits(params, layout, rng, svs, sv_fragment, sk.fragment_neuron, contacts,
                             area.astype(np.int64), anchor)
    graph = build_graph(history, layout, svs, sv_fragment, contacts)

    hist_dir, graph_dir = tmp / "history", tmp / "graph"
    hist_dir.mkdir(), graph_dir.mkdir()
    for name, arr in {
        "supervoxels": svs, "sv_fragment": sv_fragment, "sv_neuron": sv_neuron, "sv_anchor": anchor,
        "contacts": contacts.astype(np.uint64), "contact_area": area.astype(np.int64),
    }.items():
        np.save(hist_dir / f"{name}.npy", arr, allow_pickle=False)
    for name, arr in graph.items():
        np.save(graph_dir / f"{name}.npy", arr, allow_pickle=False)
    write_json(hist_dir / "edits.json", history)
    write_json(tmp / "dataset.json", {
        "generator_version": GENERATOR_VERSION,
        "params": params.to_json(),
        "graph": graph_info(params),
        "chunks_start_at_voxel_offset": True,
        "counts": {
            "supervoxels": int(len(svs)),
            "fragments": int(len(set(sv_fragment.tolist()))),
            "neurons": int(len(set(sv_neuron.tolist()))),
            "operations": len(history["operations"]),
            "materializations": len(history["materializations"]),
            "nodes": int(len(graph["node_ids"])),
        },
    })
    log.debug("dataset %s written to %s in %.1f s", params.name, tmp, time.perf_counter() - t0)
