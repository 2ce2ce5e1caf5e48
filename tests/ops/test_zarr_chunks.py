"""Direct chunk reads and writes of a job's Zarr columns, against zarr's own reads and writes."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from crantseg_dask.errors import JobStoreError
from crantseg_dask.ops._zarr_chunks import ChunkCodec
from crantseg_dask.persist import CODECS, WRITE_ALL


def _array(tmp_path, values, chunk=100, codecs=CODECS, name="x", fill=0):
    g = zarr.open_group(str(tmp_path / "g"), mode="a")
    with zarr.config.set(WRITE_ALL):
        arr = g.create_array(name, shape=values.shape, chunks=(chunk,), dtype=values.dtype, fill_value=fill, **codecs)
        arr[:] = values
    return arr


def _values(n=1050, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.choice(rng.integers(1, 1 << 62, 40, dtype=np.int64).astype(np.uint64), n)
    v[300:400] = 0  # one chunk all fill
    v[500:520] = 0  # one starting with fill
    return v


def test_read_and_take_equal_zarrs_read(tmp_path):
    v = _values()
    arr = _array(tmp_path, v)  # last chunk partial (1050 = 10.5 chunks)
    codec = ChunkCodec.of(arr, tmp_path / "g" / "x")
    assert codec is not None and codec.n_chunks == 11
    assert (codec.read() == arr[:]).all() and (codec.read() == v).all()
    rows = np.array([0, 5, 99, 100, 350, 1000, 1049])
    assert (codec.take(rows) == v[rows]).all()
    assert (codec.read([2, 10]) == np.concatenate([v[200:300], v[1000:]])).all()


@pytest.mark.parametrize("level", [0, 1])
def test_written_chunks_are_zarrs_bytes_and_zarr_reads_them(tmp_path, level):
    """Written over a hard-linked copy: the files are byte for byte what zarr writes for the same
    values at the same level; zarr reads them back; the linked originals are not written through."""
    import os
    import shutil

    old, new = _values(seed=1), _values(seed=2)
    arr = _array(tmp_path, old, codecs={"compressors": (ZstdCodec(level=level), Crc32cCodec())})
    _array(tmp_path, new, codecs={"compressors": (ZstdCodec(level=level), Crc32cCodec())}, name="ref")
    folder = tmp_path / "g" / "x"
    shutil.copytree(folder, tmp_path / "linked", copy_function=os.link)
    before = {f.name: f.read_bytes() for f in (tmp_path / "linked" / "c").iterdir()}
    ChunkCodec.of(arr, folder).write(new, [0, 3, 5, 10])
    got = zarr.open_group(str(tmp_path / "g"), mode="r")["x"][:]
    want = old.copy()
    want[0:100], want[300:400], want[500:600], want[1000:] = new[0:100], new[300:400], new[500:600], new[1000:]
    assert (got == want).all()
    for i in (0, 3, 5, 10):
        assert (folder / "c" / str(i)).read_bytes() == (tmp_path / "g" / "ref" / "c" / str(i)).read_bytes()
    assert {f.name: f.read_bytes() for f in (tmp_path / "linked" / "c").iterdir()} == before
    assert not list(folder.glob("c/.*"))  # no partial files left


def test_a_damaged_or_missing_chunk_is_an_error_naming_the_file(tmp_path):
    v = _values()
    arr = _array(tmp_path, v)
    codec = ChunkCodec.of(arr, tmp_path / "g" / "x")
    f = tmp_path / "g" / "x" / "c" / "4"
    data = bytearray(f.read_bytes())
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(JobStoreError, match=r"c/4: chunk 4 .*damaged"):
        codec.read()
    f.unlink()
    with pytest.raises(JobStoreError, match=r"c/4: chunk 4 .*missing"):
        codec.take(np.array([450]))
    assert (codec.take(np.array([5, 1049])) == v[[5, 1049]]).all()  # the other chunks still read


def test_other_codec_chains_are_left_to_zarr(tmp_path):
    v = _values()
    assert ChunkCodec.of(_array(tmp_path, v, codecs={"compressors": (ZstdCodec(),)}, name="a"), tmp_path) is None
    assert ChunkCodec.of(_array(tmp_path, v, codecs={"compressors": None}, name="b"), tmp_path) is None
    assert ChunkCodec.of(_array(tmp_path, v.astype(np.float64), name="c"), tmp_path) is None
