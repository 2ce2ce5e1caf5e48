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
from .bodies import assign_fragments
from .neurons import grow_neurons, rasterize_slab
from .tissue import fill_slab, make_cells

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


def _count_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (min, max) pairs of two equal-length uint64 arrays, with their counts."""
    a, b = np.minimum(u, v), np.maximum(u, v)
    if not len(a):
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    start = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    return np.stack([a[start], b[start]], axis=1), np.diff(np.r_[start, len(a)])


def _label_slab(pieces: np.ndarray, params: DatasetParams, layout: IDLayout, cz: int, lut: np.ndarray):
    """Turn piece ids into layer-1 IDs: one supervoxel per (piece, graph chunk), chunk by chunk.

    Returns the label block, the new IDs, each ID's piece, each ID's first voxel (local), and the
    face-adjacent pairs of different non-zero labels inside the slab with their face counts.
    ``lut`` is a zeroed int32 scratch array longer than the largest piece id (left zeroed)."""
    gx, gy, _ = params.graph_chunk
    X, Y, Z = pieces.shape
    labels = np.zeros(pieces.shape, dtype=np.uint64)
    ids_l, piece_l, anchor_l, pairs_l, area_l = [], [], [], [], []
    for cx, x0 in enumerate(range(0, X, gx)):
        for cy, y0 in enumerate(range(0, Y, gy)):
            blk = pieces[x0:x0 + gx, y0:y0 + gy]
            present = np.bincount(blk.ravel(), minlength=1) > 0
            present[0] = False
            u = np.flatnonzero(present)          # pieces in this chunk, ascending
            if not u.size:
                continue
            lut[u] = np.arange(1, u.size + 1, dtype=np.int32)
            loc = lut[blk]                        # 0 background, 1.. local label
            lut[u] = 0
            ids = layout.encode(1, cx, cy, cz, np.arange(1, u.size + 1, dtype=np.uint64))
            table = np.r_[np.uint64(0), ids]
            labels[x0:x0 + gx, y0:y0 + gy] = table[loc]
            flat = loc.ravel()
            first = np.zeros(u.size + 1, dtype=np.int64)
            first[flat[::-1]] = np.arange(flat.size - 1, -1, -1)
            ax, ay, az = np.unravel_index(first[1:], blk.shape)
            ids_l.append(ids), piece_l.append(u)
            anchor_l.append(np.stack([ax + x0, ay + y0, az], axis=1))
            n = u.size + 1
            counts = np.zeros(n * n, dtype=np.int64)
            for axis in range(3):
                a = np.moveaxis(loc, axis, 0)
                p, q = a[:-1].ravel(), a[1:].ravel()
                m = (p != q) & (p != 0) & (q != 0)
                lo, hi = np.minimum(p[m], q[m]), np.maximum(p[m], q[m])
                counts += np.bincount(lo.astype(np.int64) * n + hi, minlength=n * n)
            hit = np.flatnonzero(counts)
            i, j = np.divmod(hit, n)
            pairs_l.append(np.stack([table[i], table[j]], axis=1)), area_l.append(counts[hit])
    # faces between the slab's chunks (x, then y)
    for axis, step in ((0, gx), (1, gy)):
        for c in range(step, pieces.shape[axis], step):
            a = np.take(labels, c - 1, axis=axis).ravel()
            b = np.take(labels, c, axis=axis).ravel()
            m = (a != 0) & (b != 0)
            pr, ar = _count_pairs(a[m], b[m])
            pairs_l.append(pr), area_l.append(ar)
    empty = np.zeros(0, np.uint64)
    cat = lambda xs, z: np.concatenate(xs) if xs else z  # noqa: E731
    return (labels, cat(ids_l, empty), cat(piece_l, np.zeros(0, np.int64)).astype(np.int64),
            cat(anchor_l, np.zeros((0, 3), np.int64)), cat(pairs_l, np.zeros((0, 2), np.uint64)),
            cat(area_l, np.zeros(0, np.int64)))


def _contacts_across(below: np.ndarray | None, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of different non-zero labels facing each other across a slab boundary, with counts."""
    if below is None:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64)
    u, v = below.ravel(), labels[:, :, 0].ravel()
    m = (u != 0) & (v != 0)
    return _count_pairs(u[m], v[m])


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
    # gzip level 6 (zlib's default) rather than cloud-volume's 9: a third of the time, a few % larger
    vols = [CloudVolume(seg, mip=m, progress=False, compress_level=6) for m in range(params.n_mips)]

    field = make_cells(params, rng) if params.dense else None
    n_neuron_pieces = sk.n_pieces
    n_pieces = n_neuron_pieces + 1 + (field.n_cells if field is not None else 0)
    lut = np.zeros(n_pieces + 1, dtype=np.int32)
    all_ids, all_pieces, all_anchor, contact_list, area_list = [], [], [], [], []
    below = None
    gz = params.graph_chunk[2]
    off = np.asarray(params.voxel_offset)
    for cz, z0 in enumerate(range(0, params.size[2], gz)):
        z1 = min(z0 + gz, params.size[2])
        pieces = rasterize_slab(sk, params, z0, z1)
        if field is not None:
            fill_slab(pieces, params, field, z0, n_neuron_pieces + 1)
        labels, ids, piece_of, anchor, inside, inside_area = _label_slab(pieces, params, layout, cz, lut)
        del pieces
        across, across_area = _contacts_across(below, labels)
        contact_list += [inside, across]
        area_list += [inside_area, across_area]
        below = labels[:, :, -1].copy()
        all_ids.append(ids), all_pieces.append(piece_of), all_anchor.append(anchor + off + [0, 0, z0])
        block = labels
        del labels
        for m, vol in enumerate(vols):
            if m:
                block = downsample_mode(block)
            o = vol.voxel_offset
            vol[o[0]: o[0] + block.shape[0], o[1]: o[1] + block.shape[1], o[2] + z0: o[2] + z1] = block
        del block
        if progress:
            print(f"  slab {cz + 1}/{-(-params.size[2] // gz)} written ({time.perf_counter() - t0:.1f} s)", flush=True)

    svs = np.concatenate(all_ids)
    order = np.argsort(svs)
    svs = svs[order]
    piece_of = np.concatenate(all_pieces)[order]
    anchor = np.concatenate(all_anchor)[order].astype(np.int64)
    pairs = np.concatenate(contact_list)
    area = np.concatenate(area_list)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    contacts, area = pairs[order], area[order]
    sv_fragment, fragment_neuron = assign_fragments(sk, piece_of, n_neuron_pieces, svs, contacts, area, rng,
                                                    params)
    sv_neuron = fragment_neuron[sv_fragment].astype(np.int32)

    history = simulate_edits(params, layout, rng, svs, sv_fragment, fragment_neuron, contacts,
                             area.astype(np.int64), anchor, n_neuron_fragments=len(sk.fragment_neuron))
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
        **({"tissue": {"phases": field.tissue_phase.tolist()}} if field is not None else {}),
        "counts": {
            "supervoxels": int(len(svs)),
            "fragments": int(len(set(sv_fragment.tolist()))),
            "neuron_fragments": int(len(sk.fragment_neuron)),  # fragments 0..n-1 are neurons' own
            "neurons": int(len(set(sv_neuron.tolist()))),
            "operations": len(history["operations"]),
            "materializations": len(history["materializations"]),
            "nodes": int(len(graph["node_ids"])),
        },
    })
    log.debug("dataset %s written to %s in %.1f s", params.name, tmp, time.perf_counter() - t0)
