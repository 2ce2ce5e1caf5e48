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


def test_chunk_file_names_and_reads_in_flight_of_a_file_layer(local_spec, truth, monkeypatch):
    """Names built in one pass equal the one-chunk names (ragged far edge included); a file://
    layer reads at most ``storage.file-in-flight`` at once, whatever max-in-flight says, and
    returns every chunk's bytes (checked against the decoded truth)."""
    import time

    from crantseg_dask.sources import _fetch

    meta = open_source(local_spec).meta
    settings = {"storage.file-in-flight": 2, "storage.max-in-flight": 96}
    reader = ChunkReader(f"file://{truth.path / 'segmentation'}", meta, settings=lambda k, d=None: settings.get(k, d))
    assert reader.store.cap == 2
    off, size = truth.bounds(0)
    grid = -(-size // np.array(meta.chunk_size[0]))
    chunks = [tuple(c) for c in np.argwhere(np.ones(grid, bool)).tolist()]
    assert reader.filenames(chunks, 0) == [reader.filename(c, 0) for c in chunks]
    slow = _fetch.FileStore._get
    monkeypatch.setattr(_fetch.FileStore, "_get", lambda self, *a: time.sleep(0.005) or slow(self, *a))
    _fetch.reset_stats()
    got = dict(reader.read_many(chunks, 0))
    assert 1 <= _fetch.stats["peak_in_flight"] <= 2 and len(got) == len(chunks)
    vol = truth.volume(0)
    for c in chunks:
        box = reader.chunk_box(c, 0)
        np.testing.assert_array_equal(got[c], vol[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))])
    monkeypatch.setenv("CRANTSEG_STORAGE_FILE_IN_FLIGHT", "3")
    assert _fetch.file_in_flight() == 3 and _fetch.file_in_flight(5) == 5


def test_file_reads_run_ahead_while_the_caller_decodes_a_batch(local_spec, truth):
    """While the caller holds the first chunk (decoding a batch, as ``read_points`` does), the
    read pool keeps going: up to 2 x cap + ``DECODE_BATCH`` reads are issued, not 2 x cap."""
    import time

    from crantseg_dask.sources import _fetch
    from crantseg_dask.sources._partial import DECODE_BATCH

    meta = open_source(local_spec).meta
    settings = {"storage.file-in-flight": 2}
    reader = ChunkReader(f"file://{truth.path / 'segmentation'}", meta, settings=lambda k, d=None: settings.get(k, d))
    off, size = truth.bounds(0)
    grid = -(-size // np.array(meta.chunk_size[0]))
    chunks = [tuple(c) for c in np.argwhere(np.ones(grid, bool)).tolist()]
    want = min(len(chunks), 2 * 2 + DECODE_BATCH)
    assert want > 2 * 2 + 1
    _fetch.reset_stats()
    gen = reader.fetch_encoded(chunks, 0)
    first = next(gen)
    deadline = time.monotonic() + 30
    while _fetch.stats["gets"] < want and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert _fetch.stats["gets"] == want
    got = dict([first, *gen])
    assert len(got) == len(chunks) and _fetch.stats["gets"] == len(chunks)
    c = chunks[-1]
    np.testing.assert_array_equal(reader.decode(c, 0, got[c]), reader.read(c, 0))
