"""The values the ``Examples`` sections show were recorded from the engine: here each one is checked
against the truth (``Truth``: the stored volume and the replayed edit log; ``SnapTruth``: the
snapping oracle). Inputs and recorded outputs are read from the docstrings themselves, so a
re-recorded example is checked again; a changed example input fails loudly (``literal``)."""
from __future__ import annotations

import ast
import doctest
import re
from datetime import datetime, timezone

import numpy as np
import pytest

from crantseg_dask.dataset.truth import Truth
from crantseg_dask.dataset.truth_snap import SnapTruth
from crantseg_dask.ops import cutouts, lineage, locations, mapping, snapping, updates, validity, voxels

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def truth():
    """Truth of the ``tiny`` preset the examples run on (``dataset="tiny"``)."""
    from crantseg_dask.sources.resolve import local_dataset_path

    return Truth(local_dataset_path("tiny"))


def _examples(func):
    (test,) = [t for t in doctest.DocTestFinder().find(func) if t.examples]
    return test.examples


def recorded(func, snippet: str) -> str:
    """The recorded output of ``func``'s example whose source contains ``snippet``."""
    for e in _examples(func):
        if snippet in e.source:
            return e.want
    raise AssertionError(f"{func.__name__}: no example with {snippet!r}")


def literal(func, name: str):
    """The literal assigned to ``name`` in ``func``'s examples (``name = [...]``)."""
    for e in _examples(func):
        tree = ast.parse(e.source)
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
                return ast.literal_eval(node.value)
    raise AssertionError(f"{func.__name__}: no literal {name!r}")


