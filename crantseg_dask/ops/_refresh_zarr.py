"""Writing a refreshed Zarr group (a job's output) copy-on-write, for ``_refresh_store``.

The staged group's tree is copied with every chunk file hard-linked (no data copied); only the
chunks whose values change are written anew, each as a new file replacing its link, so the old
group's files are never written through. ``_refresh_store`` then swaps the staged group in.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ._zarr_chunks import ChunkCodec

__all__ = ["ZSTD_LEVEL", "changed_chunks", "fast_zstd", "stage_tree", "write_chunks", "write_zarr"]

#: zstd level of the Zarr chunks a refresh writes: level 1 encodes ID columns about 2.5x faster
#: than a job's level 0 (zstd's default, 3) and, on root IDs, about as small or smaller
ZSTD_LEVEL = 1


def write_zarr(table, tmp: Path, arrays: dict[str, np.ndarray], timestamp: str, history: list,
               changed: dict[str, np.ndarray]) -> dict:
    """Stage the refreshed group of ``table`` (a Zarr ``RefreshTable``) at ``tmp``: every file
    hard-linked to the old group's, then only the chunks whose values change written anew (a new
    file replacing the link, never written through it); a column the group lacks is created whole."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from ..persist import CODECS, WRITE_ALL, value_range

    stage_tree(table.path, tmp)
    for name in arrays:
        fast_zstd(tmp / name / "zarr.json")
    g = zarr.open_group(str(tmp), mode="r+")
    n = int(table.attrs["n_rows"])
    size = g[next(iter(arrays))].chunks[0]
    with zarr.config.set(WRITE_ALL):
        for name, values in arrays.items():
            if name in g:
                arr = g[name]
                values = np.asarray(values, dtype=arr.dtype)
                dirty = (np.unique(np.asarray(changed[name], np.int64) // arr.chunks[0]) if name in changed
                         else changed_chunks(np.asarray(table.columns[name]), values, arr.chunks[0]))
            else:
                arr = g.create_array(name, shape=(n,), chunks=(size,), dtype=np.uint64, fill_value=0,
                                     dimension_names=("row",),
                                     **{**CODECS, "compressors": (ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec())})
                values = np.asarray(values, dtype=np.uint64)
                dirty = np.arange(-(-n // size))
            write_chunks(tmp / name, arr, values, dirty)
            key = f"_range_{name}"
            index = ChunkCodec.of(g[key], tmp / key) if (tmp / key / "zarr.json").is_file() else None
            if index is not None and index.n == 2 * len(range(0, n, arr.chunks[0])):
                size = arr.chunks[0]
                for i in np.asarray(dirty, np.int64).tolist():  # the chunks rewritten: their range anew
                    index.put(i, index.encode(value_range(values[i * size: (i + 1) * size])))
    valid = history[-1].get("valid_chunks")
    if valid:  # the checksums of the chunks this refresh left valid (read by the next one)
        history[-1]["valid_chunks"] = {c: ChunkCodec.of(g[c], tmp / c).tails() for c in valid
                                       if ChunkCodec.of(g[c], tmp / c) is not None}
    g.attrs["crantseg"] = {**table.attrs, "timestamp": timestamp, "refresh": history}
    return _new_files(tmp)


def fast_zstd(meta: Path) -> None:
    """Set the zstd level in a staged array's ``zarr.json`` (a copy, not a link) to ``ZSTD_LEVEL``
    for the chunks this refresh writes. A zstd frame decodes the same whatever level wrote it, so
    the chunks kept from the old group read as before."""
    if not meta.is_file():
        return
    doc = json.loads(meta.read_text())
    codecs = [c for c in doc.get("codecs", []) if isinstance(c, dict) and c.get("name") == "zstd"]
    if codecs and all(c.get("configuration", {}).get("level") != ZSTD_LEVEL for c in codecs):
        for c in codecs:
            c.setdefault("configuration", {})["level"] = ZSTD_LEVEL
        meta.write_text(json.dumps(doc, indent=2))


def stage_tree(src: Path, dst: Path) -> None:
    """Copy the group's tree to ``dst``: chunk files hard-linked (no data copied), metadata copied."""
    shutil.copytree(src, dst, copy_function=_link_chunks)


def changed_chunks(old: np.ndarray, new: np.ndarray, size: int) -> np.ndarray:
    """Indices of the length-``size`` chunks of a 1-D column in which ``new`` differs from ``old``."""
    diff = np.flatnonzero(old != new)
    return np.unique(diff // size)


def _runs(chunks: np.ndarray) -> list[tuple[int, int]]:
    """Sorted chunk indices as half-open runs of consecutive chunks."""
    if not len(chunks):
        return []
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    return [(int(c[0]), int(c[-1]) + 1) for c in np.split(chunks, breaks)]


def write_chunks(folder: Path, arr, values: np.ndarray, chunks: np.ndarray) -> None:
    """Write ``chunks`` (sorted indices) of the 1-D array ``arr`` (stored under ``folder``) from
    ``values``, each as a new file replacing its hard link, so the old group's files are never
    written through: a job's codec chain directly, in parallel (``ChunkCodec``), else via zarr."""
    codec = ChunkCodec.of(arr, folder, level=ZSTD_LEVEL)
    if codec is not None:
        codec.write(values, chunks)
        return
    size = arr.chunks[0]
    for lo, hi in _runs(np.asarray(chunks, np.int64)):
        for i in range(lo, hi):
            f = folder / arr.metadata.encode_chunk_key((i,))
            if f.exists():
                f.unlink()
        arr[lo * size: min(hi * size, arr.shape[0])] = values[lo * size: min(hi * size, arr.shape[0])]


def _new_files(tmp: Path) -> dict:
    """Files under ``tmp`` not shared with the old group (link count 1): what staging wrote."""
    files = size = 0
    for root, _, names in os.walk(tmp):
        for name in names:
            st = os.stat(os.path.join(root, name))
            if st.st_nlink == 1:
                files += 1
                size += st.st_size
    return {"files_written": files, "bytes_written": size}


def _link_chunks(src: str, dst: str) -> None:
    """Hard-link a chunk file (copy where links are impossible); copy metadata (zarr writes it in place)."""
    if os.path.basename(src) != "zarr.json":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)

