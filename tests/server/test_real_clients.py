"""The unmodified caveclient and cloud-volume against the local server, checked against truth.

These exercise client helpers the ``cave`` source does not use (multi-call helpers, agglomerated
cloud-volume downloads, chunk mappings), so the server stays usable as a CAVE sandbox.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from crantseg_dask.testing.conformance import check_times


@pytest.fixture(scope="module")
def client(cave_server):
    from caveclient import CAVEclient

    return CAVEclient(cave_server.datastack, server_address=cave_server.address, auth_token=cave_server.token,
                      write_server_cache=False)


def test_pinned_version_client(cave_server, truth):
    from caveclient import CAVEclient

    c = CAVEclient(cave_server.datastack, server_address=cave_server.address, auth_token=cave_server.token,
                   write_server_cache=False, version=2)
    assert c.timestamp == truth.materialization(2)
    svs = truth.supervoxels[:50]
    np.testing.assert_array_equal(c.chunkedgraph.get_roots(svs), truth.root_of(svs, truth.materialization(2)))
    assert c.materialize.most_recent_version() == 4


def test_caveclient_helpers(client, truth):
    cg = client.chunkedgraph
    t = check_times(truth)[-1]
    for root in truth.all_roots[:12].tolist():
        assert set(cg.get_latest_roots(root, timestamp=t).tolist()) == truth.latest_roots(root, t)
        assert cg.get_root_timestamps([root])[0] == truth.created(root)
    newest = max(truth.created_ms, key=truth.created_ms.get)
    origins = set(cg.get_original_roots(newest).tolist())
    assert origins and all(truth.created_ms[r] == truth.ingest_ms for r in origins)
    # caveclient >= 8.1 maps the old root's layer-k nodes through roots_binary (any-layer IDs);
    # at layer 1 every node is a supervoxel, so the top suggestion is a latest root
    old = int(truth.all_roots[0])
    top, fraction = cg.suggest_latest_roots(old, timestamp=t, stop_layer=1, return_fraction_overlap=True)
    assert top in truth.latest_roots(old, t) and 0 < fraction <= 1
    assert cg.suggest_latest_roots(old, timestamp=t) > 0  # the default (n_layers - 4) runs too
    valid = cg.is_valid_nodes([int(truth.all_roots[0]), 424242])
    assert valid.tolist() == [True, False]
    assert cg.get_oldest_timestamp() == truth.operation_times()[0] - timedelta(milliseconds=500)
    first = truth.operation_times()[0]
    old, new = cg.get_delta_roots(first - timedelta(seconds=1), first)
    assert sorted(new.tolist()) == sorted(n["root"] for n in truth.operations[0]["new_roots"])
    assert sorted(old.tolist()) == sorted(truth.operations[0]["old_roots"] * len(new))
    details = cg.get_operation_details([1])
    assert details["1"]["user"] == str(truth.operations[0]["user"])


def test_cloudvolume_graphene(client, truth):
    # the data_dir is the server's HTTP storage: cloud-files sends the token as Basic credentials
    from cloudvolume import CloudVolume

    tok = client.auth.token
    cv = CloudVolume(client.info.segmentation_source(format_for="cloudvolume"), progress=False,
                     secrets={"token": tok, "user": "token", "password": tok})
    t = check_times(truth)[-1]
    off, size = truth.bounds(0)
    box = np.array([off, off + [64, 64, 16]])
    from cloudvolume import Bbox

    sv = np.asarray(cv.download(Bbox(*box), agglomerate=False))[..., 0]
    np.testing.assert_array_equal(sv, truth.volume(0)[:64, :64, :16])
    agg = np.asarray(cv.download(Bbox(*box), agglomerate=True, timestamp=int(t.timestamp())))[..., 0]
    np.testing.assert_array_equal(agg, truth.root_of(sv, t))
    root = int(np.unique(agg[agg > 0])[0])
    masked = np.asarray(cv.download(Bbox(*box), segids=[root], agglomerate=False))[..., 0]
    assert np.all((masked > 0) == (agg == root))
    l2 = int(client.chunkedgraph.get_leaves(root, stop_layer=2)[0])
    mapping = cv.get_chunk_mappings(l2)
    assert set(np.asarray(mapping[np.uint64(l2)]).tolist()) == set(client.chunkedgraph.get_children(l2).tolist())
