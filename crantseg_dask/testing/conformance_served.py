"""Conformance checks of the source methods the local CAVE server answers from (issue 14).

``SourceConformance`` inherits these, so every source (``local``, and ``cave`` through the real
caveclient and cloud-volume against the local server) is held to the same truth: the recorded
edit log, the supervoxel list and positions, and the L2 groups brute-forced from the volume
(``crantseg_dask.dataset.truth``), never another source's answer.
"""
from __future__ import annotations

from datetime import timedelta

import networkx as nx
import numpy as np
import pytest

from ..errors import InvalidInputError

__all__ = ["ServedAnswersConformance", "check_times"]


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


def _times(truth) -> list:
    return check_times(truth)


def _ms(t) -> int:
    return int(np.floor(t.timestamp() * 1000))


class ServedAnswersConformance:
    """Checks of ``valid_nodes``, ``root_expired``, ``delta_root_lists``, ``past_id_mapping``,
    ``operation_details``, ``oldest_timestamp``, ``l2_chunk_children``, bounded ``l2_graph`` and
    ``graphene_info`` against ``Truth``."""

    def test_valid_nodes(self, source, truth):
        roots, svs = truth.all_roots, truth.supervoxels[::5]
        unknown = np.array([int(source.meta.layout.encode(8, 0, 0, 0, 123_456_789))], np.uint64)
        ids = np.concatenate([roots, svs, unknown]).astype(np.uint64)
        for t in _times(truth)[::2]:
            want = [truth.created_ms[r] <= _ms(t) for r in roots.tolist()]
            want += [truth.ingest_ms <= _ms(t)] * len(svs) + [False]  # supervoxels exist from ingest
            np.testing.assert_array_equal(source.valid_nodes(ids, t), want, err_msg=f"at {t}")

    def test_root_expired(self, source, truth):
        roots = truth.all_roots
        for t in _times(truth)[::2]:
            want = []
            for r in roots.tolist():
                s = truth.superseded_ms.get(r)
                want.append((s if s is not None and s <= _ms(t) else _ms(t)) / 1000)
            np.testing.assert_allclose(source.root_expired(roots, t), want, atol=1e-6, err_msg=f"at {t}")

    def test_delta_root_lists(self, source, truth):
        ops = truth.operation_times()
        for past, future in [(ops[0], ops[0]), (ops[0] - timedelta(seconds=1), ops[len(ops) // 2]),
                             (ops[0], ops[-1] + timedelta(days=1)), (ops[0] - timedelta(days=9), ops[0] - timedelta(days=8))]:
            old, new = source.delta_root_lists(past, future)
            want_old, want_new = [], []
            for op in truth.operations:  # the edit log, in time order
                if _ms(past) <= op["ts_ms"] <= _ms(future):
                    for n in op["new_roots"]:
                        want_new.append(n["root"])
                        want_old += op["old_roots"]
            assert old.dtype == np.uint64 and new.dtype == np.uint64
            assert old.tolist() == want_old and new.tolist() == want_new, (past, future)

    def test_past_id_mapping(self, source, truth):
        """Without a past time: each root's original (ingest) ancestors; with one between edits: the
        ancestors alive then (the truth's backward sweep of the edit log), itself if born before."""
        full = nx.DiGraph()
        full.add_edges_from((o, n) for o, n, _ in truth.lineage)
        roots = truth.all_roots[::4].tolist()
        past_map, future_map = source.past_id_mapping(np.array(roots, np.uint64))
        assert list(past_map) == roots
        for r in roots:
            orig = sorted(a for a in nx.ancestors(full, r) if truth.created_ms[a] == truth.ingest_ms) if r in full else []
            assert past_map[r] == (orig or [r]), r
        assert set(future_map) <= {p for v in past_map.values() for p in v}
        t = truth.operation_times()[len(truth.operations) // 2] - timedelta(milliseconds=500)
        past_map, _ = source.past_id_mapping(np.array(roots, np.uint64), t)
        for r in roots:
            want = sorted(truth.latest_roots(r, t)) if t < truth.created(r) else [r]
            assert past_map[r] == want, (r, t)

    def test_operation_details(self, source, truth):
        ids = [op["id"] for op in truth.operations[::5]] + [10 ** 9]
        got = source.operation_details(ids)
        assert list(got) == ids[:-1]
        for op in truth.operations[::5]:
            d = got[op["id"]]
            assert d["user"] == str(op["user"]) and d["roots"] == [n["root"] for n in op["new_roots"]]
            assert d["timestamp"] == truth.operation_times()[truth.operations.index(op)]
            edges = "added_edges" if op["kind"] == "merge" else "removed_edges"
            assert d[edges] == op[edges]

    def test_oldest_timestamp(self, source, truth):
        assert source.oldest_timestamp() == min(truth.operation_times()) - timedelta(milliseconds=500)

    def test_l2_chunk_children(self, source, truth):
        """The L2 nodes of a chunk at T: the L2 groups (brute force) of the roots alive at T whose
        supervoxels lie in that chunk."""
        layout = source.meta.layout
        chunks = np.unique(truth.sv_chunk, axis=0)
        rng = np.random.default_rng(0)
        for t in _times(truth)[2::5]:
            for c in chunks[rng.choice(len(chunks), 3, replace=False)].tolist():
                got = source.l2_chunk_children(int(layout.encode(2, *c, 0)), t)
                want = {tuple(g.tolist()) for r in truth.roots_at(t) for g in truth.l2_groups(r)
                        if tuple(truth.chunk_of(g[:1], 2)[0].tolist()) == tuple(c)}
                assert {tuple(np.sort(v).tolist()) for v in got.values()} == want, (c, t)
                assert np.all(layout.layer(np.array(list(got), np.uint64)) == 2)
        with pytest.raises(InvalidInputError, match="not a layer-2"):
            source.l2_chunk_children(int(truth.all_roots[0]), _times(truth)[-1])

    def test_l2_graph_within_bounds(self, source, truth):
        """Edges whose two L2 nodes' chunk boxes overlap the box (truth: L2 groups and edges
        brute-forced from the volume, chunks from supervoxel positions)."""
        off, size = truth.bounds(0)
        gc = np.asarray(truth.params.graph_chunk)
        roots = sorted(truth.all_roots.tolist(), key=lambda r: (-len(truth.l2_edges(r)), r))[:4]
        partial = 0
        for k, root in enumerate(roots):  # a box of about one chunk around one of the root's voxels
            svs = truth.leaves(root)
            a = truth.sv_anchor[np.searchsorted(truth.supervoxels, svs[(k * 7919) % len(svs)])]
            lo = np.clip(a - gc // 2, off + 1, off + size - 1)
            box = np.stack([lo, np.clip(a + gc // 2 + 1, lo + 1, off + size)])
            groups = truth.l2_groups(root)
            near = {k for k, g in enumerate(groups)
                    if np.all((b := truth.chunk_box(truth.node_chunk(g, 2), 2))[0] < box[1]) and np.all(b[1] > box[0])}
            index = truth.l2_index(root)
            edges = source.l2_graph(root, bounds=box)
            got = {tuple(sorted((index[int(source.children(int(a))[0])], index[int(source.children(int(b))[0])])))
                   for a, b in edges.tolist()}
            want = {e for e in truth.l2_edges(root) if e[0] in near and e[1] in near}
            assert got == want, (root, box.tolist())
            partial += 0 < len(want) < len(truth.l2_edges(root))
        assert partial  # the box kept some edges and dropped others

    def test_graphene_info(self, source, truth):
        info = source.graphene_info()
        # the truth's scales, plus each scale's "sharding" spec when the layer is sharded
        assert [{k: v for k, v in s.items() if k != "sharding"} for s in info["scales"]] \
            == truth.segmentation_info["scales"]
        assert info["graph"]["n_layers"] == 8 and list(info["graph"]["chunk_size"]) == list(truth.params.graph_chunk)
        assert info["data_dir"] and info["chunks_start_at_voxel_offset"] is True
