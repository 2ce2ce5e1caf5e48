"""The compressed_segmentation random-access decoder on plain numpy, against the
``compressed_segmentation`` package's full decode: every bit width, many block sizes, ragged chunk
shapes, many chunks in one call, block-range decodes, and corrupt or truncated input. Every test
runs twice: point lookups by the numpy path and by the compiled kernel (``_cseg_numba``)."""
import functools

import compressed_segmentation as cseg
import numpy as np
import pytest

from crantseg_dask.sources import _cseg


@pytest.fixture(autouse=True, params=[False, True], ids=["numpy", "compiled"])
def compiled(request, monkeypatch):
    """``_cseg.decode_points`` of this test forced to one path."""
    monkeypatch.setattr(_cseg, "decode_points", functools.partial(_cseg.decode_points, compiled=request.param))
    return request.param

BLOCKS = [(8, 8, 8), (1, 1, 1), (2, 2, 2), (4, 4, 4), (16, 16, 16), (8, 8, 4), (3, 5, 2), (64, 32, 32)]
SHAPES = [(32, 32, 16), (13, 17, 9), (1, 1, 1), (8, 8, 8), (40, 3, 21)]


def _volume(rng, shape, n_labels):
    """Labels with their high and low words both in use, a few distinct per block."""
    ids = rng.integers(1, 2**63, size=max(n_labels, 1), dtype=np.uint64)
    return ids[rng.integers(0, n_labels, size=shape)] if n_labels > 1 else np.full(shape, ids[0], np.uint64)


def _encode(vol, block):
    return cseg.compress(np.asfortranarray(vol[..., None]), block, order="F")


def _full(data, shape, block):
    return cseg.decompress(data, tuple(shape) + (1,), np.uint64, block, order="F")[..., 0]


