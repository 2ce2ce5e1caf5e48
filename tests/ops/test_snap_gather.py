"""``_snap_gather.labels_under``, the snap kernel's first look-up (the supervoxel under each row),
against a dense in-memory volume. (The search itself: ``test_snap_numba.py``.)"""
import dataclasses

import numpy as np
import pytest

from crantseg_dask.errors import SourceError
from crantseg_dask.sources import open_source

from test_snap_blocks import DenseSource  # noqa: E402 - tests/ops is on sys.path (rootdir-less test dirs)


def _world(local_spec, block, noisy: bool, seed: int) -> DenseSource:
    source = DenseSource(open_source(local_spec).meta, seed=seed)
    source.meta = dataclasses.replace(source.meta, voxel_offset=((0, 0, 0),), cseg_block_size=(tuple(block),))
    if noisy:  # a label per voxel, nearly: 16-bit blocks
        rng = np.random.default_rng(seed + 1)
        source.vol = rng.integers(1, 2000, size=source.vol.shape).astype(np.uint64)
    return source


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
