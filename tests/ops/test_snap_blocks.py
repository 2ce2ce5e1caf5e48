"""The snap kernel's block reads and the erosion fallback.

``_target_voxels`` (only the blocks inside the search boxes, skipped by their lookup tables, read
by random access or one full decode) against brute force over a DENSE in-memory volume (every
voxel labelled, hundreds of labels per chunk); ``erode="fallback"`` against brute force over the
tiny dataset's truth volume."""
import dataclasses

import compressed_segmentation as cseg
import numpy as np
import pandas as pd
import pytest

from crantseg_dask.errors import InvalidInputError
from crantseg_dask.ops._snap_kernel import _target_voxels
from crantseg_dask.ops.snapping import snap_table, snap_to_id
from crantseg_dask.sources import _cseg, open_source
from crantseg_dask.sources._partial import chunk_shapes


class DenseSource:
    """A dense random volume behind the chunk calls the kernel uses."""

    def __init__(self, meta, seed: int):
        self.meta = dataclasses.replace(meta, resolution=meta.resolution[:1], voxel_offset=meta.voxel_offset[:1],
                                        size=meta.size[:1], chunk_size=meta.chunk_size[:1],
                                        encoding=meta.encoding[:1], cseg_block_size=meta.cseg_block_size[:1],
                                        keys=meta.keys[:1], sharded=(False,))
        rng = np.random.default_rng(seed)
        size = np.array(self.meta.size[0])
        coarse = rng.integers(1, 400, size=tuple(-(-size // [3, 3, 2])), dtype=np.uint64)
        self.vol = coarse.repeat(3, 0).repeat(3, 1).repeat(2, 2)[: size[0], : size[1], : size[2]]
        self.vol = np.where(rng.random(self.vol.shape) < 0.05, np.uint64(rng.integers(1, 400)), self.vol)
        self.reads = {"read_chunk": 0, "read_encoded": 0}

    def _chunk(self, key):
        lo = np.array(key) * self.meta.chunk_size[0]
        hi = lo + chunk_shapes(self.meta, np.array([key]), 0)[0]
        return self.vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]

    def read_chunk(self, key, mip):
        self.reads["read_chunk"] += 1
        return self._chunk(key).copy()

    def read_encoded(self, key, mip):
        self.reads["read_encoded"] += 1
        return cseg.compress(np.asfortranarray(self._chunk(key)[..., None]), self.meta.cseg_block_size[0], order="F")

    def read_encoded_many(self, keys, mip):  # the batch call the kernel makes
        for key in keys:
            yield tuple(key), self.read_encoded(key, mip)

    def decode_chunk(self, key, mip, data):  # a whole decode of bytes read_encoded gave
        self.reads["read_chunk"] += 1
        return cseg.decompress(data, tuple(chunk_shapes(self.meta, np.array([key]), 0)[0]) + (1,), np.uint64,
                               self.meta.cseg_block_size[0], order="F")[..., 0]


@pytest.mark.parametrize("crossover", [0.0, 2.0, None])
def test_target_voxels_on_a_dense_world(local_spec, monkeypatch, crossover):
    if crossover is not None:
        monkeypatch.setattr(_cseg, "CROSSOVER", crossover)
    source = DenseSource(open_source(local_spec).meta, seed=3)
    off = np.array(source.meta.voxel_offset[0])
    source.meta = dataclasses.replace(source.meta, voxel_offset=((0, 0, 0),))  # volume starts at 0
    size = np.array(source.meta.size[0])
    rng = np.random.default_rng(4)
    centre = rng.integers(0, size, size=(60, 3))
    half = rng.integers(0, [12, 12, 5], size=(60, 3))
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half, size - 1)
    leaves = [np.sort(rng.choice(np.arange(1, 400, dtype=np.uint64), k, replace=False)) for k in (1, 5, 40)]
    leaves.append(leaves[1][:2].copy())  # a supervoxel in two targets' leaves counts for both
    coords, owner = _target_voxels(source, lo, hi, leaves)
    inbox = np.zeros(source.vol.shape, bool)
    for a, b in zip(lo, hi):
        inbox[a[0]:b[0] + 1, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
    for i, lv in enumerate(leaves):
        want = np.argwhere(inbox & np.isin(source.vol, lv))
        got = coords[owner == i]
        got = got[np.lexsort(got.T[::-1])]
        assert len(want) > 0
        np.testing.assert_array_equal(got, want)
    del off


def test_target_voxels_per_row_owner_on_a_dense_world(local_spec):
    """With ``row_owner``, a target's voxels inside its own rows' boxes are all there, and nothing
    is returned outside the hull of its rows' boxes or off its leaves (brute force over the volume)."""
    source = DenseSource(open_source(local_spec).meta, seed=5)
    source.meta = dataclasses.replace(source.meta, voxel_offset=((0, 0, 0),))
    size = np.array(source.meta.size[0])
    rng = np.random.default_rng(6)
    centre = rng.integers(0, size, size=(80, 3))
    half = rng.integers(0, [12, 12, 5], size=(80, 3))
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half, size - 1)
    leaves = [np.sort(rng.choice(np.arange(1, 400, dtype=np.uint64), k, replace=False)) for k in (1, 5, 40, 90)]
    leaves.append(leaves[1][:2].copy())  # a supervoxel in two targets' leaves counts for both
    row_owner = rng.integers(0, len(leaves), len(lo))
    coords, owner = _target_voxels(source, lo, hi, leaves, row_owner=row_owner)
    everything, _ = _target_voxels(source, lo, hi, leaves)
    assert len(coords) < len(everything)  # the point of it: far fewer candidates
    found = 0
    for i, lv in enumerate(leaves):
        mine = np.zeros(source.vol.shape, bool)
        for a, b in zip(lo[row_owner == i], hi[row_owner == i]):
            mine[a[0]:b[0] + 1, a[1]:b[1] + 1, a[2]:b[2] + 1] = True
        want = np.argwhere(mine & np.isin(source.vol, lv))
        got = coords[owner == i]
        found += len(want) > 0
        assert len(np.unique(got, axis=0)) == len(got)  # each voxel once per target
        got_set = {tuple(v) for v in got.tolist()}
        assert all(tuple(v) in got_set for v in want.tolist())
        assert np.isin(source.vol[tuple(got.T)], lv).all()
        box_lo, box_hi = lo[row_owner == i].min(axis=0), hi[row_owner == i].max(axis=0)
        assert ((got >= box_lo) & (got <= box_hi)).all()
    assert found >= 3


def test_erode_values_are_checked(local_spec):
    with pytest.raises(InvalidInputError, match="erode"):
        snap_to_id([[0, 0, 0]], 1, dataset=local_spec, erode="maybe")


def _brute_fallback(truth, locs, target, r):
    """Expected (xyz, status) with erode='fallback', from the truth volume."""
    vol = truth.volume(0)
    off = truth.bounds(0)[0]
    res = truth.resolution(0)
    m = np.pad(np.isin(vol, truth.leaves(target)), 1)
    core = m[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for s in (-1, 1):
            core &= np.roll(m, s, axis=axis)[1:-1, 1:-1, 1:-1]
    sets = [np.argwhere(core) + off, np.argwhere(m[1:-1, 1:-1, 1:-1]) + off]
    sv = truth.supervoxel_at_nm(locs, 0)
    xyz, status = locs.astype(float).copy(), []
    for i, p in enumerate(locs):
        if sv[i] and sv[i] in set(truth.leaves(target).tolist()):
            status.append("on_target")
            continue
        for name, cand in zip(("snapped", "snapped_uneroded"), sets):
            d2 = (((cand + 0.5) * res - p) ** 2).sum(axis=1)
            d2 = np.where(d2 <= r * r, d2, np.inf)
            if np.isfinite(d2.min()):
                xyz[i] = cand[int(np.argmin(d2))] * res
                status.append(name)
                break
        else:
            status.append("not_found")
    return xyz, np.array(status)


def test_erosion_fallback_matches_brute_force(spec, truth):
    target = truth.largest_roots(3)[0]
    rng = np.random.default_rng(5)
    res = truth.resolution(0)
    vox = truth.voxels_of(target)
    locs = (vox[rng.choice(len(vox), 120)] + rng.random((120, 3))) * res + rng.normal(0, 60, (120, 3))
    r = 60.0
    xyz, status = _brute_fallback(truth, locs, target, r)
    assert (status == "snapped_uneroded").any() and (status == "snapped").any()  # both cases occur
    df = pd.DataFrame({"x": locs[:, 0], "y": locs[:, 1], "z": locs[:, 2], "id": target})
    out = snap_table(df, search_radius=r, snap_zero=True, erode="fallback", progress=False, dataset=spec)
    np.testing.assert_array_equal(out["status"].astype(str).to_numpy(), status)
    np.testing.assert_array_equal(out[["snapped_x", "snapped_y", "snapped_z"]].to_numpy(), xyz)
    plain = snap_table(df, search_radius=r, snap_zero=True, progress=False, dataset=spec)
    fell_back = status == "snapped_uneroded"
    off, size = truth.bounds(0)
    inside = np.all((np.floor(locs / res) >= off) & (np.floor(locs / res) < off + size), axis=1)
    np.testing.assert_array_equal(plain["status"].astype(str).to_numpy()[fell_back],  # the default: crantpy's
                                  np.where(inside, "not_found", "out_of_bounds")[fell_back])
    np.testing.assert_array_equal(snap_to_id(locs, target, snap_zero=True, search_radius=r, erode="fallback",
                                             verbose=False, dataset=spec), xyz)
