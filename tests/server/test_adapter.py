"""The server is a thin adapter over the source interface (issue 14, item 4).

Two sides: the server's code reads nothing off its source but documented ``SegmentationSource``
members (so it cannot carry a second copy of the engine's logic), and its HTTP answers, asked
through the real caveclient, equal the dataset's truth (brute force over the volume and the edit
log) for a sample of supervoxels and timestamps.
"""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import crantseg_dask.server as server_pkg
from crantseg_dask.sources.base import SegmentationSource
from crantseg_dask.testing.conformance import check_times


def _source_reads(path: Path) -> set[str]:
    """Attribute names read off ``<anything>.source`` (and off local names bound to it) in ``path``."""
    tree = ast.parse(path.read_text())
    aliases = {n.targets[0].id for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
               and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Attribute) and n.value.attr == "source"}
    reads = set()
    for n in ast.walk(tree):
        if not isinstance(n, ast.Attribute):
            continue
        v = n.value
        if (isinstance(v, ast.Attribute) and v.attr == "source") or (isinstance(v, ast.Name) and v.id in aliases):
            reads.add(n.attr)
    return reads


def test_server_reads_only_documented_source_members():
    """Every attribute the server reads off its source is a public, documented member of
    ``SegmentationSource`` (no node table, edit log or LocalSource-only helper)."""
    files = sorted(Path(server_pkg.__file__).parent.glob("*.py"))
    reads = {name: _source_reads(f) for f in files for name in [f.name]}
    used = set().union(*reads.values())
    assert {"roots", "lineage", "l2_chunk_children", "valid_nodes"} <= used  # the scan sees the routes
    for f, names in reads.items():
        for attr in sorted(names):
            member = getattr(SegmentationSource, attr, None)
            assert member is not None and not attr.startswith("_"), f"server/{f} reads source.{attr}"
            assert inspect.getdoc(member), f"SegmentationSource.{attr} (read by server/{f}) has no docstring"


def test_server_holds_no_graph_logic():
    """No module of the server walks a graph or a table itself."""
    for f in Path(server_pkg.__file__).parent.glob("*.py"):
        text = f.read_text()
        for needle in ("nx.ancestors", "nx.descendants", "nx.DiGraph(", "searchsorted", "node_created_ms", ".edits", "root_created", ".predecessors",
                       ".operations"):
            assert needle not in text, f"server/{f.name} holds {needle!r}"


@pytest.fixture(scope="module")
def cg(cave_server):
    from caveclient import CAVEclient

    return CAVEclient(cave_server.datastack, server_address=cave_server.address, auth_token=cave_server.token,
                      write_server_cache=False).chunkedgraph


def test_sampled_answers_through_caveclient_equal_the_truth(cg, truth):
    """Roots (and L2 grouping), latest flags, validity and expiry of a random sample of
    supervoxels and roots at every check time, asked through caveclient, against the truth."""
    rng = np.random.default_rng(14)
    svs = rng.choice(truth.supervoxels, size=min(150, len(truth.supervoxels)), replace=False)
    roots = rng.choice(truth.all_roots, size=min(25, len(truth.all_roots)), replace=False)
    for t in check_times(truth):
        ms = int(np.floor(t.timestamp() * 1000))
        np.testing.assert_array_equal(cg.get_roots(svs, timestamp=t), truth.root_of(svs, t), err_msg=f"at {t}")
        l2 = np.asarray(cg.get_roots(svs, timestamp=t, stop_layer=2), np.uint64)
        np.testing.assert_array_equal(cg.get_roots(l2, timestamp=t), truth.root_of(svs, t))
        assert cg.is_latest_roots(roots, timestamp=t).tolist() == [truth.is_latest(r, t) for r in roots.tolist()]
        valid = cg.is_valid_nodes(roots, end_timestamp=t)
        assert valid.tolist() == [truth.created_ms[r] <= ms for r in roots.tolist()]
        born = roots[valid]
        if len(born):
            ends = cg.get_root_timestamps(born, latest=True, timestamp=t)
            for r, end in zip(born.tolist(), ends):
                s = truth.superseded_ms.get(r)
                want = (s if s is not None and s <= ms else ms) - 1  # caveclient takes 1 ms off
                assert round(end.timestamp() * 1000) == want, (r, t)
