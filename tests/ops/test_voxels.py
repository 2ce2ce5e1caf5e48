"""get_segmentation_cutout and get_voxels against brute-force truth (checklist items 49-62).

Every expected value comes from ``Truth`` (the stored volume and the replayed edit log), never
from a source or from the functions under test. Each test runs for both sources (``spec``).
"""
from __future__ import annotations

from datetime import datetime, timezone

import dask
import numpy as np
import pytest

from crantseg_dask.errors import InvalidIDError, OutOfBoundsError
from crantseg_dask.ops.cutouts import get_segmentation_cutout, get_segmentation_cutout_graph
from crantseg_dask.ops.voxels import get_voxels, get_voxels_graph
from crantseg_dask.sources import open_source

MIPS = [0, 1, 2]
MODES = pytest.mark.parametrize("l2", [True, False], ids=["l2chunks", "cutout"])


# -- truth helpers --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def roots(truth):
    """Roots chosen from the truth: the latest root with the most L2 nodes (self-touching), the root
    spanning the most L2 chunks (expired), and a small latest root."""
    now = datetime.now(timezone.utc)
    latest = [r for r in truth.all_roots.tolist() if truth.is_latest(r, now)]
    n_chunks = {r: len(np.unique(truth.layout.chunk_coords(truth.leaves(r)), axis=0))
                for r in truth.all_roots.tolist()}
    big = max(latest, key=lambda r: len(truth.l2_groups(r)))
    widest = max(truth.all_roots.tolist(), key=lambda r: (n_chunks[r], len(truth.leaves(r))))
    small = min(latest, key=lambda r: len(truth.leaves(r)))
    return {"big": big, "widest": widest, "small": small, "n_chunks": n_chunks}


_cache: dict = {}


def voxels_of(truth, root, mip, box=None):
    key = ("v", root, mip, None if box is None else np.asarray(box).tobytes())
    if key not in _cache:
        _cache[key] = truth.voxels_of(root, mip, box).astype(np.int64)
    return _cache[key]


def interface(truth, root, mip):
    key = ("i", root, mip)
    if key not in _cache:
        _cache[key] = truth.interface_voxels(root, mip).astype(np.int64)
    return _cache[key]


def minus(a, b):
    """Rows of sorted (N, 3) ``a`` not in ``b``, order kept."""
    if not len(b):
        return a
    sb = {tuple(r) for r in b.tolist()}
    return a[np.array([tuple(r) not in sb for r in a.tolist()], dtype=bool)].reshape(-1, 3)


def vox_box(truth, nm, mip):
    """The documented rule: (3, 2) nm -> (2, 3) half-open voxels, round half to even."""
    return np.round(np.asarray(nm, float).T / truth.resolution(mip)).astype(np.int64)


def nm_of_box(truth, box, mip):
    """(3, 2) nm bounds whose rounding gives exactly the voxel box ``box`` (2, 3)."""
    return (np.asarray(box, float) * truth.resolution(mip)).T


def neuron_box(truth, root, mip):
    v = voxels_of(truth, root, mip)
    return np.stack([v.min(axis=0), v.max(axis=0) + 1])


@pytest.fixture
def no_reads(monkeypatch, spec):
    """Make every voxel read of the spec's source fail: errors must come before any read."""
    cls = type(open_source(spec))

    def boom(*a, **k):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(cls, "cutout", boom)
    monkeypatch.setattr(cls, "read_chunk", boom)
    monkeypatch.setattr(cls, "read_chunks", boom)


# -- get_segmentation_cutout ----------------------------------------------------------------------
BBOX_NM = [[2000, 2800], [3000, 3400], [500, 700]]  # x 62.5 -> 62, 87.5 -> 88 at mip 1 (half to even)


def test_cutout_bbox_shapes(spec, truth):  # C49
    a = get_segmentation_cutout(BBOX_NM, root_ids=False, mip=1, dataset=spec)
    b = get_segmentation_cutout(np.array(BBOX_NM).T, root_ids=False, mip=1, dataset=spec)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for bad in ([[0, 1], [0, 1]], np.zeros((3, 3)), [1, 2, 3], np.zeros((2, 3, 1))):
        with pytest.raises(ValueError, match=r"`bbox` must have shape \(2, 3\) or \(3, 2\)"):
            get_segmentation_cutout(bad, dataset=spec)


