"""The compiled snap search (``_snap_numba``) on plain numpy inputs: small in-memory volumes cut into
storage chunks and encoded with the ``compressed_segmentation`` package, against a brute-force
search over the WHOLE volume written here from the contract (every target voxel measured; erosion
with outside-the-volume as background; nearest centre in nm, the first in x, y, z order among
ties). Ragged chunks and blocks, balls crossing chunk borders and the volume's edges, 0-bit and
16-bit blocks, every erode mode, one pass or growing passes, and corrupt or missing chunks."""
from __future__ import annotations

import dataclasses

import compressed_segmentation as cseg
import numpy as np
import pytest

from crantseg_dask.errors import SourceError
from crantseg_dask.ops import _snap_numba
from crantseg_dask.sources._partial import chunk_shapes

RES = np.array([16.0, 16.0, 42.0])


@dataclasses.dataclass
class Meta:
    """The few metadata fields the search reads."""

    size: tuple
    chunk: tuple
    block: tuple
    offset: tuple

    @property
    def chunk_size(self):
        return (self.chunk,)

    @property
    def cseg_block_size(self):
        return (self.block,)

    encoding = ("compressed_segmentation",)
    keys = ("s0",)
    resolution = (tuple(RES),)

    def bounds(self, mip):
        lo = np.array(self.offset, np.int64)
        return lo, lo + np.array(self.size, np.int64)


class Source:
    """An in-memory volume behind ``read_encoded_many``; ``gone`` chunks are missing (None)."""

    def __init__(self, vol, chunk, block, offset):
        self.vol, self.meta, self.gone = vol, Meta(vol.shape, chunk, block, offset), set()

    def read_encoded_many(self, keys, mip):
        for key in keys:
            lo = np.array(key) * self.meta.chunk
            hi = lo + chunk_shapes(self.meta, np.array([key]), 0)[0]
            part = np.asfortranarray(self.vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][..., None])
            yield tuple(key), None if tuple(key) in self.gone else cseg.compress(part, self.meta.block, order="F")


