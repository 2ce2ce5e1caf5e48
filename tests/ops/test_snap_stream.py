"""A snap task's chunk reads streamed into its row groups (``ops._snap_stream``).

The kernel over the tiny dataset's layer served over HTTP with faults on every chunk read
(fail 0.2, stall 0.05), with row groups made small so that many groups wait on one streamed read,
against the brute-force oracle (``dataset.truth_snap.SnapTruth``); the stream's helpers against
plain enumeration and fake sources."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from crantseg_dask.dataset.truth_snap import SnapTruth, other_targets
from crantseg_dask.errors import SourceError
from crantseg_dask.ops import _snap_kernel
from crantseg_dask.ops._snap_kernel import STATUS, snap_kernel
from crantseg_dask.ops._snap_stream import box_chunks, in_background, stream_groups
from crantseg_dask.sources._chunks import ChunkReader
from crantseg_dask.testing.server import fast_spec

R = 120.0


@pytest.fixture(scope="module")
def rows(truth):
    """(locs nm, targets): rows near supervoxel anchors, most with a neighbouring root as target."""
    rng = np.random.default_rng(21)
    res = truth.resolution(0)
    anchors = truth.sv_anchor[rng.choice(len(truth.sv_anchor), 160, replace=False)]
    locs = (anchors + rng.random(anchors.shape)) * res + rng.normal(0, 40, anchors.shape) * [1, 1, 0.5]
    tgt, own = other_targets(truth, locs, datetime.now(timezone.utc), seed=5)
    keep = tgt != 0
    tgt[::7] = own[::7]  # some rows already on their target
    keep &= tgt != 0
    return locs[keep], tgt[keep].astype(np.uint64)


def test_streamed_groups_over_faulty_http_match_oracle(truth, faulty_layer_server, rows, monkeypatch):
    locs, tgt = rows
    # groups of a few rows: the partition's search chunks arrive through one stream for many groups
    monkeypatch.setattr(_snap_kernel, "GROUP_VOXELS", 4 * int(np.prod(np.floor(2 * R / truth.resolution(0)) + 3)))
    calls, groups = [], []
    read = ChunkReader.read_encoded_many
    monkeypatch.setattr(ChunkReader, "read_encoded_many", lambda self, c, m: calls.append(len(c)) or read(self, c, m))
    import crantseg_dask.ops._snap_kernel as kernel_module

    def counting(source, keys, encoded):
        groups.append(len(keys))
        yield from stream_groups(source, keys, encoded)

    monkeypatch.setattr(kernel_module, "stream_groups", counting)
    before = faulty_layer_server.state.faults.injected
    got = snap_kernel(locs, tgt, fast_spec(faulty_layer_server), True, R, True)
    assert faulty_layer_server.state.faults.injected > before  # the faults hit these reads
    assert groups and groups[0] >= 10  # many groups ...
    assert len(calls) == 2  # ... read in one stream, after the read of the chunks under the rows
    xyz, dist, status = SnapTruth(truth).table(locs, tgt, True, R, True)
    assert [STATUS[s] for s in got.status.tolist()] == status.tolist()
    np.testing.assert_array_equal(got.xyz, xyz)
    np.testing.assert_allclose(got.distance, dist, rtol=1e-12, equal_nan=True)
    assert (status == "snapped").sum() >= 40 and (status == "on_target").sum() >= 5


def test_box_chunks_are_every_touched_chunk_once_in_first_touch_order():
    rng = np.random.default_rng(2)
    cs, vol_lo = np.array([8, 8, 4]), np.array([3, -5, 10])
    lo = vol_lo + rng.integers(0, 40, (30, 3))
    hi = lo + rng.integers(-1, 12, (30, 3))  # some empty boxes (hi < lo)
    want = []
    for a, b in zip(lo, hi):
        for x in range(a[0], b[0] + 1):
            for y in range(a[1], b[1] + 1):
                for z in range(a[2], b[2] + 1):
                    k = tuple(int(v) for v in (np.array([x, y, z]) - vol_lo) // cs)
                    if k not in want:
                        want.append(k)
    assert box_chunks(lo, hi, vol_lo, cs) == want
    assert box_chunks(lo[:0], hi[:0], vol_lo, cs) == []


class FakeSource:
    """Answers ``read_encoded_many`` from a dict, in reverse order (arrival order is not asked
    order), optionally failing at one chunk; records what was asked and whether it was closed."""

    def __init__(self, data: dict, fail_at=None, drop=None):
        self.data, self.fail_at, self.drop = data, fail_at, drop
        self.asked, self.closed = [], False

    def read_encoded_many(self, chunks, mip):
        self.asked.append(list(chunks))
        try:
            for c in reversed(list(chunks)):
                if c == self.fail_at:
                    raise SourceError(f"chunk {c}: failed")
                if c != self.drop:
                    yield c, self.data[c]
        finally:
            self.closed = True


def test_stream_groups_hands_over_each_group_with_all_its_chunks():
    data = {(i, 0, 0): bytes([i]) for i in range(6)}
    src = FakeSource({**data, (9, 0, 0): None})
    encoded = {(0, 0, 0): b"have"}
    keys = [[(0, 0, 0), (1, 0, 0)], [(1, 0, 0), (2, 0, 0), (9, 0, 0)], [(5, 0, 0)]]
    for g in stream_groups(src, keys, encoded):
        assert all(k in encoded for k in keys[g])
    assert src.asked == [[(1, 0, 0), (2, 0, 0), (9, 0, 0), (5, 0, 0)]]  # one read, in group order, no repeats
    assert encoded[(0, 0, 0)] == b"have" and encoded[(9, 0, 0)] is None and encoded[(2, 0, 0)] == b"\x02"


def test_stream_groups_raises_read_errors_and_closes_the_read():
    keys = [[(0, 0, 0)], [(1, 0, 0)], [(2, 0, 0)]]
    src = FakeSource({k[0]: b"x" for k in keys}, fail_at=(1, 0, 0))
    with pytest.raises(SourceError, match=r"chunk \(1, 0, 0\): failed"):
        list(stream_groups(src, keys, {}))
    assert src.closed
    short = FakeSource({k[0]: b"x" for k in keys}, drop=(0, 0, 0))
    with pytest.raises(SourceError, match=r"chunk \(0, 0, 0\) .* never read"):
        list(stream_groups(short, keys, {}))
    stopped = FakeSource({k[0]: b"x" for k in keys})
    it = stream_groups(stopped, keys, {})
    next(it)
    it.close()  # the caller stops early (its search raised): the pending reads are closed
    assert stopped.closed


def test_in_background_waits_and_raises():
    seen = []
    with in_background(seen.append, 1):
        pass
    assert seen == [1]

    def boom():
        raise SourceError("leaves request failed")

    with pytest.raises(SourceError, match="leaves request failed"):
        with in_background(boom):
            pass
    with pytest.raises(KeyError):  # the body's own error wins
        with in_background(boom):
            raise KeyError("body")