@pytest.mark.parametrize("mip", MIPS)
def test_cutout_geometry_and_supervoxels(spec, truth, mip):  # C50, C51, C53 (supervoxels)
    cutout, res, offset = get_segmentation_cutout(BBOX_NM, root_ids=False, mip=mip, dataset=spec)
    box = vox_box(truth, BBOX_NM, mip)
    assert cutout.dtype == np.uint64 and cutout.shape == tuple(box[1] - box[0])
    np.testing.assert_array_equal(res, truth.resolution(mip))
    np.testing.assert_array_equal(offset, box[0] * truth.resolution(mip))
    if mip == 1:
        assert cutout.shape == (26, 12, 5) and offset.tolist() == [1984, 3008, 504]
    off, _ = truth.bounds(mip)
    sl = tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))
    np.testing.assert_array_equal(cutout, truth.volume(mip)[sl])
    assert set(truth.layout.layer(np.unique(cutout)).tolist()) <= {0, 1}


def test_cutout_rounding_anchor_example(local_spec):  # C50: the anchor's notebook box, CRANT geometry
    from dataclasses import replace

    from crantseg_dask.ops.cutouts import voxel_box

    meta = replace(open_source(local_spec).meta, resolution=((16, 16, 42), (32, 32, 42), (64, 64, 42)))
    nm = np.array([[329200, 333200], [91376, 95376], [112712, 112912]], float).T
    box1 = voxel_box(nm, meta, 1)
    assert box1.tolist() == [[10288, 2856, 2684], [10412, 2980, 2688]]  # 10287.5 -> 10288, 10412.5 -> 10412
    assert tuple(box1[1] - box1[0]) == (124, 124, 4)
    assert (box1[0] * np.array([32, 32, 42])).tolist() == [329216, 91392, 112728]
    box0 = voxel_box(nm, meta, 0)
    assert tuple(box0[1] - box0[0]) == (250, 250, 4)


@pytest.mark.parametrize("mip", MIPS)
@pytest.mark.parametrize("when", ["now", "mat", "ingest"])
def test_cutout_roots(spec, truth, when, mip):  # C53, at every mip
    off, size = truth.bounds(mip)
    box = np.stack([off + size // 4 + 1, off + size - size // 4])  # the middle half, lower corner inside
    nm = nm_of_box(truth, box, mip)
    ts = {"now": None, "mat": "mat", "ingest": truth.ingest_ms / 1000 + 0.5}[when]
    cutout, _, _ = get_segmentation_cutout(nm, mip=mip, dataset=spec, timestamp=ts)
    at = {"now": datetime.now(timezone.utc), "mat": truth.materialization(), "ingest": ts}[when]
    sv = truth.volume(mip)[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))]
    uniq, inv = np.unique(sv, return_inverse=True)
    expected = truth.root_of(uniq, at)[inv].reshape(sv.shape)
    assert cutout.dtype == np.uint64
    np.testing.assert_array_equal(cutout, expected)
    assert set(truth.layout.layer(np.unique(cutout)).tolist()) <= {0, truth.layout.n_layers}
    if when != "now":  # the timestamp matters here: roots at now differ
        assert (truth.root_of(uniq, datetime.now(timezone.utc)) != truth.root_of(uniq, at)).any()


def test_cutout_out_of_bounds(spec, truth, no_reads):  # C52, checked before any read
    off, size = truth.bounds(1)
    res = truth.resolution(1)
    inside = np.stack([off + 2, off + size - 2])
    for k, ax in enumerate("XYZ"):
        for side, delta in ((0, -3), (1, 3)):
            box = inside.copy()
            box[side, k] += delta
            with pytest.raises(OutOfBoundsError, match="exceed CloudVolume coverage") as e:
                get_segmentation_cutout(nm_of_box(truth, box, 1), mip=1, dataset=spec)
            msg = str(e.value)
            assert f"{ax}: requested [{box[0, k]}, {box[1, k]}] voxels" in msg
            assert f"available [{off[k]}, {off[k] + size[k]}] voxels" in msg
            assert f"({off[k] * res[k]:g}-{(off[k] + size[k]) * res[k]:g} nm)" in msg
            assert isinstance(e.value, ValueError)


