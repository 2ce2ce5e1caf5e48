"""get_lineage_graph / find_common_time: checklist 42-45 against the truth's edit log."""
from datetime import datetime, timezone

import networkx as nx
import numpy as np
import pytest

from crantseg_dask.ops.lineage import find_common_time, get_lineage_graph, remap_operation_ids
from crantseg_dask.sources import open_source


def truth_graph(truth):
    g = nx.DiGraph()
    for old, new, op in truth.lineage:
        g.add_edge(old, new, op=op)
    return g


def current(truth, n=None):
    now = truth.operation_times()[-1]
    return [r for r in truth.all_roots.tolist() if truth.is_latest(r, now)][:n]


def stale(truth):
    now = truth.operation_times()[-1]
    return [r for r in truth.all_roots.tolist() if not truth.is_latest(r, now)]


@pytest.mark.parametrize("pick", [0, 1, -1])
def test_lineage_graph_c42(spec, truth, pick):
    tg = truth_graph(truth)
    root = [stale(truth)[5], stale(truth)[20], current(truth)[-1]][pick]
    g = get_lineage_graph(root, dataset=spec)
    assert isinstance(g, nx.DiGraph) and root in g
    # as PyChunkedGraph (and so crantpy) answers: the root, its ancestors and descendants
    family = {root} | nx.ancestors(tg, root) | nx.descendants(tg, root)
    assert set(g.nodes) == family
    assert set(g.edges) == set(tg.subgraph(family).edges)  # old -> new
    for n, d in g.nodes(data=True):
        assert d["timestamp"] == pytest.approx(truth.created(n).timestamp())
        preds = list(g.predecessors(n))
        if preds:  # the operation that created the node
            assert d["operation_id"] == tg.edges[preds[0], n]["op"]
        else:
            assert "operation_id" not in d


def test_lineage_graph_inputs(spec, truth):
    r = stale(truth)[0]
    assert set(get_lineage_graph(str(r), dataset=spec).nodes) == set(get_lineage_graph(r, dataset=spec).nodes)
    with pytest.raises(ValueError, match="is not a valid root ID"):
        get_lineage_graph(int(truth.supervoxels[0]), dataset=spec)
    with pytest.raises((KeyError, OSError)):
        get_lineage_graph(int(truth.all_roots.max()) + 1000, dataset=spec)


def test_remap_on_plain_graph():
    g = nx.DiGraph()
    g.add_node(1, operation_id=7)
    g.add_node(2, operation_id=7)
    g.add_edges_from([(1, 3), (2, 3)])
    out = remap_operation_ids(g)
    assert dict(out.nodes(data="operation_id")) == {1: None, 2: None, 3: 7}
    assert g.nodes[1]["operation_id"] == 7  # input untouched


def test_common_time_stale_c43(spec, truth):
    old = stale(truth)[10]
    death = truth.superseded(old)
    others = [r for r in truth.all_roots.tolist()
              if truth.created(r) < death and (truth.superseded(r) is None or truth.superseded(r) > death)
              and r != old][:3]
    ids = [old] + others
    t = find_common_time(ids, dataset=spec)
    birth = max(truth.created(r) for r in ids)
    end = min([death] + [truth.superseded(r) for r in others if truth.superseded(r)])
    assert t.tzinfo is not None and t.utcoffset().total_seconds() == 0
    assert t == birth + (end - birth) / 2
    assert all(truth.is_latest(r, t) for r in ids)  # they really co-exist at t


def test_never_coexisted_c44(spec, truth):
    old = stale(truth)[3]
    new = truth.successors(old)[0]
    with pytest.raises(ValueError, match=r"^Given root IDs never existed at the same time\.$"):
        find_common_time([old, new], dataset=spec)
    first = truth.operation_times()[0]
    gone = [r for r in stale(truth) if truth.superseded(r) == first][0]
    later = [r for r in current(truth) if truth.created(r) > first][0]
    with pytest.raises(ValueError, match="never existed at the same time"):
        find_common_time([gone, later], dataset=spec)


def test_all_current_no_lineage_c45(spec, truth, monkeypatch):
    src = open_source(spec)
    monkeypatch.setattr(src, "lineage", lambda *a, **k: pytest.fail("lineage requested"))
    ids = current(truth, 4)
    before = datetime.now(timezone.utc)
    t = find_common_time(ids, dataset=spec)
    after = datetime.now(timezone.utc)
    birth = max(truth.created(r) for r in ids)
    assert birth + (before.replace(microsecond=0) - birth) / 2 <= t <= birth + (after - birth) / 2


def test_common_time_bad_input(local_spec, truth):
    with pytest.raises(ValueError):
        find_common_time([], dataset=local_spec)
    with pytest.raises(ValueError, match="Invalid root IDs"):
        find_common_time([truth.supervoxels[0]], dataset=local_spec)
    r = current(truth, 1)[0]
    assert find_common_time(r, dataset=local_spec) > truth.created(r)  # a scalar is accepted
    np.testing.assert_equal(find_common_time([r, r], dataset=local_spec) > truth.created(r), True)