def _volume(shape, seed: int, noisy: bool):
    rng = np.random.default_rng(seed)
    if noisy:  # ~every voxel its own label: 16-bit blocks
        return rng.integers(1, 3000, size=shape).astype(np.uint64)
    coarse = rng.integers(1, 30, size=tuple(-(-np.array(shape) // [3, 3, 2])), dtype=np.uint64)
    vol = coarse.repeat(3, 0).repeat(3, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]].copy()
    vol[rng.random(shape) < 0.03] = 0
    vol[: shape[0] // 2, :, : shape[2] // 2] = 7  # a uniform slab: 0-bit blocks
    return vol


def _brute(vol, offset, locs, leaves, row_target, r, erode):
    """Expected (vox, d2, code, label) per row from every target voxel of the volume."""
    n = len(locs)
    vox, d2s = np.zeros((n, 3), np.int64), np.full(n, np.inf)
    code, label = np.full(n, -1, np.int8), np.zeros(n, np.uint64)
    for i in range(n):
        m = np.isin(vol, leaves[row_target[i]]) & (vol != 0)
        pad = np.pad(m, 1)
        core = m.copy()
        for ax in range(3):
            for s in (1, -1):
                core &= np.roll(pad, s, axis=ax)[1:-1, 1:-1, 1:-1]
        sets = {True: [(core, 1)], False: [(m, 1)], "fallback": [(core, 1), (m, 5)]}[erode]
        for mask, c in sets:
            cand = np.argwhere(mask) + np.array(offset)  # x, y, z order
            d = (cand + 0.5) * RES - locs[i]
            d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
            ok = np.flatnonzero(d2 <= r * r)
            if ok.size:
                j = ok[np.argmin(d2[ok])]  # argmin: the first of equal minima
                vox[i], d2s[i], code[i] = cand[j], d2[j], c
                label[i] = vol[tuple(cand[j] - np.array(offset))]
                break
    return vox, d2s, code, label


def _ties(vol, offset, locs, leaves, row_target, r, erode):
    """Rows whose nearest candidate is tied with another (the tie rule decides them)."""
    out = 0
    for i in range(len(locs)):
        m = np.isin(vol, leaves[row_target[i]]) & (vol != 0)
        cand = np.argwhere(m) + np.array(offset)
        d = (cand + 0.5) * RES - locs[i]
        d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        d2 = d2[d2 <= r * r]
        out += d2.size > 1 and np.sum(d2 == d2.min()) > 1
    return out


def _rows(source, n: int, seed: int, r: float, labels: int):
    rng = np.random.default_rng(seed)
    lo, hi = source.meta.bounds(0)
    nm_lo, nm_hi = lo * RES - r, hi * RES + r  # some balls cross the volume's edge, a few miss it
    locs = rng.uniform(nm_lo, nm_hi, size=(n, 3))
    corner = rng.integers(lo, hi, size=(n // 3, 3)) * RES  # on voxel corners: equally near centres
    locs[: n // 3] = corner
    leaves = [np.sort(rng.choice(np.arange(1, labels, dtype=np.uint64), k, replace=False))
              for k in (1, 3, 8, labels // 2, labels * 9 // 10)]
    leaves.append(np.array([7], np.uint64))  # the slab's label
    return locs, leaves, rng.integers(0, len(leaves), n)


def _encoded_bits(source):
    """Bit widths of every block of every chunk (read from the block headers)."""
    cs = np.array(source.meta.chunk)
    grid = -(-np.array(source.meta.size) // cs)
    keys = [tuple(k) for k in np.argwhere(np.ones(grid, bool))]
    bits = []
    for key, data in source.read_encoded_many(keys, 0):
        shape = chunk_shapes(source.meta, np.array([key]), 0)[0]
        nb = int(np.prod(-(-shape // source.meta.block)))
        words = np.frombuffer(data, "<u4")
        bits.append(words[1:1 + 2 * nb:2] >> 24)
    return np.concatenate(bits)


@pytest.mark.parametrize("chunk,block,noisy", [((16, 12, 6), (8, 8, 8), False), ((16, 12, 6), (3, 5, 2), False),
                                               ((10, 9, 5), (8, 8, 8), True)])
@pytest.mark.parametrize("erode", [True, False, "fallback"])
@pytest.mark.parametrize("passes", [False, True])
def test_search_matches_brute_force(chunk, block, noisy, erode, passes):
    source = Source(_volume((37, 29, 13), seed=1, noisy=noisy), chunk, block, offset=(-5, 7, 3))
    r = 100.0
    locs, leaves, row_target = _rows(source, 150, seed=2, r=r, labels=3000 if noisy else 30)
    radii = [r / 4, r / 2, r] if passes else [r]
    got = _snap_numba.search(source, locs, row_target, leaves, radii, erode, RES, source.meta.bounds(0), {})
    want = _brute(source.vol, source.meta.offset, locs, leaves, row_target, r, erode)
    np.testing.assert_array_equal(got[2], want[2])
    hit = want[2] >= 0
    np.testing.assert_array_equal(got[0][hit], want[0][hit])
    np.testing.assert_array_equal(got[1][hit], want[1][hit])  # exact: the same float operations
    np.testing.assert_array_equal(got[3][hit], want[3][hit])
    assert hit.sum() > 10 and (~hit).sum() > 3  # found and not found both occur
    if erode == "fallback" and not noisy:
        assert (got[2] == 5).sum() > 3 and (got[2] == 1).sum() > 3
    bits = _encoded_bits(source)
    if noisy:
        assert (bits >= 16).any()  # label-memoised blocks
    else:
        assert (bits == 0).any() and ((bits > 0) & (bits <= 8)).any()
    # balls crossing chunk borders occur
    cs, lo = np.array(chunk), np.array(source.meta.offset)
    a = (np.floor((locs - r) / RES) - lo) // cs
    b = (np.floor((locs + r) / RES) - lo) // cs
    assert np.any(a[hit] != b[hit], axis=1).sum() > 10


def test_ties_go_to_the_first_voxel_in_x_y_z_order():
    source = Source(_volume((37, 29, 13), seed=3, noisy=False), (16, 12, 6), (8, 8, 8), offset=(0, 0, 0))
    r = 100.0
    locs, leaves, row_target = _rows(source, 150, seed=4, r=r, labels=30)
    for erode in (False, True):
        assert _ties(source.vol, (0, 0, 0), locs, leaves, row_target, r, erode) > 10  # the rule is exercised
        got = _snap_numba.search(source, locs, row_target, leaves, [r], erode, RES, source.meta.bounds(0), {})
        want = _brute(source.vol, (0, 0, 0), locs, leaves, row_target, r, erode)
        np.testing.assert_array_equal(got[0][want[2] >= 0], want[0][want[2] >= 0])


def test_a_missing_chunk_is_background():
    source = Source(_volume((37, 29, 13), seed=5, noisy=False), (16, 12, 6), (8, 8, 8), offset=(0, 0, 0))
    r = 100.0
    locs, leaves, row_target = _rows(source, 120, seed=6, r=r, labels=30)
    source.gone = {(1, 1, 1)}
    got = _snap_numba.search(source, locs, row_target, leaves, [r / 2, r], "fallback", RES,
                             source.meta.bounds(0), {})
    vol = source.vol.copy()
    vol[16:32, 12:24, 6:12] = 0
    want = _brute(vol, (0, 0, 0), locs, leaves, row_target, r, "fallback")
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[0][want[2] >= 0], want[0][want[2] >= 0])
    changed = _brute(source.vol, (0, 0, 0), locs, leaves, row_target, r, "fallback")
    assert (changed[2] != want[2]).any() or (changed[0] != want[0]).any()  # the chunk mattered


def _corrupt(data: bytes, n_blocks: int, how: str) -> bytes:
    words = np.frombuffer(data, "<u4").copy()
    n = len(words)
    heads = 1 + 2 * np.arange(n_blocks)
    if how == "truncated":  # the headers survive, the tables and values do not
        return words[: 1 + 2 * n_blocks].tobytes()
    if how == "bits":  # bit width 3 is not allowed
        words[heads] = (words[heads] & 0xFFFFFF) | (3 << 24)
    elif how == "values":  # 32-bit values far past the end
        words[heads] = (words[heads] & 0xFFFFFF) | (32 << 24)
        words[heads + 1] = n
    elif how == "table":  # 1-bit indices into a one-entry table ending at the chunk's end
        words[heads] = (1 << 24) | (n - 3)  # its entry 0 is the last two words; entry 1 is past the end
        words[heads + 1] = 0  # values: the header words, with bits set
    return words.tobytes()


@pytest.mark.parametrize("how,problem", [("truncated", "table outside"), ("bits", "bad bit width"),
                                         ("values", "values lie outside"), ("table", "table index")])
def test_corrupt_chunks_are_a_source_error_naming_them(how, problem):
    source = Source(_volume((37, 29, 13), seed=7, noisy=False), (16, 12, 6), (8, 8, 8), offset=(0, 0, 0))
    r = 100.0
    locs = np.array([[20.5, 18.5, 8.5]]) * RES  # its box lies in chunk (1, 1, 1)
    leaves = [np.arange(1, 30, dtype=np.uint64)]  # every voxel's label is looked up
    key = (1, 1, 1)
    encoded = dict(source.read_encoded_many([key], 0))
    assert _snap_numba.search(source, locs, np.zeros(1), leaves, [r], True, RES, source.meta.bounds(0),
                              dict(encoded))[2][0] == 1  # intact: it snaps
    n_blocks = int(np.prod(-(-np.array(source.meta.chunk) // 8)))
    encoded[key] = _corrupt(encoded[key], n_blocks, how)
    with pytest.raises(SourceError, match=r"chunk \(1, 1, 1\).*" + problem):
        _snap_numba.search(source, locs, np.zeros(1), leaves, [r], True, RES, source.meta.bounds(0), encoded)


def test_short_chunks_are_refused_before_the_compiled_search():
    source = Source(_volume((37, 29, 13), seed=8, noisy=False), (16, 12, 6), (8, 8, 8), offset=(0, 0, 0))
    locs = np.array([[20.5, 18.5, 8.5]]) * RES
    encoded = {(1, 1, 1): next(source.read_encoded_many([(1, 1, 1)], 0))[1][:10]}
    with pytest.raises(SourceError, match=r"chunk \(1, 1, 1\)"):
        _snap_numba.search(source, locs, np.zeros(1), [np.arange(1, 30, dtype=np.uint64)], [100.0], True, RES,
                           source.meta.bounds(0), encoded)


def test_compiles_without_a_writable_cache():
    """numba refuses ``cache=True`` where it finds no cache directory; ``_jit`` compiles without it."""
    ns: dict = {}
    exec("def f(x):\n    return x * 2 + 1\n", ns)  # no source file: no cache locator
    assert _snap_numba._jit(ns["f"])(20) == 41


def test_importing_the_package_does_not_import_numba():
    import subprocess
    import sys

    code = "import sys, crantseg_dask, crantseg_dask.ops._snap_kernel; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("erode", [False, True, "fallback"])
def test_a_voxel_exactly_at_the_radius_is_found(erode):
    """A 3 x 3 x 3 cube of the target whose centre voxel's centre lies exactly ``r`` from the
    location along x (and its near face r - 16 nm): within ``r`` (d^2 <= r^2), not within less."""
    vol = np.zeros((30, 12, 9), np.uint64)
    vol[14:17, 4:7, 3:6] = 9
    source = Source(vol, (16, 12, 6), (8, 8, 8), offset=(0, 0, 0))
    at = np.array([[15 - 6, 5, 4]])
    locs = (at + 0.5) * RES
    r = 16.0 * 6 if erode is True else 16.0 * 5  # the eroded centre voxel / the nearest face voxel
    for radius, found in ((r, True), (np.nextafter(r, 0), False)):
        got = _snap_numba.search(source, locs, np.zeros(1), [np.array([9], np.uint64)], [radius], erode, RES,
                                 source.meta.bounds(0), {})
        assert (got[2][0] >= 0) == found, (radius, got)
        if found:
            assert got[1][0] == r * r and got[0][0].tolist() == [15 if erode is True else 14, 5, 4]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("side", [1, -1])
def test_erosion_reads_the_next_block_when_no_centre_of_it_is_in_the_ball(axis, side):
    """A slab of the target whose one eroded voxel in the ball is the last (first) of its block along
    ``axis``: its face neighbour lies in the next (previous) block, which holds no voxel centre within
    the radius, yet decides the erosion; the answer is the brute force's, that voxel, at exactly r."""
    vol = np.zeros((24, 24, 24), np.uint64)
    cut = [slice(None)] * 3
    cut[axis] = slice(6, None) if side == 1 else slice(0, 10)  # face at 6 (9): the eroded voxel at 7 (8)
    vol[tuple(cut)] = 9
    source = Source(vol, (16, 16, 16), (8, 8, 8), offset=(0, 0, 0))
    at = np.full(3, 12)
    at[axis] = 1 if side == 1 else 14  # the voxel centre 6 voxels from the eroded one
    r = RES[axis] * 6
    locs = ((at + 0.5) * RES)[None]
    got = _snap_numba.search(source, locs, np.zeros(1), [np.array([9], np.uint64)], [r / 2, r], True, RES,
                             source.meta.bounds(0), {})
    want = _brute(vol, (0, 0, 0), locs, [np.array([9], np.uint64)], np.zeros(1, np.int64), r, True)
    expect = at.copy()
    expect[axis] = 7 if side == 1 else 8
    assert want[2][0] == 1 and want[0][0].tolist() == expect.tolist() and want[1][0] == r * r
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_warm_up_compiles_the_search_for_the_types_a_search_uses():
    """``warm_up`` (a worker's one-time set-up in the scale benchmark) leaves the compiled search
    with the signature a real search calls it with, so no later call compiles again."""
    from crantseg_dask.ops import _snap_numba

    _snap_numba.warm_up()
    kernel = _snap_numba._kernel()
    before = list(kernel.signatures)
    assert len(before) >= 1
    none, none3 = np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    _snap_numba.search_words(np.zeros(1, np.uint32), none, none, none3, none3, none3, np.zeros(3, np.int64),
                             np.zeros(0, np.int64), np.array([8, 8, 8]), np.zeros((2, 3)), np.ones(3), np.ones(2),
                             np.zeros((2, 2, 3), np.int64), np.zeros((2, 2, 3), np.int64), np.zeros(0, np.uint64),
                             np.zeros(2, np.int64), np.zeros(2, np.int64), "fallback")
    assert list(kernel.signatures) == before