def test_cutout_coordinates(spec, truth):  # C54
    with pytest.raises(ValueError, match="coordinates"):
        get_segmentation_cutout(BBOX_NM, coordinates="microns", dataset=spec)
    viewer = np.array(BBOX_NM) / np.array([8, 8, 42])[:, None]
    for unit in ("voxel", "voxels"):
        a = get_segmentation_cutout(viewer, root_ids=False, mip=1, coordinates=unit, dataset=spec)
        b = get_segmentation_cutout(BBOX_NM, root_ids=False, mip=1, coordinates="nanometers", dataset=spec)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_cutout_empty_box_and_lazy(spec, truth, monkeypatch):
    with pytest.raises(ValueError, match="no voxels at mip=0 along Z"):
        get_segmentation_cutout([[2000, 2800], [3000, 3400], [500, 510]], dataset=spec)
    cls = type(open_source(spec))
    with monkeypatch.context() as m:  # building reads no voxels
        for name in ("cutout", "read_chunk", "read_chunks"):
            m.setattr(cls, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
        lazy, res, offset = get_segmentation_cutout_graph(BBOX_NM, mip=0, dataset=spec)
    eager, _, _ = get_segmentation_cutout(BBOX_NM, mip=0, dataset=spec)
    np.testing.assert_array_equal(lazy.compute(), eager)


# -- get_voxels -----------------------------------------------------------------------------------
def test_get_voxels_invalid_root(spec, truth, no_reads):  # C55, before any read
    sv = int(truth.supervoxels[0])
    l2 = int(truth.layout.encode(2, 0, 0, 0, 1))
    for bad in (sv, l2, 0, str(sv)):
        with pytest.raises(ValueError, match="is not a valid root ID"):
            get_voxels(bad, dataset=spec, progress=False)
    with pytest.raises(InvalidIDError, match="single root ID"):
        get_voxels([int(truth.all_roots[0])] * 2, dataset=spec, progress=False)
    with pytest.raises(ValueError):
        get_voxels("not-an-id", dataset=spec, progress=False)


@MODES
@pytest.mark.parametrize("mip", MIPS)
def test_get_voxels_whole_neuron(spec, truth, roots, mip, l2):  # C56, C57, C60, C61
    root = roots["big"]
    expected = voxels_of(truth, root, mip)
    voxels = get_voxels(root, mip=mip, use_l2_chunks=l2, dataset=spec, progress=False)
    assert voxels.dtype == np.uint32 and voxels.shape == expected.shape and len(expected)
    np.testing.assert_array_equal(voxels, expected)  # same set, x-major/y/z order
    v2, svids = get_voxels(root, mip=mip, sv_map=True, use_l2_chunks=l2, dataset=spec, progress=False)
    np.testing.assert_array_equal(v2, expected)
    assert svids.dtype == np.uint64 and svids.shape == (len(expected),)
    np.testing.assert_array_equal(svids, truth.supervoxel_at(expected, mip))
    assert np.isin(svids, truth.leaves(root)).all()


@MODES
@pytest.mark.parametrize("mip", MIPS)
def test_get_voxels_bounds(spec, truth, roots, mip, l2):  # C56, C59
    root = roots["big"]
    nb = neuron_box(truth, root, mip)
    box = np.stack([nb[0] + (nb[1] - nb[0]) // 4, nb[1] - (nb[1] - nb[0]) // 3])
    nm = nm_of_box(truth, box, mip)
    nm[0] += truth.resolution(mip)[0] / 2  # x min on a .5 voxel: rounds half to even
    box_r = vox_box(truth, nm, mip)
    expected = voxels_of(truth, root, mip, box_r)
    assert len(expected)
    for b in (nm, nm.T):
        voxels = get_voxels(root, mip=mip, bounds=b, use_l2_chunks=l2, dataset=spec, progress=False)
        assert voxels.dtype == np.uint32
        np.testing.assert_array_equal(voxels, expected)
        assert np.all((voxels >= box_r[0]) & (voxels < box_r[1]))


def test_get_voxels_out_of_bounds(spec, truth, roots, no_reads):  # C59, before any read
    off, size = truth.bounds(0)
    inside = np.stack([off + 2, off + size - 2])
    for k, ax in enumerate("XYZ"):
        box = inside.copy()
        box[1, k] += 5
        for l2 in (True, False):
            with pytest.raises(OutOfBoundsError, match="exceed volume limits") as e:
                get_voxels(roots["big"], bounds=nm_of_box(truth, box, 0), use_l2_chunks=l2, dataset=spec,
                           progress=False)
            assert f"{ax}: requested" in str(e.value) and "bounds=None" in str(e.value)


@MODES
def test_get_voxels_empty(spec, truth, roots, l2):  # C58
    root = roots["small"]
    nb = neuron_box(truth, root, 0)
    off, size = truth.bounds(0)
    for corner in (np.stack([off, off + 8]), np.stack([off + size - 8, off + size])):
        if not len(voxels_of(truth, root, 0, corner)) and np.any((corner[1] <= nb[0]) | (corner[0] >= nb[1])):
            break
    assert not len(voxels_of(truth, root, 0, corner))
    nm = nm_of_box(truth, corner, 0)
    voxels = get_voxels(root, bounds=nm, use_l2_chunks=l2, dataset=spec, progress=False)
    assert voxels.shape == (0, 3) and voxels.dtype == np.uint32
    voxels, svids = get_voxels(root, bounds=nm, sv_map=True, use_l2_chunks=l2, dataset=spec, progress=False)
    assert voxels.shape == (0, 3) and voxels.dtype == np.uint32
    assert svids.shape == (0,) and svids.dtype == np.uint64


@MODES
@pytest.mark.parametrize("mip", MIPS)
def test_thin_removes_interface_voxels(spec, truth, roots, mip, l2):  # C61, truth's thin definition
    root = roots["big"]
    full = voxels_of(truth, root, mip)
    removed = interface(truth, root, mip)
    if mip == 0:
        assert len(removed), "the chosen root must touch itself at mip 0"
    expected = minus(full, removed)
    thinned, svids = get_voxels(root, mip=mip, thin=True, sv_map=True, use_l2_chunks=l2, dataset=spec,
                                progress=False)
    assert thinned.dtype == np.uint32 and 0 < len(thinned) == len(expected)
    np.testing.assert_array_equal(thinned, expected)
    np.testing.assert_array_equal(svids, truth.supervoxel_at(expected, mip))


@MODES
def test_thin_with_bounds(spec, truth, roots, l2):  # neighbours just outside the bounds count
    root, mip = roots["big"], 0
    removed = interface(truth, root, mip)
    centre = removed[len(removed) // 2]
    box = np.stack([centre - [6, 6, 2], centre + [7, 7, 3]])
    expected = minus(voxels_of(truth, root, mip, box), removed)
    thinned = get_voxels(root, mip=mip, bounds=nm_of_box(truth, box, mip), thin=True, use_l2_chunks=l2,
                         dataset=spec, progress=False)
    np.testing.assert_array_equal(thinned, expected)


def test_widest_root_both_modes(spec, truth, roots):  # a root over many L2 chunks, expired: timeless
    root = roots["widest"]
    assert len(truth.l2_groups(root)) >= 50
    assert roots["n_chunks"][root] >= 50  # distinct L2 chunks (the tiny volume has 5 x 5 x 5)
    assert not truth.is_latest(root, datetime.now(timezone.utc))
    expected = voxels_of(truth, root, 0)
    for l2 in (True, False):
        np.testing.assert_array_equal(get_voxels(root, use_l2_chunks=l2, dataset=spec, progress=False), expected)


def test_no_global_state_changes(spec, truth, roots):  # C62
    meta_before = open_source(spec).meta
    workers = dask.config.get("num_workers", None)
    expected = voxels_of(truth, roots["small"], 1)
    np.testing.assert_array_equal(get_voxels(roots["small"], mip=1, threads=2, dataset=spec, progress=False),
                                  expected)
    with pytest.raises(ValueError):
        get_voxels(roots["small"], mip=7, threads=3, dataset=spec, progress=False)
    with pytest.raises(ValueError, match="threads"):
        get_voxels(roots["small"], threads=0, dataset=spec, progress=False)
    assert dask.config.get("num_workers", None) == workers
    assert open_source(spec).meta == meta_before


def test_get_voxels_graph_is_lazy(spec, truth, roots, monkeypatch):
    cls = type(open_source(spec))
    with monkeypatch.context() as m:  # building reads no voxels
        for name in ("cutout", "read_chunk", "read_chunks"):
            m.setattr(cls, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
        voxels, svids = get_voxels_graph(roots["big"], mip=1, sv_map=True, dataset=spec)
    assert voxels.dtype == np.uint32 and svids.dtype == np.uint64 and voxels.numblocks[0] > 1
    v, s = dask.compute(voxels, svids)
    np.testing.assert_array_equal(v, voxels_of(truth, roots["big"], 1))
    np.testing.assert_array_equal(s, truth.supervoxel_at(v, 1))


def test_threads_go_to_this_compute_only(spec, truth, roots, monkeypatch):
    """``threads`` reaches ``dask.compute`` as ``num_workers=`` for this call; the process-global
    Dask config (shared with other threads) is never set."""
    import crantseg_dask._graph as graph

    seen = []
    real = graph.dask.compute

    def spy(*a, **k):
        seen.append((k.get("num_workers"), dask.config.get("num_workers", None)))
        return real(*a, **k)

    monkeypatch.setattr(graph.dask, "compute", spy)
    before = dask.config.get("num_workers", None)
    got = get_voxels(roots["small"], mip=1, threads=3, dataset=spec, progress=False)
    np.testing.assert_array_equal(got, voxels_of(truth, roots["small"], 1))
    assert seen == [(3, before)]
