"""Point lookups and cutouts through the per-chunk random-access / full-decode choice, against
cloud-volume's full decode, the existing whole-chunk path and the truth volume, at every mip,
with the rule forced either way; corrupt chunks give a SourceError naming the chunk."""
import shutil

import numpy as np
import pytest

from crantseg_dask.errors import SourceError
from crantseg_dask.sources import SourceSpec, _cseg, open_source
from crantseg_dask.sources._chunks import lookup_points
from crantseg_dask.sources._partial import chunk_shapes, read_box


@pytest.fixture(params=["rule", "always_blocks", "always_full"])
def crossover(request, monkeypatch):
    value = {"rule": None, "always_blocks": 2.0, "always_full": 0.0}[request.param]
    if value is not None:  # the numpy and the compiled point lookups' thresholds both
        monkeypatch.setattr(_cseg, "CROSSOVER", value)
        monkeypatch.setattr(_cseg, "CROSSOVER_COMPILED", value)
    return request.param


def _cloudvolume(truth, mip):
    from cloudvolume import CloudVolume

    vol = CloudVolume(f"file://{truth.path / 'segmentation'}", mip=mip, progress=False)
    return np.asarray(vol[vol.bounds][..., 0])


def _points(truth, mip, n, seed):
    """Random voxels over the volume (its ragged far corner included) and a few outside it."""
    rng = np.random.default_rng(seed)
    off, size = truth.bounds(mip)
    p = rng.integers(off, off + size, size=(n, 3))
    corner = off + size - 1 - rng.integers(0, 3, size=(20, 3))
    return np.concatenate([p, corner, [off - 1, off + size]])


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "compiled"])
@pytest.mark.parametrize("mip", [0, 1, 2])
def test_points_equal_the_full_decode(spec, truth, mip, crossover, compiled, monkeypatch):
    monkeypatch.setattr(_cseg, "use_compiled", lambda n: compiled)  # the point decoder, whatever the size
    source = open_source(spec)
    vol = _cloudvolume(truth, mip)
    off, size = truth.bounds(mip)
    for n, seed in ((5, 0), (300, 1), (4000, 2)):  # few and many points per chunk
        pts = _points(truth, mip, n, seed)
        got = source.supervoxels_at(pts, mip)
        inside = np.all((pts >= off) & (pts < off + size), axis=1)
        want = np.zeros(len(pts), np.uint64)
        want[inside] = vol[tuple((pts[inside] - off).T)]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, truth.supervoxel_at(pts, mip))


@pytest.mark.parametrize("mip", [0, 1, 2])
def test_boxes_equal_the_full_decode(local_spec, truth, mip, crossover):
    source = open_source(local_spec)
    vol = truth.volume(mip)
    off, size = truth.bounds(mip)
    rng = np.random.default_rng(mip)
    boxes = [np.stack([off + size - 5, off + size])]  # the ragged far corner
    for _ in range(12):
        lo = rng.integers(off, off + size)
        boxes.append(np.stack([lo, lo + 1 + rng.integers(0, np.minimum(off + size - lo, 40))]))
    for box in boxes:
        want = vol[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))]
        np.testing.assert_array_equal(source.cutout(box, mip), want)
    # and chunk by chunk, against the existing whole-chunk path
    grid = -(-size // np.array(source.meta.chunk_size[mip]))
    for key in [(0, 0, 0), tuple(grid - 1)]:
        shape = chunk_shapes(source.meta, np.array([key]), mip)[0]
        whole = source.read_chunk(key, mip)
        lo = rng.integers(0, shape)
        hi = lo + 1 + rng.integers(0, shape - lo)
        np.testing.assert_array_equal(read_box(source, key, mip, lo, hi), whole[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])


def test_the_rule_picks_the_path(local_spec, truth, monkeypatch):
    source = open_source(local_spec)
    calls = []
    for name in ("read_chunks", "read_encoded_many"):  # the batch reads every path goes through
        original = getattr(source, name)
        monkeypatch.setattr(source, name, lambda c, mip, f=original, n=name: calls.append(n) or f(c, mip))
    off, _ = truth.bounds(0)
    one = off + [1, 2, 3]
    lookup_points(source, one[None], 0)
    assert calls == ["read_encoded_many"]  # one point: random access
    calls.clear()
    many = one + np.argwhere(np.ones((20, 20, 10), bool))  # 4,000 points in one chunk: full decode
    many = many[np.all(many < off + source.meta.chunk_size[0], axis=1)]
    np.testing.assert_array_equal(lookup_points(source, many, 0), truth.supervoxel_at(many, 0))
    assert calls == ["read_chunks"]
    # the compiled point decoder's own threshold: a share of the chunk between the two crossovers
    chunk = int(np.prod(source.meta.chunk_size[0]))
    k = int(np.sqrt(_cseg.CROSSOVER * _cseg.CROSSOVER_COMPILED) * chunk)
    assert _cseg.CROSSOVER * chunk < k < _cseg.CROSSOVER_COMPILED * chunk
    for compiled, path in ((False, "read_chunks"), (True, "read_encoded_many")):
        monkeypatch.setattr(_cseg, "use_compiled", lambda n, c=compiled: c)
        calls.clear()
        np.testing.assert_array_equal(lookup_points(source, many[:k], 0), truth.supervoxel_at(many[:k], 0))
        assert calls == [path], compiled


@pytest.fixture
def corrupt_source(local_spec, truth, tmp_path):
    """A copy of the tiny dataset whose mip-0 chunk (1, 1, 0) is cut in half."""
    copy = tmp_path / "tiny"
    shutil.copytree(truth.path, copy)
    spec = SourceSpec(kind="local", name="corrupt", path=str(copy))
    source = open_source(spec)
    name = source._reader.filename((1, 1, 0), 0)
    gz = copy / "segmentation" / (name + ".gz")
    data = source._reader.read_encoded((1, 1, 0), 0)  # un-gzipped bytes
    if gz.exists():
        gz.unlink()
    (copy / "segmentation" / name).write_bytes(data[: len(data) // 2 // 4 * 4])
    return source


def test_corrupt_chunks_raise_source_error(corrupt_source, crossover):
    source = corrupt_source
    box = source._reader.chunk_box((1, 1, 0), 0)
    every = box[0] + np.argwhere(np.ones(tuple(box[1] - box[0]), bool))
    with pytest.raises(SourceError, match="decoding chunk") as err:
        source.supervoxels_at(every, 0)
    assert "1, 1, 0" in str(err.value) or f"{box[0][0]}-{box[1][0]}" in str(err.value)
    with pytest.raises(SourceError, match="decoding chunk"):
        source.cutout(box, 0)
    other = source._reader.chunk_box((0, 0, 0), 0)[0]
    assert source.supervoxels_at(other[None], 0).shape == (1,)  # other chunks still read


def test_a_few_points_in_a_corrupt_chunk_raise_source_error(corrupt_source, crossover):
    """A handful of points whose bytes were cut off: SourceError, not 0."""
    source = corrupt_source
    box = source._reader.chunk_box((1, 1, 0), 0)
    corner = box[1] - 1 - np.array([[0, 0, 0], [1, 2, 0], [3, 1, 1]])  # the last blocks: the lost half
    with pytest.raises(SourceError, match="decoding chunk"):
        source.supervoxels_at(corner, 0)
