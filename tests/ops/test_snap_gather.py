"""``_snap_gather.gather``, the snap kernel's vectorised voxel gathering, against brute force over
dense in-memory volumes (every voxel labelled): the target voxels inside each row's own box, each
(target, voxel) once (after ``sorted_voxels``) with its label; for several block sizes (ragged blocks inside a chunk, blocks
wider than 8 bits), both read paths (random access, whole decode), and corrupt bytes."""
import dataclasses

import numpy as np
import pytest

from crantseg_dask.errors import SourceError
from crantseg_dask.ops import _snap_gather
from crantseg_dask.ops._snap_gather import gather
from crantseg_dask.ops._snap_nearest import sorted_voxels
from crantseg_dask.sources import open_source

from test_snap_blocks import DenseSource  # noqa: E402 - tests/ops is on sys.path (rootdir-less test dirs)


def _world(local_spec, block, noisy: bool, seed: int) -> DenseSource:
    source = DenseSource(open_source(local_spec).meta, seed=seed)
    source.meta = dataclasses.replace(source.meta, voxel_offset=((0, 0, 0),), cseg_block_size=(tuple(block),))
    if noisy:  # a label per voxel, nearly: 16-bit blocks, whose tables are not read
        rng = np.random.default_rng(seed + 1)
        source.vol = rng.integers(1, 2000, size=source.vol.shape).astype(np.uint64)
    return source


def _rows(source, n: int, seed: int, n_targets: int, labels: int):
    size = np.array(source.meta.size[0])
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, size, size=(n, 3))
    half = rng.integers(0, [12, 12, 5], size=(n, 3))
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half, size - 1)
    sizes = rng.integers(1, 60, n_targets)
    leaves = [np.sort(rng.choice(np.arange(1, labels, dtype=np.uint64), k, replace=False)) for k in sizes]
    leaves.append(leaves[1][:2].copy())  # a supervoxel in two targets' leaves counts for both
    owner = rng.integers(0, len(leaves), n)
    owner[:6] = owner[6]  # overlapping rows of one target: its voxels come once
    lo[:6], hi[:6] = np.maximum(lo[6] - 2, 0), np.minimum(hi[6] + 1, size - 1)
    return lo, hi, leaves, owner


@pytest.mark.parametrize("block,noisy", [((8, 8, 8), False), ((3, 5, 2), False), ((8, 8, 8), True),
                                         ((16, 16, 4), True)])
