"""The local CAVE server's routes, formats, auth and refusals (plain requests, no caveclient)."""
from __future__ import annotations

import gzip
import json
import logging
import re
from datetime import datetime, timezone

import numpy as np
import pytest
import requests

from crantseg_dask.server import ServedDataset, serve_in_thread
from crantseg_dask.testing.conformance import check_times

MAT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture(scope="module")
def api(cave_server):
    """GET/POST helpers with the token; never follow redirects."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {cave_server.token}"

    def call(method, path, **kw):
        return s.request(method, cave_server.address + path, allow_redirects=False, timeout=10, **kw)

    call.v1 = f"/segmentation/api/v1/table/{cave_server.table}"
    call.m3 = f"/materialize/api/v3/datastack/{cave_server.datastack}"
    return call


def test_versions_and_construction_routes(api, cave_server, tiny_path):
    assert api("GET", "/info/version").json() == "4.3.1"
    assert api("GET", "/segmentation/api/version").json() == "2.21.1"
    assert api("GET", "/segmentation/api/versions").json() == [0, 1]
    assert api("GET", "/materialize/version").json() == "5.13.0"
    assert api("GET", "/materialize/api/versions").json() == [2, 3]
    assert api("GET", "/info/api/v2/datastacks").json() == [cave_server.datastack]
    ds = api("GET", f"/info/api/v2/datastack/full/{cave_server.datastack}").json()
    assert ds["local_server"] == cave_server.address
    assert ds["segmentation_source"] == f"graphene://{cave_server.address}/segmentation/table/{cave_server.table}"
    assert {"name", "id"} <= set(ds["aligned_volume"])
    assert [ds[f"viewer_resolution_{a}"] for a in "xyz"] == [8.0, 8.0, 42.0]


def test_graphene_info(api, cave_server, tiny_path):
    info = api("GET", f"/segmentation/table/{cave_server.table}/info").json()
    seg = json.loads((tiny_path / "segmentation" / "info").read_text())
    assert info["scales"] == seg["scales"]
    assert info["data_dir"] == f"{cave_server.address}/storage/segmentation"
    assert info["app"] == {"supported_api_versions": [0, 1]}
    assert info["chunks_start_at_voxel_offset"] is True
    assert info["graph"]["n_layers"] == 8 and set(info["graph"]["spatial_bit_masks"]) == {str(i) for i in range(1, 9)}
    assert "redirect" not in info


def test_roots_binary_little_endian_and_gzip(api, truth):
    t = check_times(truth)[-1]
    ids = np.concatenate([truth.supervoxels, [0, 77]]).astype("<u8")
    want = truth.root_of(ids, t)
    url = f"{api.v1}/roots_binary?timestamp={t.timestamp()}"
    plain = api("POST", url, data=ids.tobytes())
    assert plain.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(plain.content, "<u8"), want)
    zipped = api("POST", url, data=gzip.compress(ids.tobytes()), headers={"Content-Encoding": "gzip"})
    assert zipped.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(zipped.content, "<u8"), want)
    assert api("POST", url, data=b"").content == b""
    assert api("POST", url, data=b"123").status_code == 400
    assert api("POST", url + "&stop_layer=99", data=ids.tobytes()).status_code == 400
    assert api("POST", f"{api.v1}/roots_binary?timestamp=yesterday", data=ids.tobytes()).status_code == 400
    js = api("POST", f"{api.v1}/roots?timestamp={t.timestamp()}", data=json.dumps({"node_ids": ids.tolist()}))
    assert js.json()["root_ids"] == want.tolist()


def test_json_bodies_without_content_type_and_on_get(api, truth):
    roots = truth.all_roots[:5].tolist()
    t = check_times(truth)[-1]
    r = api("POST", f"{api.v1}/is_latest_roots?timestamp={t.timestamp()}", data=json.dumps({"node_ids": roots}))
    assert r.json()["is_latest"] == [truth.is_latest(x, t) for x in roots]
    r = api("GET", f"{api.v1}/valid_nodes", data=json.dumps({"node_ids": roots + [12345]}))
    assert r.json()["valid_roots"] == roots
    r = api("GET", f"{api.v1}/past_id_mapping", data=json.dumps({"root_ids": roots[:1]}))
    assert r.json()["past_id_map"] == {str(roots[0]): [roots[0]]}
    assert api("POST", f"{api.v1}/is_latest_roots", data=b"{not json").status_code == 400


def test_lineage_uses_links_and_ignores_unknown_parameters(api, truth):
    late = int(truth.all_roots[-1])
    r = api("POST", f"{api.v1}/lineage_graph_multiple?name=timestamp_future", data=json.dumps({"root_ids": [late]}))
    d = r.json()
    assert "links" in d and "edges" not in d
    assert {(e["source"], e["target"]) for e in d["links"]} <= {(o, n) for o, n, _ in truth.lineage}
    for node in d["nodes"]:
        assert node["timestamp"] == truth.created(node["id"]).timestamp()


def test_lineage_follows_pychunkedgraph_frontiers(api, truth):
    """Like PCG's lineage_graph: ancestors walked backwards, descendants forwards, no siblings."""
    import networkx as nx

    full = nx.DiGraph()
    full.add_edges_from((o, n) for o, n, _ in truth.lineage)
    with_siblings = 0
    for root in sorted(full.nodes):
        d = api("POST", f"{api.v1}/lineage_graph_multiple", data=json.dumps({"root_ids": [root]})).json()
        want = nx.ancestors(full, root) | nx.descendants(full, root) | {root}
        assert {n["id"] for n in d["nodes"]} == want
        assert {(e["source"], e["target"]) for e in d["links"]} == set(full.subgraph(want).edges)
        with_siblings += len(nx.node_connected_component(full.to_undirected(), root)) > len(want)
    assert with_siblings  # the dataset has histories where the difference matters