def numbers(text: str) -> list:
    """Every number of a recorded output (``dtype=...`` removed), ints exact."""
    text = re.sub(r"dtype=\w+|dtype\('\w+'\)", "", text)
    return [float(t) if "." in t or "e" in t else int(t) for t in re.findall(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?", text)]


def test_locations(truth):
    locs = np.array(literal(locations.locs_to_segments, "locs"), float)
    sv = truth.supervoxel_at_nm(locs, 0)
    assert numbers(recorded(locations.locs_to_segments, "# now")) == truth.root_of(sv, NOW).tolist()
    assert numbers(recorded(locations.locs_to_segments, 'timestamp="mat"')) == \
        truth.root_of(sv, truth.materialization()).tolist()
    assert numbers(recorded(locations.locs_to_segments_graph, ".compute()")) == \
        truth.root_of(sv, truth.materialization()).tolist()
    f = locations.locs_to_supervoxels
    assert numbers(recorded(f, "[[4232, 4904, 1701], [0, 0, 0]]")) == \
        truth.supervoxel_at_nm([[4232, 4904, 1701], [0, 0, 0]], 0).tolist()
    viewer = np.array([[529, 613, 40]]) * [8, 8, 42]
    assert numbers(recorded(f, 'coordinates="voxel"')) == truth.supervoxel_at_nm(viewer, 0).tolist()
    assert numbers(recorded(f, "mip=1")) == truth.supervoxel_at_nm([[4232, 4904, 1701]], 1).tolist()
    assert numbers(recorded(locations.locs_to_supervoxels_graph, "svs.compute()")) == sv.tolist()


def test_snapping(truth):
    oracle = SnapTruth(truth)
    f = snapping.snap_to_id
    locs, root = np.array(literal(f, "locs"), float), literal(f, "root")
    assert numbers(recorded(f, "locs_to_segments(locs,")) == truth.root_of(truth.supervoxel_at_nm(locs), NOW).tolist()
    xyz, _, status = oracle.table(locs, root)
    searched = int(np.isin(status, ["snapped", "not_found"]).sum())
    failed = int((status == "not_found").sum())
    want = [searched, len(locs), failed] + xyz.ravel().tolist()
    assert numbers(recorded(f, "snap_to_id(locs, root, dataset")) == want
    xyz0, _, _ = oracle.table(locs, root, snap_zero=True)
    _, roots = oracle.lookup(xyz0, NOW)
    assert numbers(recorded(f, "locs_to_segments(snapped")) == roots.tolist()
    assert (roots == root).all()
    g = snapping.snap_to_id_graph
    assert numbers(recorded(g, ".compute()")) == oracle.table(np.array([[3584., 2704., 504.], [3504., 2784., 420.]]),
                                                               root)[0].ravel().tolist()
    # the table: index, x, y, z, distance (6 decimals), status per line
    t = snapping.snap_table
    rows = [line.split() for line in recorded(t, "snap_table(df").splitlines()[1:]]
    src = next(e.source for e in _examples(t) if "pd.DataFrame" in e.source)
    d = ast.literal_eval(src[src.index("{"):src.rindex("}") + 1])
    locs = np.array([d["x"], d["y"], d["z"]], float).T
    xyz, dist, status = oracle.table(locs, np.array(d["pre_root"], np.uint64), snap_zero=True)
    for row, p, r, s in zip(rows, xyz, dist, status):
        assert [float(v) for v in row[1:4]] == p.tolist() and float(row[4]) == round(r, 6) and row[5] == s


def test_mapping(truth):
    svs = literal(mapping.supervoxels_to_roots, "svs")
    f = mapping.supervoxels_to_roots
    mat = truth.root_of(svs, truth.materialization()).tolist()
    assert numbers(recorded(f, "# at the latest materialization")) == mat
    assert numbers(recorded(f, "timestamp=None")) == truth.root_of(svs, NOW).tolist()
    assert numbers(recorded(mapping.supervoxels_to_roots_graph, ".compute()")) == truth.root_of(svs, NOW).tolist()
    assert numbers(recorded(mapping.roots_graph, ".compute()")) == \
        truth.root_of(svs, datetime(2025, 6, 27, tzinfo=timezone.utc)).tolist()
    k = np.array([[72198469099454522, 0], [72198469099454522, 72198469032345652]], np.uint64)
    assert numbers(recorded(mapping.roots_kernel, "roots_kernel(")) == \
        truth.root_of(k, datetime(2025, 8, 1, tzinfo=timezone.utc)).ravel().tolist()
    counts = recorded(mapping.roots_to_supervoxels, "len(svs)")
    got = dict(zip(numbers(counts)[::2], numbers(counts)[1::2]))
    assert got == {r: len(truth.leaves(r)) for r in got}
    first = numbers(recorded(mapping.roots_to_supervoxels, "[:3]"))
    assert first == truth.leaves(576460752373423816)[:3].tolist()
    for fn in (mapping.leaves_kernel, mapping.roots_to_supervoxels_graph):
        text = recorded(fn, "len(svs)")
        got = dict(zip(numbers(text)[::2], numbers(text)[1::2]))
        assert got and got == {r: len(truth.leaves(r)) for r in got}


def test_updates_lineage_validity(truth):
    ids = [576460752373423813, 576460752373423807, 0]
    latest = [truth.is_latest(i, NOW) if i else False for i in ids]
    assert recorded(updates.is_latest_roots, "is_latest_roots([576460752373423813, 576460752373423807, 0]") \
        .split("[")[1].split("]")[0].replace(" ", "").split(",") == [str(v) for v in latest]
    mat = [truth.is_latest(i, truth.materialization()) for i in ids[:2]]
    assert recorded(updates.is_latest_roots, 'timestamp="mat"').split("[")[1].split("]")[0].replace(" ", "") \
        .split(",") == [str(v) for v in mat]
    # update_ids: a stale root goes to the current root holding most of its supervoxels
    old = 576460752373423807
    now_roots = truth.root_of(truth.leaves(old), NOW)
    values, counts = np.unique(now_roots[now_roots != 0], return_counts=True)
    got = numbers(recorded(updates.update_ids, "update_ids([576460752373423807"))
    assert got[1:3] == [old, int(values[np.argmax(counts)])]
    # lineage: every ancestor and descendant of the root, and the edges among them
    root = 576460752373423807
    up, down, todo = set(), set(), [root]
    while todo:
        r = todo.pop()
        for p in truth.predecessors(r):
            if p not in up:
                up.add(p), todo.append(p)
    todo = [root]
    while todo:
        r = todo.pop()
        for s in truth.successors(r):
            if s not in down:
                down.add(s), todo.append(s)
    nodes = up | down | {root}
    edges = {(o, n) for o, n, _ in truth.lineage if o in nodes and n in nodes}
    assert numbers(recorded(lineage.get_lineage_graph, "number_of_nodes")) == [len(nodes), len(edges)]
    got = numbers(recorded(lineage.get_lineage_graph, "predecessors"))
    assert got == truth.predecessors(root) + truth.successors(root)
    # find_common_time: both roots alive at the recorded time; the other pair never coexisted
    when = eval(recorded(lineage.find_common_time, "576460752373423796]"), {"datetime": __import__("datetime")})
    assert truth.is_latest(576460752373423725, when) and truth.is_latest(576460752373423796, when)
    a, b = 576460752373423807, 576460752373423813
    assert truth.superseded(a) <= truth.created(b)
    assert "never existed at the same time" in recorded(lineage.find_common_time, f"[{a}, {b}]")
    # validity: roots and supervoxels of the dataset
    assert recorded(validity.is_valid_root, "is_valid_root(576460752373423560, ").strip() == \
        str(576460752373423560 in truth.all_roots.tolist())
    assert recorded(validity.is_valid_supervoxel, '"72198469099454522"').strip() == \
        str(72198469099454522 in truth.supervoxels.tolist())


def test_voxels_and_cutouts(truth):
    root = 576460752373423816
    want = truth.voxels_of(root, 1)
    sv = truth.supervoxel_at(want, 1)
    assert numbers(recorded(voxels.get_voxels, "len(voxels)")) == [len(want), *want[0].tolist(), int(sv[0])]
    assert numbers(recorded(voxels.get_voxels_graph, "len(voxels)")) == [len(want), *want[:2].ravel().tolist()]
    # the cutout: round(nm / resolution) at mip 1, its supervoxels' roots now
    box = np.round(np.array([[2000, 3000, 500], [2800, 3400, 700]]) / truth.resolution(1)).astype(int)
    res = truth.resolution(1).astype(int)
    want = [*(box[1] - box[0]).tolist(), *res.tolist(), *(box[0] * res).tolist()]
    assert numbers(recorded(cutouts.get_segmentation_cutout, "cutout.shape")) == want
    off, _ = truth.bounds(1)
    block = truth.volume(1)[tuple(slice(a, b) for a, b in zip(box[0] - off, box[1] - off))]
    assert numbers(recorded(cutouts.get_segmentation_cutout_graph, "np.unique")) == \
        np.unique(truth.root_of(np.unique(block), NOW)).tolist()


def test_neurons(truth):
    from crantseg_dask.ops import neurons

    f = neurons.neuron_to_segments
    src = next(e.source for e in _examples(f) if "pd.DataFrame" in e.source)
    d = ast.literal_eval(src[src.index("{"):src.rindex("}") + 1])
    roots = truth.root_of(truth.supervoxel_at_nm(np.array([d["x"], d["y"], d["z"]], float).T), NOW)
    counts: dict = {}
    for r, n in zip(roots.tolist(), d["neuron"]):
        if r:
            counts[(r, n)] = counts.get((r, n), 0) + 1
    lines = recorded(f, "neuron_to_segments(nodes, dataset").splitlines()
    ids = [int(v) for v in lines[0].split()[1:]]
    table = {}
    for line in lines[2:]:
        root, *vals = line.split()
        for n, v in zip(ids, vals):
            if v != "NaN":
                table[(int(root), n)] = float(v)
    assert table == {k: float(v) for k, v in counts.items()}
