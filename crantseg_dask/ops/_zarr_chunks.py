"""Read and write whole chunks of a job's 1-D Zarr columns directly, in parallel threads.

A job's columns use one codec chain (``persist.CODECS``): little-endian bytes, zstd, crc32c. For
that chain a chunk file is ``zstd(values) + crc32c(zstd(values))`` (4 bytes, little endian), which
this module encodes and decodes with the same libraries zarr uses (numcodecs' Zstd,
google_crc32c), several chunks at once in a thread pool (both release the GIL), without zarr's
per-chunk asyncio machinery. The files are byte for byte what zarr writes, and zarr reads them.

``ChunkCodec.of(array)`` is None for any other chain or layout; callers then use zarr itself.

A chunk file that is missing or fails its checksum is an error naming the file, never zeros.
A chunk is written to a new file beside it and renamed over the old name, so a hard link to the
old file (a staged copy-on-write group) is replaced, never written through.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import JobStoreError

__all__ = ["ChunkCodec", "N_THREADS", "leaf_pool"]

N_THREADS = 4  # zstd and crc32c release the GIL: chunks encode / decode in parallel


@dataclass(frozen=True)
class ChunkCodec:
    """The chunks of one 1-D array with the bytes -> zstd -> crc32c chain, stored under ``folder``."""

    folder: Path
    key: object        # chunk index tuple -> key (the array's chunk key encoding)
    size: int          # chunk length
    n: int             # array length
    dtype: np.dtype
    fill: object
    level: int
    checksum: bool

    @classmethod
    def of(cls, arr, folder: Path, level: int | None = None) -> "ChunkCodec | None":
        """The codec of Zarr array ``arr`` stored at ``folder``, or None where it is not the
        plain chain (then read and write it through zarr). ``level``: the zstd level to write
        with (default the array's; any level decodes the same)."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        meta = getattr(arr, "metadata", None)
        codecs = tuple(getattr(meta, "codecs", ()) or ())
        if (getattr(meta, "zarr_format", None) != 3 or len(arr.shape) != 1 or len(codecs) != 3
                or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], ZstdCodec)
                or not isinstance(codecs[2], Crc32cCodec)):
            return None
        dtype = np.dtype(arr.dtype)
        if dtype.kind not in "iu" or (codecs[0].endian is not None and codecs[0].endian.value != "little"):
            return None
        return cls(Path(folder), meta.encode_chunk_key, int(arr.chunks[0]), int(arr.shape[0]),
                   dtype.newbyteorder("<"), arr.fill_value, codecs[1].level if level is None else level,
                   bool(codecs[1].checksum))

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.size)

    def path(self, i: int) -> Path:
        return self.folder / self.key((int(i),))

    def _zstd(self):
        from numcodecs import Zstd

        return Zstd(level=self.level, checksum=self.checksum)

    # -- reading ------------------------------------------------------------------------------
    def decode(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``i``'s values (the array's part of it: a last chunk's padding cut off),
        decoded straight into ``out`` where given and as long as a whole chunk."""
        import google_crc32c

        f = self.path(i)
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise JobStoreError(f"{f}: chunk {i} of the column is missing") from None
        body = np.frombuffer(data, np.uint8)[:-4]  # no copy
        if len(data) < 4 or google_crc32c.value(body) != int.from_bytes(data[-4:], "little"):
            raise JobStoreError(f"{f}: chunk {i} of the column is damaged (crc32c checksum mismatch)")
        want = min(self.size, self.n - i * self.size)
        if out is not None and len(out) == self.size and out.flags.c_contiguous:
            try:
                self._zstd().decode(body, out=out)
                return out
            except (RuntimeError, ValueError) as e:  # not a whole chunk's bytes
                raise JobStoreError(f"{f}: chunk {i} does not decode to {self.size} values ({e})") from None
        values = np.frombuffer(self._zstd().decode(body), dtype=self.dtype)
        if len(values) != self.size:
            raise JobStoreError(f"{f}: chunk {i} holds {len(values)} values, not {self.size}")
        if out is not None:
            out[:] = values[:want]
            return out
        return values[:want]

    def read(self, chunks=None, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """The whole column (``chunks`` None) or the concatenated values of ``chunks`` (sorted
        indices), decoded in parallel into one array."""
        chunks = np.arange(self.n_chunks) if chunks is None else np.asarray(chunks, np.int64)
        lens = np.minimum(self.size, self.n - chunks * self.size)
        out = np.empty(int(lens.sum()), self.dtype)
        starts = np.r_[0, np.cumsum(lens)[:-1]].astype(np.int64)

        def one(k: int) -> None:
            self.decode(int(chunks[k]), out[starts[k]: starts[k] + lens[k]])

        _run(one, range(len(chunks)), pool)
        return out

    def read_in_place(self, chunks, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """A full-length column holding the values of ``chunks`` where they belong, 0 elsewhere
        (untouched zero pages: nothing is written outside those chunks)."""
        out = np.zeros(self.n, self.dtype)

        def one(i: int) -> None:
            self.decode(i, out[i * self.size: min((i + 1) * self.size, self.n)])

        _run(one, [int(i) for i in chunks], pool)
        return out

    def tails(self) -> list[int]:
        """Each chunk file's stored crc32c (its last 4 bytes): a fingerprint of every chunk's
        content read without decoding anything; -1 for a missing file."""
        out = []
        for i in range(self.n_chunks):
            try:
                with open(self.path(i), "rb") as fh:
                    fh.seek(-4, os.SEEK_END)
                    out.append(int.from_bytes(fh.read(4), "little"))
            except OSError:
                out.append(-1)
        return out

    def take(self, rows: np.ndarray, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """The values at sorted ``rows``: only the chunks holding them are decoded."""
        rows = np.asarray(rows, np.int64)
        chunks = np.unique(rows // self.size)
        held = self.read(chunks, pool)
        # position of each row in the concatenation of its chunks
        rank = np.searchsorted(chunks, rows // self.size)
        lens = np.minimum(self.size, self.n - chunks * self.size)
        starts = np.r_[0, np.cumsum(lens)[:-1]].astype(np.int64)
        return held[starts[rank] + rows % self.size]

    # -- writing ------------------------------------------------------------------------------
    def encode(self, values: np.ndarray) -> bytes:
        """A chunk file's bytes for ``values`` (a last chunk padded with the fill value)."""
        import google_crc32c

        values = np.ascontiguousarray(values, dtype=self.dtype)
        if len(values) < self.size:
            values = np.concatenate([values, np.full(self.size - len(values), self.fill, self.dtype)])
        body = self._zstd().encode(values)
        return bytes(body) + int(google_crc32c.value(body)).to_bytes(4, "little")

    def write(self, values: np.ndarray, chunks, pool: ThreadPoolExecutor | None = None) -> None:
        """Write ``chunks`` of the column from the full-length ``values``. A chunk whose values
        are all the fill value is encoded once and its bytes reused."""
        fill_bytes: list[bytes] = []

        def one(i: int) -> None:
            part = values[i * self.size: min((i + 1) * self.size, self.n)]
            if not (part != self.fill).any():
                if not fill_bytes:
                    fill_bytes.append(self.encode(part[:0]))
                data = fill_bytes[0]
            else:
                data = self.encode(part)
            self.put(i, data)

        _run(one, [int(i) for i in chunks], pool)

    def put(self, i: int, data: bytes) -> None:
        """Store chunk ``i``'s file: a new file renamed over the old name (a link replaced)."""
        f = self.path(i)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.part")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, f)


_LEAF_POOL: list[ThreadPoolExecutor] = []
_LEAF_LOCK = threading.Lock()


def leaf_pool() -> ThreadPoolExecutor:
    """A process-wide pool for leaf work only (a task in it never waits on another task in it):
    chunk codecs, blocks of numpy passes. Its threads are started once, not per call."""
    with _LEAF_LOCK:
        if not _LEAF_POOL:
            _LEAF_POOL.append(ThreadPoolExecutor(N_THREADS, thread_name_prefix="crantseg-leaf"))
        return _LEAF_POOL[0]


def _run(fn, items, pool: ThreadPoolExecutor | None) -> None:
    items = list(items)
    if len(items) == 1:
        fn(items[0])
    elif items:
        list((pool or leaf_pool()).map(fn, items))