def _bit_widths(data, shape, block):
    words = np.frombuffer(data, "<u4")
    n = int(np.prod(-(-np.array(shape) // np.array(block))))
    return set((words[1: 1 + 2 * n: 2] >> 24).tolist())


@pytest.mark.parametrize("block", BLOCKS)
def test_every_voxel_equals_the_full_decode(block):
    rng = np.random.default_rng(sum(block))
    seen = set()
    for shape in SHAPES:
        for n_labels in (1, 2, 3, 5, 17, 300):
            vol = _volume(rng, shape, n_labels)
            data = _encode(vol, block)
            want = _full(data, shape, block)
            seen |= _bit_widths(data, shape, block)
            pos = np.argwhere(np.ones(shape, bool))
            got = _cseg.decode_points([data], [shape], block, np.zeros(len(pos), int), pos)
            np.testing.assert_array_equal(got, want[tuple(pos.T)])
    assert 0 in seen and (1 in seen or np.prod(block) == 1)  # 0-bit (one label) and 1-bit blocks occur


def _hand_encode(vol, block, bits):
    """One-channel encoding of ``vol`` with every block at the given bit width (the format lets a
    block use any width that holds its table; the package's encoder picks the smallest)."""
    shape, block = np.array(vol.shape), np.array(block)
    grid = -(-shape // block)
    n = int(grid.prod())
    head, body = [], []
    at = 2 * n
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                lo = np.array([bx, by, bz]) * block
                sub = np.full(block, vol[tuple(lo)], np.uint64)  # pad with a label in use
                part = vol[lo[0]:lo[0] + block[0], lo[1]:lo[1] + block[1], lo[2]:lo[2] + block[2]]
                sub[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                table, idx = np.unique(sub.ravel(order="F"), return_inverse=True)
                assert len(table) <= 2 ** bits
                packed = np.zeros(-(-int(block.prod()) * bits // 32), np.uint64)
                for i, v in enumerate(idx):
                    packed[i * bits // 32] |= np.uint64(int(v) << (i * bits % 32))
                head += [at + len(packed) | bits << 24, at]
                body += packed.astype(np.uint32).tolist()
                at += len(packed)
                head[-2] = at | bits << 24
                body += np.frombuffer(table.astype("<u8").tobytes(), "<u4").tolist()
                at += 2 * len(table)
    return np.array([1] + head + body, "<u4").tobytes()


@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32])
def test_every_bit_width_against_the_package(bits):
    rng = np.random.default_rng(bits)
    block, shape = (4, 4, 2), (9, 6, 5)  # ragged
    vol = rng.integers(1, 2**64 - 1, size=4, dtype=np.uint64)[rng.integers(0, 4, size=shape)]
    data = _hand_encode(vol, block, bits)
    if bits < 32:  # the package agrees it is valid; at 32 bits its decoder's index mask (1 << 32) - 1
        np.testing.assert_array_equal(_full(data, shape, block), vol)  # wraps to 0, so the spec decides
    assert _bit_widths(data, shape, block) == {bits}
    np.testing.assert_array_equal(_decode_all(data, shape, block), vol.ravel()[
        np.ravel_multi_index(np.argwhere(np.ones(shape, bool)).T, shape)])


def test_many_chunks_in_one_call_and_every_width():
    rng = np.random.default_rng(2)
    block = (8, 8, 8)
    vols = [_volume(rng, s, n) for s, n in [((32, 32, 16), 1), ((20, 9, 16), 2), ((32, 32, 16), 4),
                                             ((5, 32, 3), 9), ((32, 32, 16), 200), ((17, 17, 17), 3000)]]
    datas = [_encode(v, block) for v in vols]
    assert set().union(*[_bit_widths(d, v.shape, block) for d, v in zip(datas, vols)]) >= {0, 1, 2, 4, 8, 16}
    chunk_of = rng.integers(0, len(vols), 20000)
    shapes = np.array([v.shape for v in vols])
    local = (rng.random((len(chunk_of), 3)) * shapes[chunk_of]).astype(int)
    got = _cseg.decode_points(datas, shapes, block, chunk_of, local)
    want = np.array([_full(datas[k], vols[k].shape, block)[tuple(p)] for k, p in zip(chunk_of, local)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("block", [(8, 8, 8), (4, 4, 4), (3, 5, 2)])
def test_block_range_decode_on_random_boxes(block):
    rng = np.random.default_rng(3)
    shape = (37, 30, 19)  # ragged against every block size here
    vol = _volume(rng, shape, 40)
    data = _encode(vol, block)
    full = _full(data, shape, block)
    for _ in range(30):
        lo = rng.integers(0, shape)
        hi = lo + 1 + rng.integers(0, np.array(shape) - lo)
        np.testing.assert_array_equal(_cseg.decode_box(data, shape, block, lo, hi),
                                      full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        (origin, region), = _cseg.decode_blocks([data], [shape], block, [0], [lo], [hi])
        assert (origin % block == 0).all() and (origin <= lo).all()
        assert region.size == _cseg.block_voxels(lo, hi, shape, block)
        np.testing.assert_array_equal(region, full[tuple(slice(a, a + n) for a, n in zip(origin, region.shape))])


def test_blocks_holding_never_misses_a_label():
    rng = np.random.default_rng(4)
    block, shape = (8, 8, 8), (40, 24, 19)
    vol = _volume(rng, shape, 300)
    vol[:16] = vol[0, 0, 0]  # a run of one-label (0-bit) blocks
    data = _encode(vol, block)
    grid = -(-np.array(shape) // block)
    ids = np.arange(int(grid.prod()))
    pos = _cseg.block_positions(shape, block, ids)
    assert len(pos) == np.prod(shape) and len(np.unique(pos, axis=0)) == len(pos)
    for want in (np.sort(rng.choice(np.unique(vol), 3, replace=False)), np.sort(vol[:1, :1, :1].ravel())):
        got = _cseg.blocks_holding(data, shape, block, ids, want)
        for i in ids:
            p = _cseg.block_positions(shape, block, [i])
            if np.isin(vol[tuple(p.T)], want).any():
                assert got[i], f"block {i} holds a wanted label"
    assert not _cseg.blocks_holding(data, shape, block, ids, np.array([12345], np.uint64))[:4].any()


def test_the_rule():
    assert _cseg.use_blocks(10, 524288) and not _cseg.use_blocks(524288, 524288)
    np.testing.assert_array_equal(_cseg.use_blocks(np.array([1, 10**6]), np.array([10**5, 10**5])), [True, False])


# -- corrupt input: a clear error, never a crash ----------------------------------------------------
def _decode_all(data, shape, block):
    pos = np.argwhere(np.ones(shape, bool))
    return _cseg.decode_points([data], [shape], block, np.zeros(len(pos), int), pos)


def test_truncated_chunks_raise():
    rng = np.random.default_rng(5)
    block, shape = (8, 8, 8), (32, 32, 16)
    data = _encode(_volume(rng, shape, 50), block)
    for cut in sorted({0, 3, 4, 8, 40, len(data) // 2 // 4 * 4, len(data) - 8, len(data) - 4, len(data) - 1}):
        with pytest.raises(_cseg.CsegError, match="chunk 0"):
            _decode_all(data[:cut], shape, block)


def test_a_table_cut_short_raises_naming_the_table_index():
    """Blocks written values first, table last (``_hand_encode``): cutting the chunk's last 8 bytes
    removes the last block's last table entry, which only its voxels of that index read."""
    rng = np.random.default_rng(8)
    block, shape = (4, 4, 2), (8, 4, 2)
    vol = rng.integers(1, 2**63, size=4, dtype=np.uint64)[rng.integers(0, 4, size=shape)]
    data = _hand_encode(vol, block, 2)
    np.testing.assert_array_equal(_decode_all(data, shape, block), vol.ravel()[
        np.ravel_multi_index(np.argwhere(np.ones(shape, bool)).T, shape)])
    with pytest.raises(_cseg.CsegError, match="table index lies outside"):
        _decode_all(data[:-8], shape, block)
    first = np.argwhere(np.ones((4, 4, 2), bool))  # the first block's voxels read nothing cut off
    assert len(_cseg.decode_points([data[:-8]], [shape], block, np.zeros(len(first), int), first)) == 32


def test_corrupt_headers_and_random_garbage_raise_or_decode_but_never_crash():
    rng = np.random.default_rng(6)
    block, shape = (8, 8, 8), (32, 32, 16)
    data = bytearray(_encode(_volume(rng, shape, 50), block))
    bad = bytearray(data)
    bad[0:4] = (7).to_bytes(4, "little")  # channel offset
    with pytest.raises(_cseg.CsegError, match="bad header"):
        _decode_all(bytes(bad), shape, block)
    bad = bytearray(data)
    bad[4 + 3] = 3  # bit width 3 in the first block's header
    with pytest.raises(_cseg.CsegError, match="bit width"):
        _decode_all(bytes(bad), shape, block)
    bad = bytearray(data)
    w0 = int.from_bytes(bad[4:8], "little") & 0xFF000000  # the first block's table inside the headers
    bad[4:8] = w0.to_bytes(4, "little")
    with pytest.raises(_cseg.CsegError, match="table"):
        _decode_all(bytes(bad), shape, block)
    bad = bytearray(data)
    bad[8:12] = (10**8).to_bytes(4, "little")  # the first block's values far past the end
    with pytest.raises(_cseg.CsegError):
        _decode_all(bytes(bad), shape, block)
    for _ in range(200):  # random bytes in random places: decoded or refused, nothing else
        bad = bytearray(data)
        at = rng.integers(0, len(bad), 8)
        for a in at:
            bad[a] = rng.integers(0, 256)
        try:
            _decode_all(bytes(bad), shape, block)
        except _cseg.CsegError:
            pass
    for garbage in (b"", b"abc", b"not a chunk!", rng.bytes(4000)):
        with pytest.raises(_cseg.CsegError):
            _decode_all(garbage, shape, block)


def test_positions_outside_the_chunk_raise():
    block, shape = (8, 8, 8), (10, 10, 10)
    data = _encode(np.ones(shape, np.uint64), block)
    for pos in ([(10, 0, 0)], [(0, -1, 0)], [(0, 0, 10)]):
        with pytest.raises(_cseg.CsegError, match="outside the chunk"):
            _cseg.decode_points([data], [shape], block, [0], pos)
    with pytest.raises(_cseg.CsegError, match="leaves the chunk"):
        _cseg.decode_box(data, shape, block, (0, 0, 0), (11, 1, 1))


def test_a_few_points_in_many_chunks_out_of_order_equal_the_full_decode():
    """The lookup's common case: 1-12 points per chunk, chunks given in any order, ragged
    shapes, 0-bit blocks and many bit widths in one call."""
    rng = np.random.default_rng(7)
    block = (8, 8, 8)
    vols = [_volume(rng, s, n) for s, n in [((32, 32, 16), 1), ((20, 9, 16), 3), ((37, 30, 19), 40),
                                             ((5, 32, 3), 2000), ((32, 32, 16), 300)]]
    datas = [_encode(v, block) for v in vols]
    shapes = np.array([v.shape for v in vols])
    for m in (1, 3, 12):
        chunk_of = rng.permutation(np.repeat(np.arange(len(vols)), m))
        local = (rng.random((len(chunk_of), 3)) * shapes[chunk_of]).astype(int)
        want = [_full(datas[k], vols[k].shape, block)[tuple(p)] for k, p in zip(chunk_of, local)]
        np.testing.assert_array_equal(_cseg.decode_points(datas, shapes, block, chunk_of, local), want)


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_position_beyond_a_ragged_chunk_among_full_ones_raises_naming_it(shuffled):
    """Positions are checked per chunk against that chunk's own (ragged) shape, whether the rows
    come sorted by chunk or not; the position is valid in the full chunks around it."""
    block = (8, 8, 8)
    shapes = np.array([(32, 32, 16), (10, 10, 10), (32, 32, 16)])
    datas = [_encode(np.ones(tuple(s), np.uint64), block) for s in shapes]
    chunk_of = np.array([0, 0, 1, 1, 2, 2])
    for bad in ([10, 0, 0], [0, 10, 3], [9, 9, 10]):
        local = np.array([[31, 31, 15], [0, 0, 0], [9, 9, 9], bad, [31, 0, 15], [1, 2, 3]])
        order = np.random.default_rng(1).permutation(6) if shuffled else np.arange(6)
        with pytest.raises(_cseg.CsegError, match="outside the chunk's shape") as e:
            _cseg.decode_points(datas, shapes, block, chunk_of[order], local[order])
        assert e.value.chunk == 1
    ok = np.array([[31, 31, 15], [0, 0, 0], [9, 9, 9], [0, 9, 0], [31, 0, 15], [1, 2, 3]])
    assert _cseg.decode_points(datas, shapes, block, chunk_of, ok).tolist() == [1] * 6


@pytest.mark.parametrize("d", [(8, 8, 8), (128, 128, 32), (1, 2, 4), (3, 5, 7), (8, 6, 1), (64, 100, 2)])
def test_divmod_nonneg_equals_numpy_divmod(d):
    a = np.random.default_rng(3).integers(0, 10**7, size=(5000, 3))
    a[:3] = [[0, 0, 0], [1, 1, 1], [2**40, 2**40 + 1, 2**40 - 1]]
    q, r = _cseg.divmod_nonneg(a, d)
    want_q, want_r = np.divmod(a, np.array(d))
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(r, want_r)