def test_other_chunkedgraph_routes(api, truth):
    root = int(truth.all_roots[-1])
    leaves = api("GET", f"{api.v1}/node/{root}/leaves").json()["leaf_ids"]
    assert leaves == truth.leaves(root).tolist()
    sv = int(truth.supervoxels[0])
    t = check_times(truth)[-1]
    assert api("GET", f"{api.v1}/node/{sv}/root?timestamp={t.timestamp()}").json()["root_id"] == int(truth.root_of([sv], t)[0])
    many = api("POST", f"{api.v1}/node/leaves_many", json={"node_ids": [root]}).json()
    assert many == {str(root): leaves}
    ts = api("POST", f"{api.v1}/root_timestamps?latest=False", data=json.dumps({"node_ids": [root]})).json()
    assert ts["timestamp"] == [truth.created(root).timestamp()]
    ops = api("GET", f"{api.v1}/operation_details?operation_ids=%5B1%2C+2%5D").json()
    assert sorted(ops) == ["1", "2"]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00$", ops["1"]["timestamp"])
    assert ops["1"]["roots"] == [n["root"] for n in truth.operations[0]["new_roots"]]
    first = truth.operation_times()[0].timestamp()
    delta = api("GET", f"{api.v1}/delta_roots?timestamp_past={first}&timestamp_future={first}").json()
    assert delta["new_roots"] == [n["root"] for n in truth.operations[0]["new_roots"]]
    assert api("GET", f"{api.v1}/delta_roots").status_code == 400
    iso = api("GET", f"{api.v1}/oldest_timestamp").json()["iso"]
    assert datetime.fromisoformat(iso) < truth.operation_times()[0]
    l2 = api("GET", f"{api.v1}/node/{root}/leaves?stop_layer=2").json()["leaf_ids"]
    chunk = l2[0] & ~((1 << 26) - 1)  # layer-2 segment bits: 64 - 8 - 3 * 10
    pairs = np.frombuffer(api("GET", f"{api.v1}/l2_chunk_children_binary/{chunk}?as_array=True").content, "<u8")
    assert l2[0] in pairs[0::2].tolist()
    assert api("GET", f"{api.v1}/l2_chunk_children_binary/{root}").status_code == 400
    g = api("GET", f"{api.v1}/node/{root}/lvl2_graph")
    assert g.headers["Used-Bounds"] == "False" and isinstance(g.json()["edge_graph"], list)


def test_unknown_ids_are_404_json(api):
    r = api("GET", f"{api.v1}/node/12345/leaves")
    assert r.status_code == 404 and r.json()["error"] == "unknown_id" and "12345" in r.json()["message"]
    assert api("GET", f"{api.v1}/node/{1 << 64}/children").status_code == 400


