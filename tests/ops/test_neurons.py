"""neuron_to_segments: checklist items 46-48; expected counts from brute-force truth."""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import dask
import numpy as np
import pandas as pd
import pytest

from crantseg_dask.errors import InvalidInputError, InvalidLocationError
from crantseg_dask.ops.neurons import InvalidNeuronError, neuron_to_segments


def largest_roots(truth, n):
    """The ``n`` roots alive now with the most mip-0 voxels, smallest first (brute force)."""
    return truth.largest_roots(n)


@pytest.fixture(scope="module")
def roots_now(truth):
    return largest_roots(truth, 3)


_VOXELS = {}


def _sample(truth, root, n, rng):
    vox = _VOXELS.get(root)
    if vox is None:
        vox = _VOXELS[root] = truth.voxels_of(root)
    return (vox[rng.choice(len(vox), n)] + rng.random((n, 3))) * truth.resolution(0)


@pytest.fixture(scope="module")
def nodes(truth, roots_now):
    """Neuron 7: 12 nodes on root a, 5 on b, 3 on background; 3: 6 on c; 5: background only;
    11: 4 on a and 4 on b (a tie)."""
    rng = np.random.default_rng(2)
    a, b, c = roots_now
    off, _ = truth.bounds(0)
    bg = np.argwhere(truth.volume(0) == 0)
    bgp = (bg[rng.choice(len(bg), 10)] + off + 0.5) * truth.resolution(0)
    parts = [(7, _sample(truth, a, 12, rng)), (7, _sample(truth, b, 5, rng)), (7, bgp[:3]),
             (3, _sample(truth, c, 6, rng)), (5, bgp[3:7]), (11, _sample(truth, b, 4, rng)),
             (11, _sample(truth, a, 4, rng))]
    rows = [pd.DataFrame({"x": p[:, 0], "y": p[:, 1], "z": p[:, 2], "neuron": nid}) for nid, p in parts]
    df = pd.concat(rows, ignore_index=True)
    df["node_id"] = np.arange(len(df))
    return df.sample(frac=1.0, random_state=1)  # shuffled


def expected_counts(truth, df):
    svs = truth.supervoxel_at_nm(df[["x", "y", "z"]].to_numpy(), 0)
    roots = truth.root_of(svs, datetime.now(timezone.utc)).astype(np.int64)
    return Counter((int(r), n) for r, n in zip(roots, df["neuron"]) if r != 0)


# -- 46: the overlap matrix ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [None, 3])
def test_matrix(spec, truth, nodes, k):
    with dask.config.set({"crantseg.partition-size": k} if k else {}):
        m = neuron_to_segments(nodes, dataset=spec)
    counts = expected_counts(truth, nodes)
    assert m.index.name == "root_id" and m.columns.name == "id"
    assert m.index.tolist() == sorted({r for r, _ in counts})
    assert 0 not in m.index
    assert m.columns.tolist() == sorted({n for _, n in counts}) == [3, 7, 11]  # 5 is all background
    for r in m.index:
        for n in m.columns:
            want = counts.get((r, n))
            got = m.loc[r, n]
            assert (np.isnan(got) if want is None else got == want), (r, n)
    assert m.isna().any().any() and m.dtypes.eq(np.float64).all()


# -- 47: the short summary -----------------------------------------------------------------------
def test_summary(spec, truth, nodes, roots_now):
    s = neuron_to_segments(nodes, short=True, dataset=spec)
    counts = expected_counts(truth, nodes)
    assert list(s.columns) == ["id", "match", "confidence"]
    assert s["id"].tolist() == [3, 7, 11]
    for _, row in s.iterrows():
        col = sorted(((c, r) for (r, n), c in counts.items() if n == row["id"]), key=lambda t: (-t[0], t[1]))
        top, second = col[0][0], (col[1][0] if len(col) > 1 else 0)
        assert row["match"] == col[0][1]                   # ties go to the smallest root
        assert row["confidence"] == pytest.approx((top - second) / sum(c for c, _ in col))
    assert s.set_index("id").loc[3, "confidence"] == 1.0  # one root only
    assert s.set_index("id").loc[11, "confidence"] == 0.0  # a 4:4 tie
    assert s.set_index("id").loc[11, "match"] == min(roots_now[0], roots_now[1])


