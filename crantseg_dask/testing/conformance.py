"""The conformance suite every ``SegmentationSource`` passes (zarr's ``StoreTests`` pattern).

Subclass ``SourceConformance`` in a test module and define a ``source`` fixture that returns the
source over the tiny dataset; the ``truth`` fixture (``crantseg_dask.testing.fixtures``) gives the
expected values, computed by brute force over the whole volume and the recorded edit log. Every
check that depends on time runs at each of ``check_times``: before ingest, at ingest, before the
first edit, exactly at, just before and just after edits, at each materialization version, and
after the last edit (so roots are asked about before their creation too); the hierarchy checks run
at every layer 1..7 and on boxes whose lower corners lie inside the volume.
"""
from __future__ import annotations


import networkx as nx
import numpy as np
import pytest

from ..errors import CrantsegError
from .conformance_served import ServedAnswersConformance, check_times

__all__ = ["SourceConformance", "check_times", "random_boxes"]


def random_boxes(truth, n: int, seed: int = 0, mip: int = 0) -> list:
    """``n`` half-open voxel boxes (2, 3) at ``mip``, each around a random root voxel, with the
    lower corner inside the volume (never its corner) and the upper corner inside or on its edge."""
    rng = np.random.default_rng(seed)
    off, size = truth.bounds(mip)
    vol = truth.volume(mip)
    fg = np.argwhere(vol != 0)
    out = []
    for k in rng.choice(len(fg), size=n, replace=False):
        centre = fg[k] + off
        half = rng.integers(2, np.maximum(size // 4, 3))
        lo = np.clip(centre - half, off + 1, off + size - 1)
        hi = np.clip(centre + rng.integers(1, np.maximum(size // 4, 3)), lo + 1, off + size)
        out.append(np.stack([lo, hi]))
    return out


class SourceConformance(ServedAnswersConformance):
    """Checks of every ``SegmentationSource`` method against ``Truth`` (the methods the local
    server answers from are checked in ``ServedAnswersConformance``)."""

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
        for t in check_times(truth)[2::4]:
            roots = np.array(sorted(truth.roots_at(t)), dtype=np.uint64)
            np.testing.assert_array_equal(source.roots(roots, t), roots)
            l2 = source.roots(truth.supervoxels[:30], t, stop_layer=2)
            np.testing.assert_array_equal(source.roots(l2, t, stop_layer=2), l2)

    def test_l2_ids_group_supervoxels_like_truth(self, source, truth):
        layout = source.meta.layout
        for t in check_times(truth)[2::4]:
            for root in sorted(truth.roots_at(t))[:12]:
                svs = truth.leaves(root)
                l2 = source.roots(svs, t, stop_layer=2)
                assert np.all(layout.layer(l2) == 2)
                np.testing.assert_array_equal(layout.chunk_coords(l2), truth.chunk_of(svs, 2))
                got = sorted(tuple(np.sort(svs[l2 == u]).tolist()) for u in np.unique(l2))
                want = sorted(tuple(g.tolist()) for g in truth.l2_groups(root))
                assert got == want, (root, t)
                for layer in range(3, 8):
                    up = source.roots(svs, t, stop_layer=layer)
                    assert np.all(layout.layer(up) == layer)
                    got = sorted(tuple(np.sort(svs[up == u]).tolist()) for u in np.unique(up))
                    assert got == sorted(tuple(g.tolist()) for g in truth.layer_nodes(root, layer)), (root, t, layer)

    def test_leaves_of_every_root(self, source, truth):
        for root in truth.all_roots.tolist():
            np.testing.assert_array_equal(source.leaves(root), truth.leaves(root))

    def test_leaves_many_and_stop_layer(self, source, truth):
        roots = truth.all_roots[:6]
        many = source.leaves_many(roots)
        assert sorted(many) == sorted(roots.tolist())
        for r in roots.tolist():
            np.testing.assert_array_equal(np.sort(many[r]), truth.leaves(r))

    @pytest.mark.parametrize("layer", [2, 3, 4, 5, 6, 7])
    def test_layer_nodes_like_truth(self, source, truth, layer):
        """Each root's layer-k nodes: their supervoxels and their chunk, from supervoxel positions."""
        layout = source.meta.layout
        wrong = []
        for r in truth.all_roots[::7].tolist():
            nodes = source.leaves(r, stop_layer=layer)
            assert np.all(layout.layer(nodes) == layer)
            got = {tuple(np.sort(source.leaves(int(x))).tolist()): tuple(c) for x, c in
                   zip(nodes.tolist(), layout.chunk_coords(nodes).tolist())}
            want = {tuple(g.tolist()): tuple(truth.node_chunk(g, layer).tolist()) for g in truth.layer_nodes(r, layer)}
            if got != want:
                wrong.append(r)
        assert not wrong

    @pytest.mark.parametrize("layer", [1, 2, 3, 4, 5, 6, 7])
    def test_leaves_within_bounds_are_chunk_granular(self, source, truth, layer):
        """leaves(root, stop_layer=k, bounds=box): the layer-k nodes whose chunk box overlaps the
        box (truth: chunk boxes from supervoxel positions), on boxes with inner lower corners."""
        boxes = random_boxes(truth, 6, seed=layer)
        wrong = []
        for k, box in enumerate(boxes):
            inside = truth.supervoxel_at(np.stack([box[0], (box[0] + box[1]) // 2]))
            here = truth.root_of(inside, check_times(truth)[-1])
            for root in sorted({int(r) for r in here if r} | {int(truth.all_roots[-1 - k])}):
                got = source.leaves(root, stop_layer=layer, bounds=box)
                got_sets = sorted(tuple(np.sort(source.leaves(int(x))).tolist()) for x in got.tolist())
                want = sorted(tuple(g.tolist()) for g in truth.bounded_nodes(root, layer, box))
                if got_sets != want:
                    wrong.append((root, box.tolist()))
                assert set(got_sets) <= set(want), (root, layer, box.tolist())  # never an extra node
        assert not wrong

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
        """At every check time, before and after each root's creation (truth: a sweep of the edit
        log, forwards from the root's birth or backwards to it)."""
        before = 0
        for t in check_times(truth):
            for root in truth.all_roots[::3].tolist():
                got = set(source.latest_roots(root, t).tolist())
                assert got == truth.latest_roots(root, t), (root, t)
                before += t < truth.created(root)
        assert before  # some roots were asked about before their creation

    def test_l2_graph(self, source, truth):
        """On roots joined by merges (links) and on the first few (truth: contacts recomputed from
        the volume, L2 nodes from supervoxel positions)."""
        merged = [r for r in truth.all_roots.tolist() if truth.objects[r][1]]
        assert merged
        for root in merged[::max(len(merged) // 10, 1)] + truth.all_roots[:4].tolist():
            edges = source.l2_graph(root)
            index = truth.l2_index(root)
            group_of_l2 = {x: index[int(source.children(x)[0])] for x in source.leaves(root, stop_layer=2).tolist()}
            got = {tuple(sorted((group_of_l2[a], group_of_l2[b]))) for a, b in edges.tolist()}
            assert got == truth.l2_edges(root), root

    # -- materialization --------------------------------------------------------------------
    def test_materialization_versions(self, source, truth):
        versions = source.materialization_versions()
        assert sorted(versions) == [m["version"] for m in truth.edits["materializations"]]
        for v, t in versions.items():
            assert t == truth.materialization(v)
        assert source.materialization_timestamp() == truth.materialization()

    # -- chunk hierarchy (issue 16.1): expected chunks from the supervoxels' voxel positions ----
    # The PyChunkedGraph rule: a layer-2 chunk is (voxel - voxel_offset) // graph_chunk, a layer-L
    # chunk is that // 2 ** (L - 2), the root layer is the single chunk (0, 0, 0).
    @staticmethod
    def _l2_chunk(truth, svs) -> np.ndarray:
        anchor = truth.sv_anchor[np.searchsorted(truth.supervoxels, np.asarray(svs, np.uint64))]
        return (anchor - truth.bounds(0)[0]) // np.array(truth.params.graph_chunk)

    @staticmethod
    def _spread_roots(truth, n_big: int, n_random: int, seed: int = 0) -> list[int]:
        """The roots spanning the most layer-2 chunks, plus a few others at random."""
        roots = truth.all_roots.tolist()
        span = {r: len({tuple(c) for c in SourceConformance._l2_chunk(truth, truth.leaves(r)).tolist()})
                for r in roots}
        big = sorted(roots, key=lambda r: (-span[r], r))[:n_big]
        rest = [r for r in roots if r not in big]
        rng = np.random.default_rng(seed)
        return big + [rest[i] for i in rng.choice(len(rest), min(n_random, len(rest)), replace=False)]

    def test_node_chunks_follow_the_pcg_rule(self, source, truth):
        layout, n = source.meta.layout, source.meta.n_layers
        gc = np.array(truth.params.graph_chunk)
        for root in self._spread_roots(truth, 3, 2):
            svs_of: dict[int, np.ndarray] = {}

            def walk(node: int) -> np.ndarray:
                kids = source.children(node)
                if not kids.size:
                    return np.array([node], np.uint64)
                parts = [walk(int(k)) for k in kids.tolist()]
                svs_of[node] = np.concatenate(parts)
                L = int(layout.layer(np.uint64(node)))
                want = np.zeros(3, np.int64) if L == n else None
                for k in kids.tolist():  # the node's chunk is its child's parent chunk; boxes nest
                    Lk = max(int(layout.layer(np.uint64(k))), 2)
                    ck, cp = layout.chunk_coords(np.uint64(k)), layout.chunk_coords(np.uint64(node))
                    if L < n:
                        np.testing.assert_array_equal(cp, ck // 2 ** (L - Lk), err_msg=f"{node} > {k}")
                        sk, sp = gc * 2 ** (Lk - 2), gc * 2 ** (L - 2)
                        assert np.all(ck * sk >= cp * sp) and np.all((ck + 1) * sk <= (cp + 1) * sp), (node, k)
                if L < n:
                    c = self._l2_chunk(truth, svs_of[node]) // 2 ** (L - 2)
                    assert (c == c[0]).all(), f"layer-{L} node {node} spans several layer-{L} chunks"
                    want = c[0]
                np.testing.assert_array_equal(layout.chunk_coords(np.uint64(node)), want, err_msg=f"node {node}")
                return svs_of[node]

            np.testing.assert_array_equal(np.sort(walk(root)), truth.leaves(root))

    @pytest.mark.parametrize("layer", [2, 3, 4, 5, 6, 7])
    def test_leaves_within_bounds_match_brute_force(self, source, truth, layer):
        """Leaves within a box are the root's supervoxels whose layer-2 chunk box overlaps it (boxes
        of a layer-``layer`` chunk's size, lower corner anywhere inside the volume)."""
        rng = np.random.default_rng(layer)
        off, size = truth.bounds(0)
        gc = np.array(truth.params.graph_chunk)
        span = gc * 2 ** (layer - 2)
        for k, root in enumerate(self._spread_roots(truth, 3, 3, seed=layer)):
            svs = truth.leaves(root)
            anchors = truth.sv_anchor[np.searchsorted(truth.supervoxels, svs)]
            # box lower corners: near one of the root's voxels, or anywhere inside the volume
            lo = anchors[rng.integers(len(svs))] - rng.integers(0, span) if k % 2 == 0 else off + rng.integers(0, size)
            lo = np.clip(lo, off, off + size - 1)
            hi = lo + np.maximum(1, (span * rng.uniform(0.3, 1.2, 3)).astype(np.int64))
            c2 = self._l2_chunk(truth, svs)
            c_lo, c_hi = off + c2 * gc, off + (c2 + 1) * gc
            want = svs[np.all((c_lo < hi) & (c_hi > lo), axis=1)]
            got = np.sort(source.leaves(root, bounds=np.array([lo, hi])))
            np.testing.assert_array_equal(got, want, err_msg=f"root {root}, box {lo.tolist()}..{hi.tolist()}")
            # the same box at stop_layer=2: the L2 nodes of the root in those chunks
            l2 = source.leaves(root, stop_layer=2, bounds=np.array([lo, hi]))
            groups = sorted(tuple(np.sort(source.children(int(x))).tolist()) for x in l2.tolist())
            keep = set(want.tolist())
            assert groups == sorted(tuple(g.tolist()) for g in truth.l2_groups(root) if int(g[0]) in keep)