def test_materialization(api, truth, cave_server):
    assert api("GET", f"{api.m3}/versions?expired=True").json() == [1, 2, 3, 4]
    meta = api("GET", f"{api.m3}/version/2").json()
    assert MAT_TIME.match(meta["time_stamp"]) and MAT_TIME.match(meta["expires_on"])
    ts = datetime.strptime(meta["time_stamp"], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
    assert ts == truth.materialization(2)
    assert len(api("GET", f"{api.m3}/metadata?expired=False").json()) == 4
    assert api("GET", f"/materialize/api/v2/datastack/{cave_server.datastack}/versions").json() == [1, 2, 3, 4]
    assert api("GET", f"{api.m3}/version/9").status_code == 404
    assert api("GET", f"/materialize/api/v2/datastack/{cave_server.datastack}/version/1/tables").json() == []


def test_auth(cave_server):
    url = cave_server.address + "/info/version"
    for headers in ({}, {"Authorization": "Bearer " + "0" * 32}, {"Authorization": cave_server.token}):
        r = requests.get(url, headers=headers, allow_redirects=False)
        assert r.status_code == 401 and "token" in r.json()["message"]
        assert cave_server.token not in r.text
    assert requests.get(url, cookies={"middle_auth_token": cave_server.token}).status_code == 200
    assert requests.get(url + "/nothing-here").status_code == 401  # the token is checked first


TRAVERSALS = [
    "/segmentation/table/..%2f..%2fetc/info",
    "/segmentation/table/../../etc/passwd",
    "/segmentation/table/%2e%2e/info",
    "/segmentation/table/crantseg_local_v1%2f..%2f..%2fsecrets/info",
    "/segmentation/api/v1/table/..%2fx/node/1/leaves",
    "/segmentation/api/v1/table/{T}/node/..%2f..%2f1/leaves",
    "/segmentation/api/v1/table/{T}/node/1%2e0/children",
    "/segmentation/api/v1/table/{T}/node/-1/children",
    "/segmentation/api/v1/table/{T}/l2_chunk_children_binary/..%2finfo",
    "/info/api/v2/datastack/full/..%2f..%2fetc%2fpasswd",
    "/info/api/v2/datastack/full/other_stack",
    "/materialize/api/v3/datastack/..%2f..%2fetc/versions",
    "/materialize/api/v3/datastack/{D}/version/..%2f1",
    "/materialize/api/v4/datastack/{D}/versions",
    "//etc/passwd",
    "/segmentation/table/{T}/info/../../../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_refused(api, cave_server, path):
    path = path.replace("{T}", cave_server.table).replace("{D}", cave_server.datastack)
    r = api("GET", path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert r.headers["Content-Type"].startswith("application/json")
    assert "root:" not in r.text and "scales" not in r.text


@pytest.mark.parametrize("path", [
    "/info/version/", "/info/api/v2/datastacks/", "/segmentation/api/versions/",
    "/segmentation/table/{T}/info/", "/segmentation/api/v1/table/{T}/node/1/leaves/",
    "/materialize/api/v3/datastack/{D}/versions/", "/", "/info", "/segmentation/", "/nothing",
])
def test_never_redirects(api, cave_server, path):
    path = path.replace("{T}", cave_server.table).replace("{D}", cave_server.datastack)
    for method in ("GET", "POST"):
        r = api(method, path)
        assert not 300 <= r.status_code < 400 and "Location" not in r.headers
        if r.status_code == 404:
            assert r.json()["code"] == 404


def test_token_never_logged(tiny_path, cave_home, caplog):
    caplog.set_level(logging.DEBUG)
    with serve_in_thread(tiny_path) as server:
        for headers in ({"Authorization": f"Bearer {server.token}"}, {}):
            requests.get(server.address + "/info/version", headers=headers)
            requests.get(server.address + "/no/route", headers=headers, cookies={"middle_auth_token": server.token})
        assert server.token not in repr(server) and server.token not in repr(server.state)
    assert "/info/version" in caplog.text  # the access log ran ...
    assert server.token not in caplog.text  # ... and never wrote the token


def test_token_and_names_are_checked(tiny_path):
    from crantseg_dask.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="32 lowercase hex"):
        ServedDataset(tiny_path, token="just_a_test")
    with pytest.raises(InvalidInputError, match="datastack name"):
        ServedDataset(tiny_path, datastack="../x")
    assert re.match(r"^[0-9a-f]{32}$", ServedDataset(tiny_path).token)


def test_binds_loopback_by_default(tiny_path):
    with serve_in_thread(tiny_path) as server:
        assert server.address.startswith("http://127.0.0.1:")


def _route_patterns(state):
    from crantseg_dask.server import chunkedgraph, info, materialize

    return [r[0] for r in info.routes(state) + chunkedgraph.routes(state) + materialize.routes(state)]


def test_every_route_refuses_traversal_in_each_segment(api, cave_server):
    """Each path parameter of each route, replaced by a traversal, gives 400/404 (never data)."""
    from crantseg_dask.server._base import ID, NAME

    bad_values = ["..%2f..%2fetc%2fpasswd", "..", "%2e%2e", "1%2f..", "-1", "1.0", "x" * 101, "%00"]
    checked = 0
    for pattern in _route_patterns(cave_server.state):
        parts = re.split(r"(\([^)]*\)(?:\{[^}]*\})?)", pattern)
        slots = [i for i, p in enumerate(parts) if p.startswith("(")]
        for target in slots:
            for bad in bad_values:
                path = ""
                for i, p in enumerate(parts):
                    if i == target:
                        path += bad
                    elif p == ID:
                        path += "1"
                    elif p == NAME:
                        path += cave_server.table if parts[i - 1].endswith("table/") else cave_server.datastack
                    elif p.startswith("("):
                        path += "3"
                    else:
                        path += p
                for method in ("GET", "POST"):
                    r = api(method, path, data=b"{}")
                    assert r.status_code in (400, 404, 405), (method, path, r.status_code)
                    assert r.headers["Content-Type"].startswith("application/json")
                    checked += 1
    assert checked > 300
