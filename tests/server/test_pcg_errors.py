"""A server mode that answers unknown IDs the way PyChunkedGraph does (500 with its error body,
``{"timestamp", "duration", "code", "message", "traceback"}``; cave-protocol.md section 2), and the
cave source turning those answers into ``UnknownIDError`` naming the IDs, through the real
caveclient."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from crantseg_dask.errors import InvalidIDError, UnknownIDError
from crantseg_dask.server.app import serve_in_thread
from crantseg_dask.server.state import ServedDataset
from crantseg_dask.testing.server import fast_spec


@pytest.fixture(scope="module")
def pcg(tiny_path, cave_home):
    server = serve_in_thread(ServedDataset(tiny_path, pcg_errors=True))
    yield server
    server.stop()


def _unknown(truth) -> int:
    """A well-formed root ID (layer 8) that the dataset does not hold."""
    top = int(truth.all_roots.max())
    return top + 1000


def test_unknown_ids_answer_500_with_the_pcg_error_body(pcg, truth):
    bad = _unknown(truth)
    base = f"{pcg.address}/segmentation/api/v1/table/{truth.params.table}"
    headers = {"Authorization": f"Bearer {pcg.token}"}
    bad_sv = int(truth.supervoxels.max()) + 1000
    for url in (f"{base}/node/{bad_sv}/root", f"{base}/node/{bad}/leaves", f"{base}/node/{bad}/children"):
        r = requests.get(url, headers=headers, timeout=10)
        assert r.status_code == 500, (url, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"timestamp", "duration", "code", "message", "traceback"}
        assert body["code"] == 500 and url.split("/")[-2] in body["message"]
    r = requests.get(f"{base}/node/{bad_sv}/root", headers=headers, params={"stop_layer": "x"}, timeout=10)
    assert r.status_code == 400  # a bad argument stays a 400


def test_cave_source_turns_pcg_500s_into_unknown_id_errors(pcg, truth):
    from crantseg_dask import get_lineage_graph, roots_to_supervoxels
    from crantseg_dask.ops.voxels import get_voxels

    spec = fast_spec(pcg)
    bad = _unknown(truth)
    good = int(sorted(truth.roots_at(truth.operation_times()[-1]))[0])
    with pytest.raises(UnknownIDError, match=rf"\[{bad}\] not known to dataset"):  # the 500 -> valid_nodes path
        roots_to_supervoxels([good, bad], dataset=spec, progress=False)
    with pytest.raises((UnknownIDError, InvalidIDError), match=str(bad)):
        get_voxels(bad, dataset=spec, progress=False)
    with pytest.raises((UnknownIDError, InvalidIDError), match=str(bad)):
        get_lineage_graph(bad, dataset=spec)
    # known IDs still answer normally in this mode
    got = roots_to_supervoxels([good], dataset=spec, progress=False)
    np.testing.assert_array_equal(np.sort(got[good]), truth.leaves(good))
