"""The shared chunk reader: whole chunks equal the stored volume (unsharded and truly sharded
layers); missing chunks are errors or background as configured."""
import shutil

import numpy as np
import pytest

from crantseg_dask.errors import SourceError
from crantseg_dask.sources import open_source
from crantseg_dask.sources._chunks import ChunkReader
from crantseg_dask.sources.base import SourceSpec


@pytest.mark.parametrize("mip", [0, 1, 2])
@pytest.mark.parametrize("sharded", [False, True])
def test_chunks_equal_the_stored_volume(local_spec, truth, tiny_sharded_path, mip, sharded):
    path = tiny_sharded_path if sharded else truth.path
    meta = open_source(SourceSpec(kind="local", name="t", path=str(path))).meta
    assert meta.sharded == (sharded,) * len(meta.resolution)
    reader = ChunkReader(f"file://{path / 'segmentation'}", meta)
    off, size = truth.bounds(mip)
    grid = -(-size // np.array(meta.chunk_size[mip]))
    vol = truth.volume(mip)
    for chunk in [(0, 0, 0), tuple(grid - 1), tuple(grid // 2)]:
        box = reader.chunk_box(chunk, mip)
        want = vol[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))]
        np.testing.assert_array_equal(reader.read(chunk, mip), want)


def test_a_missing_chunk_is_an_error_unless_fill_missing(local_spec, truth, tmp_path):
    copy = tmp_path / "seg"
    shutil.copytree(truth.path / "segmentation", copy)
    meta = open_source(local_spec).meta
    reader = ChunkReader(f"file://{copy}", meta)
    name = reader.filename((1, 1, 1), 0)
    (copy / (name + ".gz")).unlink()
    with pytest.raises(SourceError, match="missing"):
        reader.read((1, 1, 1), 0)
    filled = ChunkReader(f"file://{copy}", meta, fill_missing=True).read((1, 1, 1), 0)
    assert filled.shape == tuple(meta.chunk_size[0]) and not filled.any()


def test_a_corrupt_chunk_is_an_error(local_spec, truth, tmp_path):
    copy = tmp_path / "seg"
    shutil.copytree(truth.path / "segmentation", copy)
    reader = ChunkReader(f"file://{copy}", open_source(local_spec).meta)
    name = reader.filename((0, 1, 0), 0)
    (copy / (name + ".gz")).unlink()
    (copy / name).write_bytes(b"not a chunk")
    with pytest.raises(SourceError, match="decoding"):
        reader.read((0, 1, 0), 0)


def test_truncated_chunks_are_recognised_before_decoding(truth):
    from cloudfiles import CloudFiles

    from crantseg_dask.sources._chunks import cseg_problem

    cf = CloudFiles(f"file://{truth.path / 'segmentation'}")
    name = next(n for n in cf.list(prefix="16_16_42/"))
    data = cf.get(name[:-3] if name.endswith(".gz") else name)
    assert cseg_problem(data, (32, 32, 16), (8, 8, 8)) is None
    for cut in (len(data) // 2 // 4 * 4, 8, 12):
        assert cseg_problem(data[:cut], (32, 32, 16), (8, 8, 8))
