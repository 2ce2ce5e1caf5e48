"""get_voxels(root, bounds=...) against a brute-force filter of the whole volume (issue 16.1/16.3).

30 random boxes per world, each around a real voxel with its lower corner inside the volume, at
mips 0-2, for the root under the box's centre and for the widest root; both modes (L2 chunks and
one cutout) and both sources (local, and caveclient/cloud-volume through the local server).
Expected: every voxel of the root's supervoxels inside the box (``Truth.voxels_of``).
"""
from __future__ import annotations

import numpy as np
import pytest

from crantseg_dask.ops.voxels import get_voxels
from crantseg_dask.testing.conformance import random_boxes

N_BOXES = 30


def nm_of_box(truth, box, mip):
    """(3, 2) nm bounds whose rounding gives exactly the voxel box ``box`` (2, 3) at ``mip``."""
    return (np.asarray(box, float) * truth.resolution(mip)).T


@pytest.fixture(scope="module")
def cases(truth):
    """(root, mip, voxel box, expected voxels) for each of the 30 boxes."""
    widest = max(truth.all_roots.tolist(), key=lambda r: len(np.unique(truth.chunk_of(truth.leaves(r), 2), axis=0)))
    t = truth.operation_times()[-1]
    out = []
    for k in range(N_BOXES):
        mip = k % 3
        (box,) = random_boxes(truth, 1, seed=100 + k, mip=mip)
        centre = truth.supervoxel_at((box[0] + box[1]) // 2, mip)
        root = int(truth.root_of(centre, t)[0]) if centre[0] else 0
        if not root:  # the centre is background: the root of the box's first foreground voxel
            lo, hi = box - truth.bounds(mip)[0]
            sub = truth.volume(mip)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            root = int(truth.root_of(sub[sub != 0][:1], t)[0]) if (sub != 0).any() else widest
        if k % 5 == 4:
            root = widest  # a root over many chunks, expired
        out.append((root, mip, box, truth.voxels_of(root, mip, box).astype(np.int64)))
    assert sum(len(c[3]) > 0 for c in out) >= N_BOXES // 2  # most boxes hold voxels of their root
    assert all(np.all(c[2][0] > truth.bounds(c[1])[0]) for c in out)  # lower corners inside
    return out


@pytest.mark.parametrize("l2", [True, False], ids=["l2chunks", "cutout"])
def test_bounds_against_brute_force(spec, truth, cases, l2):
    wrong = []
    for root, mip, box, want in cases:
        got = get_voxels(root, mip=mip, bounds=nm_of_box(truth, box, mip), use_l2_chunks=l2, dataset=spec,
                         progress=False).astype(np.int64)
        assert np.all((got >= box[0]) & (got < box[1])), (root, mip, box.tolist())  # never outside
        got_set, want_set = {tuple(v) for v in got.tolist()}, {tuple(v) for v in want.tolist()}
        assert got_set <= want_set, (root, mip, box.tolist())  # never a voxel of another root
        if not np.array_equal(got, want):
            wrong.append((root, mip, box.tolist(), len(got), len(want)))
    assert not wrong
