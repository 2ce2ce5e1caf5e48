"""The conformance suite every ``SegmentationSource`` passes (zarr's ``StoreTests`` pattern).

Subclass ``SourceConformance`` in a test module and define a ``source`` fixture that returns the
source over the tiny dataset; the ``truth`` fixture (``crantseg_dask.testing.fixtures``) gives the
expected values, computed by brute force over the whole volume and the recorded edit log. Every
check runs at several timestamps: before ingest, at ingest, before the first edit, exactly at and
just after edits, at each materialization version, and now.
"""
from __future__ import annotations

from datetime import timedelta

import networkx as nx
import numpy as np
import pytest

from ..errors import CrantsegError

__all__ = ["SourceConformance", "check_times"]


def check_times(truth) -> list:
    """Timestamps at which answers are checked."""
    ops = truth.operation_times()
    ingest = truth.created(truth.all_roots[0])
    picks = [ops[0], ops[len(ops) // 2], ops[-1]]
    times = [ingest - timedelta(days=1), ingest, ops[0] - timedelta(seconds=1)]
    times += picks + [t + timedelta(milliseconds=500) for t in picks] + [t - timedelta(milliseconds=1) for t in picks]
    times += [truth.materialization(v) for v in range(1, len(truth.edits["materializations"]) + 1)]
    times += [ops[-1] + timedelta(days=30)]
    return times


class SourceConformance:
    """Checks of every ``SegmentationSource`` method against ``Truth``."""

    # -- metadata ---------------------------------------------------------------------------
    def test_meta(self, source, truth):
        m = source.meta
        assert m.n_layers == 8
        assert m.graph_chunk == truth.params.graph_chunk
        assert tuple(m.viewer_resolution) == tuple(float(v) for v in truth.params.viewer_resolution)
        for mip in range(truth.params.n_mips):
            off, size = truth.bounds(mip)
            np.testing.assert_array_equal(m.bounds(mip), [off, off + size])
            np.testing.assert_array_equal(m.resolution[mip], truth.resolution(mip))

    # -- voxels -----------------------------------------------------------------------------
    @pytest.mark.parametrize("mip", [0, 1, 2])
    def test_supervoxels_at(self, source, truth, mip):
        rng = np.random.default_rng(mip)
        off, size = truth.bounds(mip)
        vox = rng.integers(off - 3, off + size + 3, size=(4000, 3))
        if mip == 0:  # every supervoxel's known voxel, plus duplicates
            vox = np.concatenate([vox, truth.sv_anchor, truth.sv_anchor[:50]])
        got = source.supervoxels_at(vox, mip)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, truth.supervoxel_at(vox, mip))
        if mip == 0:
            np.testing.assert_array_equal(got[4000:4000 + len(truth.supervoxels)], truth.supervoxels)

    def test_cutout(self, source, truth):
        off, size = truth.bounds(0)
        box = np.array([off + [13, 27, 5], off + size - [9, 3, 2]])
        got = source.cutout(box, 0)
        want = truth.volume(0)[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))]
        np.testing.assert_array_equal(got, want)

    # -- the chunked graph ------------------------------------------------------------------
    def test_roots_at_every_check_time(self, source, truth):
        ids = np.concatenate([truth.supervoxels, [0, 1 << 56 | 999_999], truth.supervoxels[:20]]).astype(np.uint64)
        for t in check_times(truth):
            got = source.roots(ids, t)
            np.testing.assert_array_equal(got, truth.root_of(ids, t), err_msg=f"at {t}")

    def test_roots_pass_through_at_or_above_stop_layer(self, source, truth):
        t = check_times(truth)[-1]
        roots = np.array(sorted(truth.roots_at(t)), dtype=np.uint64)
        np.testing.assert_array_equal(source.roots(roots, t), roots)
        l2 = source.roots(truth.supervoxels[:30], t, stop_layer=2)
        np.testing.assert_array_equal(source.roots(l2, t, stop_layer=2), l2)

    def test_l2_ids_group_supervoxels_like_truth(self, source, truth):
        t = check_times(truth)[-1]
        layout = source.meta.layout
        for root in sorted(truth.roots_at(t))[:12]:
            svs = truth.leaves(root)
            l2 = source.roots(svs, t, stop_layer=2)
            assert np.all(layout.layer(l2) == 2)
            np.testing.assert_array_equal(layout.chunk_coords(l2), layout.chunk_coords(svs))
            got = sorted(tuple(np.sort(svs[l2 == u]).tolist()) for u in np.unique(l2))
            want = sorted(tuple(g.tolist()) for g in truth.l2_groups(root))
            assert got == want

    def test_leaves_of_every_root(self, source, truth):
        for root in truth.all_roots.tolist():
            np.testing.assert_array_equal(source.leaves(root), truth.leaves(root))

    def test_leaves_many_and_stop_layer(self, source, truth):
        roots = truth.all_roots[:6]
        many = source.leaves_many(roots)
        assert sorted(many) == sorted(roots.tolist())
        for r in roots.tolist():
            np.testing.assert_array_equal(np.sort(many[r]), truth.leaves(r))
            l2 = source.leaves(r, stop_layer=2)
            assert len(l2) == len(truth.l2_groups(r))
            kids = sorted(tuple(np.sort(source.children(x)).tolist()) for x in l2.tolist())
            assert kids == sorted(tuple(g.tolist()) for g in truth.l2_groups(r))

    def test_leaves_within_bounds_are_chunk_granular(self, source, truth):
        m = source.meta
        box = np.array([m.bounds(0)[0], m.bounds(0)[0] + np.array(m.graph_chunk) + 1])
        for root in truth.all_roots[:10].tolist():
            svs = truth.leaves(root)
            chunks = m.layout.chunk_coords(svs)
            inside = np.all(chunks <= 1, axis=1)  # the box touches chunks 0 and 1 on every axis
            np.testing.assert_array_equal(np.sort(source.leaves(root, bounds=box)), svs[inside])

    def test_children(self, source, truth):
        root = int(truth.all_roots[-1])
        kids = source.children(root)
        assert kids.size and np.all(source.meta.layout.layer(kids) == 7)
        assert source.children(int(truth.supervoxels[0])).size == 0

    def test_unknown_ids(self, source, truth):
        layout = source.meta.layout
        unknown = int(layout.encode(8, 0, 0, 0, 123_456_789))
        unknown_sv = int(layout.encode(1, 0, 0, 0, 987_654))
        t = check_times(truth)[-1]
        np.testing.assert_array_equal(source.roots(np.array([unknown_sv], np.uint64), t), [0])
        # IDs at or above the stop layer pass through unasked (as cloud-volume does)
        np.testing.assert_array_equal(source.roots(np.array([unknown], np.uint64), t), [unknown])
        assert not source.is_latest(np.array([unknown], np.uint64), t)[0]
        with pytest.raises(CrantsegError):  # UnknownIDError locally, SourceError over HTTP
            source.leaves(unknown)

    def test_is_latest(self, source, truth):
        roots = truth.all_roots
        for t in check_times(truth):
            want = [truth.is_latest(r, t) for r in roots.tolist()]
            np.testing.assert_array_equal(source.is_latest(roots, t), want, err_msg=f"at {t}")

    def test_root_timestamps(self, source, truth):
        roots = truth.all_roots
        got = source.root_timestamps(roots)
        want = [truth.created(r).timestamp() for r in roots.tolist()]
        np.testing.assert_allclose(got, want, atol=1e-3)

    @pytest.mark.parametrize("pick", ["deepest", "middle"])
    def test_lineage_is_ancestors_and_descendants(self, source, truth, pick):
        full = nx.DiGraph()
        full.add_edges_from((o, n) for o, n, _ in truth.lineage)
        order = sorted(full.nodes, key=lambda r: (len(nx.ancestors(full, r)), r))
        root = order[-1] if pick == "deepest" else next(
            r for r in order[len(order) // 2:] if nx.ancestors(full, r) and nx.descendants(full, r))
        g = source.lineage(np.array([root], np.uint64))
        family = {root} | nx.ancestors(full, root) | nx.descendants(full, root)
        assert set(g.nodes) == family
        assert set(g.edges) == set(full.subgraph(family).edges)
        ended_by = {o: op for o, _, op in truth.lineage}
        for n, attrs in g.nodes(data=True):
            assert attrs["timestamp"] == pytest.approx(truth.created(n).timestamp(), abs=1e-3)
            if g.out_degree(n):
                assert attrs["operation_id"] == ended_by[n]

    def test_latest_roots(self, source, truth):
        t = check_times(truth)[-1]
        for root in truth.all_roots[:15].tolist():
            got = set(source.latest_roots(root, t).tolist())
            assert got == truth.latest_roots(root, t)

    def test_l2_graph(self, source, truth):
        for root in truth.all_roots[:8].tolist():
            edges = source.l2_graph(root)
            l2 = source.leaves(root, stop_layer=2)
            group_of_l2 = {}
            index = truth.l2_index(root)
            for x in l2.tolist():
                group_of_l2[x] = index[int(source.children(x)[0])]
            got = {tuple(sorted((group_of_l2[a], group_of_l2[b]))) for a, b in edges.tolist()}
            assert got == truth.l2_edges(root)

    # -- materialization --------------------------------------------------------------------
    def test_materialization_versions(self, source, truth):
        versions = source.materialization_versions()
        assert sorted(versions) == [m["version"] for m in truth.edits["materializations"]]
        for v, t in versions.items():
            assert t == truth.materialization(v)
        assert source.materialization_timestamp() == truth.materialization()