@pytest.mark.parametrize("crossover", [1.0, 0.0])
def test_gather_is_each_targets_voxels_in_its_own_boxes(local_spec, monkeypatch, block, noisy, crossover):
    monkeypatch.setattr(_snap_gather, "CROSSOVER", crossover)  # 0.0: every chunk decoded whole
    source = _world(local_spec, block, noisy, seed=7)
    lo, hi, leaves, owner = _rows(source, 70, seed=8, n_targets=5, labels=2000 if noisy else 400)
    coords, got_owner, label = gather(source, lo, hi, leaves, owner, {})
    order, _ = sorted_voxels(coords, got_owner, len(leaves), False)  # what the kernel keeps
    assert len(order) < len(coords)  # overlapping rows of one target repeat voxels ...
    coords, got_owner, label = coords[order], got_owner[order], label[order]  # ... dropped here
    assert coords.dtype == np.int64 and label.dtype == np.uint64
    np.testing.assert_array_equal(label, source.vol[tuple(coords.T)])
    found = 0
    for i, lv in enumerate(leaves):
        mine = np.zeros(source.vol.shape, bool)
        for a, b in zip(lo[owner == i], hi[owner == i]):
            mine[a[0]:b[0] + 1, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
        want = np.argwhere(mine & np.isin(source.vol, lv))  # sorted x, y, z
        got = coords[got_owner == i]
        got = got[np.lexsort(got.T[::-1])]
        assert len(want) or i != owner[6]
        np.testing.assert_array_equal(got, want, err_msg=f"target {i}")
        found += len(want) > 0
    assert found >= 3
    assert gather(source, lo[:0], hi[:0], leaves, owner[:0], {})[0].shape == (0, 3)


@pytest.mark.parametrize("cut", ["truncated", "values", "header"])
def test_gather_refuses_corrupt_chunks_naming_them(local_spec, cut):
    source = _world(local_spec, (8, 8, 8), False, seed=9)
    lo, hi, leaves, owner = _rows(source, 20, seed=10, n_targets=3, labels=400)
    leaves = [np.arange(1, 400, dtype=np.uint64)] * len(leaves)  # every block is read
    cs = np.array(source.meta.chunk_size[0])
    key = tuple(int(x) for x in lo[0] // cs)  # a block row 0's box touches
    b = (lo[0] - np.array(key) * cs) // 8
    grid = -(-cs // 8)
    w = 1 + 2 * int(b[0] + grid[0] * (b[1] + grid[1] * b[2]))  # its header's first word
    encoded = dict(source.read_encoded_many([key], 0))
    data = bytearray(encoded[key])
    n_blocks = int(np.prod(grid))
    if cut == "truncated":  # the headers survive, the tables and values do not
        data = data[: 4 * (1 + 2 * n_blocks)]
    elif cut == "values":  # 32-bit values far past the end
        table = int.from_bytes(data[4 * w:4 * w + 3], "little")
        data[4 * w:4 * w + 4] = ((32 << 24) | table).to_bytes(4, "little")
        data[4 * w + 4:4 * w + 8] = (len(data)).to_bytes(4, "little")
    else:  # bit width 3 is not allowed
        data[4 * w + 3] = 3
    encoded[key] = bytes(data)
    with pytest.raises(SourceError, match=str(key).replace("(", r"\(").replace(")", r"\)")):
        gather(source, lo, hi, leaves, owner, encoded)


def test_gather_treats_a_missing_chunk_as_background(local_spec):
    """A chunk the source reports missing (None: ``fill_missing``) holds no target voxel; the others
    are still read (brute force over the volume with that chunk zeroed)."""
    source = _world(local_spec, (8, 8, 8), False, seed=12)
    lo, hi, leaves, owner = _rows(source, 60, seed=13, n_targets=4, labels=400)
    cs = np.array(source.meta.chunk_size[0])
    gone = tuple(int(x) for x in lo[0] // cs)
    real = source.read_encoded_many
    source.read_encoded_many = lambda keys, mip: ((k, None if tuple(k) == gone else v) for k, v in real(keys, mip))
    a = np.array(gone) * cs
    source.vol[a[0]:a[0] + cs[0], a[1]:a[1] + cs[1], a[2]:a[2] + cs[2]] = 0
    coords, got_owner, _ = gather(source, lo, hi, leaves, owner, {})
    order, _ = sorted_voxels(coords, got_owner, len(leaves), False)
    coords, got_owner = coords[order], got_owner[order]
    for i, lv in enumerate(leaves):
        mine = np.zeros(source.vol.shape, bool)
        for p, q in zip(lo[owner == i], hi[owner == i]):
            mine[p[0]:q[0] + 1, p[1]:q[1] + 1, p[2]:q[2] + 1] = True
        got = coords[got_owner == i]
        np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], np.argwhere(mine & np.isin(source.vol, lv)))


def test_labels_under_rows_like_the_volume_and_keeps_the_bytes(local_spec):
    """The kernel's first look-up (the supervoxel under each row) against the volume: 0 outside it
    and in a missing chunk; the chunks' bytes stay in ``encoded`` for the searches; corrupt bytes
    are a ``SourceError``."""
    from crantseg_dask.ops._snap_gather import labels_under

    source = _world(local_spec, (8, 8, 8), False, seed=14)
    size = np.array(source.meta.size[0])
    rng = np.random.default_rng(15)
    vox = rng.integers(-3, size + 3, size=(500, 3))
    cs = np.array(source.meta.chunk_size[0])
    inside = np.all((vox >= 0) & (vox < size), axis=1)
    gone = tuple(int(x) for x in vox[np.argmax(inside)] // cs)
    real = source.read_encoded_many
    source.read_encoded_many = lambda keys, mip: ((k, None if tuple(k) == gone else v) for k, v in real(keys, mip))
    a = np.array(gone) * cs
    source.vol[a[0]:a[0] + cs[0], a[1]:a[1] + cs[1], a[2]:a[2] + cs[2]] = 0
    want = np.zeros(len(vox), np.uint64)
    want[inside] = source.vol[tuple(vox[inside].T)]
    encoded = {}
    np.testing.assert_array_equal(labels_under(source, vox, encoded), want)
    assert set(encoded) == {tuple(int(x) for x in c) for c in np.unique(vox[inside] // cs, axis=0)}
    key = next(k for k, v in encoded.items() if v is not None)
    encoded[key] = encoded[key][:12]
    with pytest.raises(SourceError, match=str(key).replace("(", r"\(").replace(")", r"\)")):
        labels_under(source, vox, encoded)