def test_empty_matrix(spec, nodes):
    bg = nodes[nodes["neuron"] == 5]
    m = neuron_to_segments(bg, dataset=spec)
    assert m.empty
    s = neuron_to_segments(pd.concat([bg, bg.assign(neuron=9)]), short=True, dataset=spec)
    assert s["id"].tolist() == [5, 9]
    assert s["match"].tolist() == [None, None]
    assert s["confidence"].tolist() == [0.0, 0.0]


def test_voxel_coordinates(spec, truth, nodes):
    vox = nodes.assign(x=nodes.x / 8, y=nodes.y / 8, z=nodes.z / 42)
    m = neuron_to_segments(vox, coordinates="voxel", dataset=spec)
    assert m.equals(neuron_to_segments(nodes, dataset=spec))


def test_timestamp_mat(spec, truth, nodes):
    m = neuron_to_segments(nodes, dataset=spec, timestamp="mat")
    svs = truth.supervoxel_at_nm(nodes[["x", "y", "z"]].to_numpy(), 0)
    roots = truth.root_of(svs, truth.materialization())
    assert m.index.tolist() == sorted(set(roots[roots > 0].astype(np.int64).tolist()))


# -- 48: navis neurons and other types -------------------------------------------------------------
def _tree_neuron(navis, g, nid):
    """A real navis TreeNeuron: the nodes as one chain (parent = previous node)."""
    n = len(g)
    table = pd.DataFrame({"node_id": np.arange(1, n + 1), "parent_id": np.arange(0, n) - (np.arange(n) == 0) * 1,
                          "x": g["x"].to_numpy(), "y": g["y"].to_numpy(), "z": g["z"].to_numpy()})
    return navis.TreeNeuron(table, id=nid)


def test_navis_neurons(spec, truth, nodes):
    navis = pytest.importorskip("navis")  # in the test extra
    neurons = [_tree_neuron(navis, g, nid) for nid, g in nodes.groupby("neuron")]
    from_list = neuron_to_segments(navis.NeuronList(neurons), dataset=spec)
    assert from_list.equals(neuron_to_segments(nodes, dataset=spec))
    counts = expected_counts(truth, nodes)
    for (r, n), c in counts.items():
        assert from_list.loc[r, n] == c
    one = neuron_to_segments(neurons[1], short=True, dataset=spec)  # TreeNeuron = 1-element list
    both = neuron_to_segments(navis.NeuronList([neurons[1]]), short=True, dataset=spec)
    assert one.equals(both) and one["id"].tolist() == [neurons[1].id]


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), [[0, 0, 0]], "neuron", 42])
def test_other_types_raise_assertion(local_spec, bad):
    with pytest.raises(AssertionError, match="node table"):
        neuron_to_segments(bad, dataset=local_spec)
    with pytest.raises(InvalidNeuronError):
        neuron_to_segments(bad, dataset=local_spec)


def test_bad_tables(local_spec, nodes):
    with pytest.raises(InvalidInputError, match="neuron"):
        neuron_to_segments(nodes.drop(columns="neuron"), dataset=local_spec)
    with pytest.raises(InvalidInputError, match="'z'"):
        neuron_to_segments(nodes.drop(columns="z"), dataset=local_spec)
    with pytest.raises(InvalidLocationError, match="finite"):
        neuron_to_segments(nodes.assign(x=np.nan), dataset=local_spec)
    with pytest.raises(InvalidInputError, match="unit"):
        neuron_to_segments(nodes, coordinates="miles", dataset=local_spec)
    m = neuron_to_segments(nodes.rename(columns={"neuron": "skid"}), neuron_column="skid",
                           dataset=local_spec)
    assert m.columns.tolist() == [3, 7, 11]
